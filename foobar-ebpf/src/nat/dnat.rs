//! The reverse path of `dnat` VIPs (docs/DNAT.md): a backend's reply goes
//! to the client's own address, which is no VIP's, so it arrives at the
//! LB's MAC (the backend routes clients via the LB) and fails the VIP
//! prefilter. A second bitmap over the backends' SOURCE addresses
//! (DNAT_SRC_BITS) picks out the few packets worth a NAT_REVERSE lookup;
//! everything else keeps the verdict it had. Writes no map of its own.
//!
//! All of it sits behind DNAT_REPLIES, a load-time global: a datapath
//! loaded without a dnat VIP (the common case) keeps the pass path at one
//! array lookup, as if dnat did not exist.
use foobar_common::{vip_addr_bit, Reason};

use aya_ebpf::{programs::XdpContext, Global};

use crate::{
    maps::DNAT_SRC_BITS,
    parse::{self, L3},
    verdict::Verdict,
};

/// Non-zero: the reply path is on (set at load time when a dnat VIP is
/// configured; userspace refuses a dnat VIP on a datapath loaded without
/// it). A read-only global, so the verifier prunes the reply check when it
/// is 0 and the pass path pays nothing for it.
#[unsafe(no_mangle)]
static DNAT_REPLIES: Global<u8> = Global::new(0);

/// Whether the program was loaded with the reply path.
#[inline(always)]
pub fn replies_loaded() -> bool {
    DNAT_REPLIES.load() != 0
}

/// Whether the packet's source may be a backend of a dnat VIP (never
/// without the reply path).
#[inline(always)]
pub fn from_backend(ctx: &XdpContext, ip: &L3) -> bool {
    if !replies_loaded() {
        return false;
    }
    // Read again: with `ip.src_be`, the compiler assembles the source
    // before the prefilter, on the pass path of programs without dnat too.
    let Some(src_be) = ip.reread_src_be(ctx) else {
        return false;
    };
    let (word, mask) = vip_addr_bit(src_be);
    // An inlined array read, as the destination prefilter.
    matches!(DNAT_SRC_BITS.get(word), Some(bits) if *bits & mask != 0)
}

/// A packet that is no VIP's, from a dnat backend (`from_backend`):
/// translated back to its client and sent (`forwarded_reply`) if it is a
/// backend's reply to a live dnat flow; otherwise passed untouched as
/// `pass_not_vip`, also when its L4 header does not parse (a fragment, a
/// malformed header: no VIP's business).
#[inline(always)]
pub fn reply(ctx: &XdpContext) -> Result<u32, Verdict> {
    let not_vip = Verdict::pass(Reason::NotVip);
    // The IPv4 header parsed again, not the caller's: with it the compiler
    // assembles the source address (for the flow key) before the
    // prefilter, which costs every packet of programs without dnat too.
    let Ok(parse::Ip::V4(ip)) = parse::l3(ctx) else {
        return Err(not_vip);
    };
    // The L4 header parsed here, not handed over from the caller: the
    // verifier loses a Result's discriminant spilled as one byte, and then
    // walks the Ok path with an unbounded header offset.
    let Ok(pkt) = parse::l4(ctx, &ip) else {
        return Err(not_vip);
    };
    match super::reply(ctx, &pkt, ip.frame_len)? {
        Some(action) => Ok(action),
        None => Err(not_vip),
    }
}
