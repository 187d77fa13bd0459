//! ICMP errors the datapath writes itself: "fragmentation needed" (type 3,
//! code 4, RFC 1191) to a client whose DF packet would exceed the MTU once
//! encapsulated (Katran's behaviour), sent back out of the interface it
//! came in on. The frame is turned into the reply in place: the head grows
//! by an IPv4 and an ICMP header, the tail is cut after the quoted original
//! IP header and the first 8 bytes of its payload (RFC 792).
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use foobar_common::Reason;

use crate::{
    frame, iface,
    ipv4::{self, Framing, Ipv4Hdr, IPPROTO_ICMP, IPV4_HDR_LEN},
    parse::{ptr_at, EthHdr},
    verdict::Verdict,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_HDR_LEN: usize = 8;
/// Bytes of the original payload an ICMP error quotes after its IP header.
const QUOTED_PAYLOAD: usize = 8;
/// The most 16-bit words the ICMP checksum covers: its header, a 60-byte
/// IP header and 8 bytes of payload.
const MAX_ICMP_WORDS: usize = (ICMP_HDR_LEN + 60 + QUOTED_PAYLOAD) / 2;

#[repr(C)]
struct FragNeeded {
    kind: u8,
    code: u8,
    check: [u8; 2],
    _unused: [u8; 2],
    next_hop_mtu: [u8; 2],
}

/// Turns the frame (an IPv4 packet from a client to a VIP, which `parse`
/// checked) into ICMP "fragmentation needed, next-hop MTU `mtu`" from the
/// VIP to the client, addressed to the MAC the frame came from. Returns
/// the XDP_TX verdict it is counted under.
#[inline(always)]
pub fn frag_needed(ctx: &XdpContext, framing: &Framing, mtu: u32) -> Result<u32, Verdict> {
    let l3 = framing.l3;
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    let (peer_mac, ver_ihl, client, vip) = unsafe {
        (
            (*eth).src,
            (*ip).ver_ihl,
            u32::from_ne_bytes((*ip).saddr),
            u32::from_ne_bytes((*ip).daddr),
        )
    };
    // The mask bounds the quoted length for the verifier as well as reading
    // the 4-bit IHL (parse checked IHL >= 5).
    let quoted = ((ver_ihl & 0x0f) as usize) * 4 + QUOTED_PAYLOAD;
    let grow = IPV4_HDR_LEN + ICMP_HDR_LEN;
    // SAFETY: the helpers check the frame themselves; on failure it is
    // unchanged.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(Verdict::drop(Reason::TooBig));
    }
    // The whole frame: a jumbo frame's tail lies in fragments, and the
    // shrink below frees them first (frame.rs).
    let len = frame::len(ctx);
    let want = l3 + grow + quoted;
    // The original frame holds its IP header and at least 8 more bytes
    // (it is larger than the MTU); the check keeps the verifier and a
    // wrong MTU honest.
    if want > len {
        return Err(Verdict::drop(Reason::TooBig));
    }
    // SAFETY: as above; shrinking never fails for a frame this long. What
    // is left (`want` bytes) is all in the linear part: ptr_at reads it.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - len as i32) } != 0 {
        return Err(Verdict::drop(Reason::TooBig));
    }
    ipv4::write_framing(ctx, framing, peer_mac, iface::own_mac(ctx))?;
    let header = Ipv4Hdr::new(0, (grow + quoted) as u16, 0, IPPROTO_ICMP, vip, client);
    let at: *mut Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *at = header };
    let next_hop_mtu = (mtu as u16).to_be_bytes();
    let icmp: *mut FragNeeded = ptr_at(ctx, l3 + IPV4_HDR_LEN)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*icmp).kind = ICMP_DEST_UNREACH;
        (*icmp).code = ICMP_FRAG_NEEDED;
        (*icmp).check = [0; 2];
        (*icmp)._unused = [0; 2];
        (*icmp).next_hop_mtu = next_hop_mtu;
    }
    let words = (ICMP_HDR_LEN + quoted) / 2;
    let mut sum: u32 = 0;
    // A constant bound the verifier can follow; `words` ends it early.
    for i in 0..MAX_ICMP_WORDS {
        if i >= words {
            break;
        }
        let w: *const [u8; 2] = ptr_at(ctx, l3 + IPV4_HDR_LEN + 2 * i)?;
        // SAFETY: bounds checked by ptr_at.
        sum += u32::from(u16::from_be_bytes(unsafe { *w }));
    }
    let icmp: *mut FragNeeded = ptr_at(ctx, l3 + IPV4_HDR_LEN)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { (*icmp).check = ipv4::fold(sum).to_be_bytes() };
    Err(Verdict::tx(Reason::IcmpFragNeededSent))
}
