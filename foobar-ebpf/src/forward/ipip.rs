//! IPv4-in-IPv4 tunnel DSR (Katran's mode): the client's IPv4 packet goes
//! to the backend untouched, inside an outer IPv4 header (protocol 4) from
//! the LB to the backend; the backend strips it (`foobar decap`) and
//! answers the client directly, from the VIP. The Ethernet header is
//! rewritten as in `dsr` (source: this interface; destination: the
//! backend's next hop) and a VLAN tag is kept.
//!
//! The outer source is `IPIP_SRC_BE` with its host bits (`IPIP_SRC_HOST_MASK_BE`,
//! from `datapath.ipip_source`) taken from a hash of the client's address
//! and ports, so the backend NIC's RSS, which hashes the outer addresses of
//! a packet without ports, spreads the flows of one LB over its queues; the
//! same flow always gets the same source. A /32 source is one address.
//!
//! A packet that would not fit the interface's MTU once encapsulated is not
//! forwarded: with DF set the client gets ICMP "fragmentation needed" with
//! MTU − 20 (`icmp::frag_needed`), without DF it is dropped (`drop_too_big`):
//! XDP does not fragment.
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext, Global};
use foobar_common::{Backend, FlowKey, Reason, IPIP_OVERHEAD};

use crate::{
    icmp, iface,
    ipv4::{self, Ipv4Hdr, IPPROTO_IPIP, IP_DF},
    parse::ptr_at,
    verdict::Verdict,
};

/// The outer source's network part, as the packet holds it.
#[unsafe(no_mangle)]
static IPIP_SRC_BE: Global<u32> = Global::new(0);
/// The outer source's host bits (0 for a single address), as the packet
/// holds them.
#[unsafe(no_mangle)]
static IPIP_SRC_HOST_MASK_BE: Global<u32> = Global::new(0);
/// The interface's MTU, set at load time: the largest IP packet it sends.
#[unsafe(no_mangle)]
pub(crate) static IFACE_MTU: Global<u32> = Global::new(1500);

#[inline(always)]
pub fn forward(ctx: &XdpContext, backend: &Backend, flow: &FlowKey) -> Result<u32, Verdict> {
    let framing = ipv4::framing(ctx)?;
    let inner: *const Ipv4Hdr = ptr_at(ctx, framing.l3)?;
    // SAFETY: bounds checked by ptr_at.
    let (tos, tot_len, frag_off) = unsafe {
        (
            (*inner).tos,
            u16::from_be_bytes((*inner).tot_len),
            u16::from_be_bytes((*inner).frag_off),
        )
    };
    let mtu = IFACE_MTU.load();
    // The IP header's length, which parse checked against the whole frame
    // (fragments of a jumbo frame included), not the linear part's.
    let outer_len = u32::from(tot_len) + IPIP_OVERHEAD;
    if outer_len > mtu {
        if frag_off & IP_DF != 0 {
            return icmp::frag_needed(ctx, &framing, mtu.saturating_sub(IPIP_OVERHEAD));
        }
        return Err(Verdict::drop(Reason::TooBig));
    }
    // SAFETY: the helper checks the headroom itself; on failure the frame
    // is unchanged.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPIP_OVERHEAD as i32)) } != 0 {
        // Never seen: XDP guarantees 256 bytes of headroom.
        return Err(Verdict::drop(Reason::TooBig));
    }
    // The verifier forgets every packet bound after adjust_head: ptr_at
    // checks again.
    let out = iface::out(ctx, backend.egress_ifindex)?;
    ipv4::write_framing(ctx, &framing, backend.mac, out.src)?;
    let outer = Ipv4Hdr::new(
        tos,
        // Below the MTU, itself a u32 the loader took from a 16-bit-bounded
        // interface MTU.
        outer_len as u16,
        frag_off & IP_DF,
        IPPROTO_IPIP,
        outer_source(flow),
        backend.addr_be[0],
    );
    let at: *mut Ipv4Hdr = ptr_at(ctx, framing.l3)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *at = outer };
    Ok(out.action)
}

/// The outer source of a flow: the configured source with its host bits
/// from a multiplicative hash of the client's address and ports
/// (docs/IPIP.md gives the formula).
#[inline(always)]
fn outer_source(flow: &FlowKey) -> u32 {
    let mut x = flow.src_be ^ (u32::from(flow.sport_be) | (u32::from(flow.dport_be) << 16));
    x = x.wrapping_mul(0x9e37_79b1);
    x ^= x >> 16;
    IPIP_SRC_BE.load() | (x & IPIP_SRC_HOST_MASK_BE.load())
}
