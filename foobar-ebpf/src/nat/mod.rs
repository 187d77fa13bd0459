//! Full NAT (docs/NAT.md): the state both directions share (`state`), the
//! packet rewrite with incremental checksums (`rewrite`, `csum`), and the
//! reverse path (`reply`): a backend's reply to an SNAT address and port
//! is translated back to the client; ICMP errors about NAT flows both
//! ways (`icmp`). The forward translation is forward/nat.rs. `dnat` finds
//! its replies through `dnat` (a source prefilter) and translates them with
//! the same `reply`. Nothing here runs for a DSR VIP's packets.
mod csum;
pub mod dnat;
pub mod icmp;
pub mod rewrite;
pub mod state;

use aya_ebpf::programs::XdpContext;
use foobar_common::{Reason, NAT_FIN_BACKEND};

use crate::{
    clock, iface,
    maps::NAT_REVERSE,
    parse::{ptr_at, EthHdr, Packet},
    stats,
    verdict::Verdict,
};

use rewrite::Tuple;

/// A backend's reply to a live NAT flow, translated back (source: the VIP
/// and its port; destination: the client and its port; Ethernet: from the
/// LB's MAC to the MAC the client's packets came from) and sent out of the
/// interface the client's packets came in on (iface.rs), counted `forwarded_reply` with `len` bytes (the frame's
/// length: the rewrite keeps it). None: not such a reply (no reverse
/// entry, or a stale one, which is removed): the caller goes on. An ICMP
/// error about a packet the LB sent to a backend of a live flow goes to
/// the client instead (`icmp::to_client`), counted `forwarded_icmp_reply`.
#[inline(always)]
pub fn reply(ctx: &XdpContext, pkt: &Packet, len: u64) -> Result<Option<u32>, Verdict> {
    if pkt.icmp_error {
        let Some(action) = icmp::to_client(ctx, pkt)? else {
            return Ok(None);
        };
        stats::count_reason(Reason::ForwardedIcmpReply, len);
        return Ok(Some(action));
    }
    // SAFETY: a hash value, copied out at once.
    let Some(rev) = (unsafe { NAT_REVERSE.get(&pkt.flow) }).copied() else {
        return Ok(None);
    };
    let now = clock::now_ns();
    let Some(state) = state::reverse_live(&rev, now) else {
        // Its state is gone, was replaced or ended: the reverse entry must
        // not outlive it. (A racing allocation may have just replaced it
        // with a live one; that flow's next reply passes. Rare: the new
        // flow's reply comes a round trip later.)
        let _ = NAT_REVERSE.remove(&pkt.flow);
        return Ok(None);
    };
    // SAFETY: as in state::state_ended: copied out at once.
    let (client_mac, client_ifindex) = unsafe { ((*state).client_mac, (*state).client_ifindex) };
    state::touch(state, pkt.tcp_flags, NAT_FIN_BACKEND, now);
    let to = Tuple {
        src_be: rev.flow.dst_be,
        dst_be: rev.flow.src_be,
        sport_be: rev.flow.dport_be,
        dport_be: rev.flow.sport_be,
    };
    let out = iface::out(ctx, client_ifindex)?;
    rewrite::rewrite(ctx, pkt, &to)?;
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the Ethernet header is inside the frame.
    unsafe {
        (*eth).dst = client_mac;
        (*eth).src = out.src;
    }
    stats::count_reason(Reason::ForwardedReply, len);
    Ok(Some(out.action))
}
