//! ICMPv6 "packet too big" (type 2, RFC 4443) to a client whose packet
//! would exceed the MTU once encapsulated (`ipip`), sent back out of the
//! interface it came in on: `icmp::frag_needed` for IPv6. The frame is
//! turned into the reply in place: the head grows by an IPv6 and an ICMPv6
//! header, the tail is cut after the quoted IPv6 header and the first 8
//! bytes of its payload (all Linux needs to match the error to its socket;
//! RFC 4443 allows up to 1280 bytes in all).
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use foobar_common::Reason;

use crate::{
    frame,
    iface::LB_MAC,
    ipv4::{self, Framing, TTL},
    parse::{ptr_at, EthHdr},
    verdict::Verdict,
};

use super::parse::{Ipv6Hdr, IPPROTO_ICMPV6, IPV6_HDR_LEN};

const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_HDR_LEN: usize = 8;
/// The quote: the original IPv6 header and 8 bytes of its payload.
const QUOTED: usize = IPV6_HDR_LEN + 8;
/// The ICMPv6 message: its header and the quote.
const MESSAGE: usize = ICMPV6_HDR_LEN + QUOTED;

/// Turns the frame (an IPv6 packet from a client to a VIP) into ICMPv6
/// "packet too big, MTU `mtu`" from the VIP to the client, addressed to the
/// MAC the frame came from; the XDP_TX verdict it is counted under.
#[inline(always)]
pub fn packet_too_big(ctx: &XdpContext, framing: &Framing, mtu: u32) -> Result<u32, Verdict> {
    let l3 = framing.l3;
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    let (peer_mac, client, vip) = unsafe { ((*eth).src, (*ip).saddr, (*ip).daddr) };
    let grow = IPV6_HDR_LEN + ICMPV6_HDR_LEN;
    // SAFETY: the helpers check the frame themselves; on failure it is
    // unchanged.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(Verdict::drop(Reason::TooBig));
    }
    // The whole frame: a jumbo frame's tail lies in fragments, and the
    // shrink below frees them first (frame.rs).
    let len = frame::len(ctx);
    let want = l3 + grow + QUOTED;
    if want > len {
        return Err(Verdict::drop(Reason::TooBig));
    }
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - len as i32) } != 0 {
        return Err(Verdict::drop(Reason::TooBig));
    }
    ipv4::write_framing(ctx, framing, peer_mac, LB_MAC.load())?;
    let header = Ipv6Hdr {
        ver_tc_fl: [0x60, 0, 0, 0],
        payload_len: (MESSAGE as u16).to_be_bytes(),
        next_hdr: IPPROTO_ICMPV6,
        hop_limit: TTL,
        saddr: vip,
        daddr: client,
    };
    let at: *mut Ipv6Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *at = header };
    // One bounds check for the whole message: a loop of `ptr_at` calls
    // makes LLVM compare against `data_end + 1`, which the verifier
    // refuses.
    let msg: *mut [u8; MESSAGE] = ptr_at(ctx, l3 + IPV6_HDR_LEN)?;
    let m = msg as *mut u8;
    let mtu_be = mtu.to_be_bytes();
    // SAFETY: bounds checked by ptr_at; every offset is below MESSAGE. The
    // quote is already in place.
    unsafe {
        *m = ICMPV6_PACKET_TOO_BIG;
        *m.add(1) = 0;
        *m.add(2) = 0;
        *m.add(3) = 0;
        for (i, b) in mtu_be.iter().enumerate() {
            *m.add(4 + i) = *b;
        }
    }
    // The checksum covers the pseudo-header (addresses, length, next
    // header) and the message.
    let mut sum: u32 = MESSAGE as u32 + u32::from(IPPROTO_ICMPV6);
    sum += sum16(&vip) + sum16(&client);
    let mut i = 0;
    while i < MESSAGE {
        // SAFETY: as above.
        sum += u32::from(u16::from_be_bytes(unsafe { [*m.add(i), *m.add(i + 1)] }));
        i += 2;
    }
    let check = ipv4::fold(sum).to_be_bytes();
    // SAFETY: as above.
    unsafe {
        *m.add(2) = check[0];
        *m.add(3) = check[1];
    }
    Err(Verdict::tx(Reason::IcmpFragNeededSent))
}

/// The sum of the 16-bit words of an address.
#[inline(always)]
fn sum16(a: &[u8; 16]) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i < 16 {
        sum += u32::from(u16::from_be_bytes([a[i], a[i + 1]]));
        i += 2;
    }
    sum
}
