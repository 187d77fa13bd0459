//! IPv6-in-IPv6 tunnel DSR: `forward::ipip` for IPv6 clients. The client's
//! IPv6 packet goes to the backend untouched inside an outer IPv6 header
//! (next header 41, hop limit 64, traffic class copied, flow label 0) from
//! the LB to the backend; `foobar decap` strips it there. The outer source
//! is `IPIP6_SRC_BE` (`datapath.ipip_source6`) with the host bits of its
//! last word (`IPIP6_SRC_HOST_MASK_BE`) from a hash of the client's address
//! and ports, so the backend's RSS spreads the flows (docs/IPV6.md gives the
//! formula). A packet that would not fit the MTU once encapsulated gets
//! ICMPv6 "packet too big" (IPv6 routers never fragment) with MTU − 40;
//! an ICMPv6 error that would not fit is dropped (no error about an error).
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext, Global};
use foobar_common::{Backend, FlowKey6, Reason, IPIP6_OVERHEAD};

use crate::{
    forward::ipip::IFACE_MTU,
    iface::LB_MAC,
    ipv4::{self, TTL},
    parse::ptr_at,
    verdict::Verdict,
};

use super::{
    icmp,
    parse::{Ipv6Hdr, IPV6_HDR_LEN},
};

const IPPROTO_IPV6: u8 = 41;

/// The outer source's network part, as the packet holds it.
#[unsafe(no_mangle)]
static IPIP6_SRC_BE: Global<[u32; 4]> = Global::new([0; 4]);
/// The host bits of the outer source's last word that come from the flow
/// (0 for a single address), as the packet holds them.
#[unsafe(no_mangle)]
static IPIP6_SRC_HOST_MASK_BE: Global<u32> = Global::new(0);

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    backend: &Backend,
    flow: &FlowKey6,
    icmp_error: bool,
) -> Result<u32, Verdict> {
    let framing = ipv4::framing(ctx)?;
    let inner: *const Ipv6Hdr = ptr_at(ctx, framing.l3)?;
    // SAFETY: bounds checked by ptr_at.
    let (vtf, plen) = unsafe { ((*inner).ver_tc_fl, u16::from_be_bytes((*inner).payload_len)) };
    let inner_len = u32::from(plen) + IPV6_HDR_LEN as u32;
    let mtu = IFACE_MTU.load();
    if inner_len + IPIP6_OVERHEAD > mtu {
        if icmp_error {
            return Err(Verdict::drop(Reason::TooBig));
        }
        return icmp::packet_too_big(ctx, &framing, mtu.saturating_sub(IPIP6_OVERHEAD));
    }
    // SAFETY: the helper checks the headroom itself; on failure the frame
    // is unchanged.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPIP6_OVERHEAD as i32)) } != 0 {
        return Err(Verdict::drop(Reason::TooBig));
    }
    ipv4::write_framing(ctx, &framing, backend.mac, LB_MAC.load())?;
    let outer = Ipv6Hdr {
        // Version 6 and the inner traffic class; flow label 0.
        ver_tc_fl: [vtf[0], vtf[1] & 0xf0, 0, 0],
        // Below the MTU, itself below 65536.
        payload_len: (inner_len as u16).to_be_bytes(),
        next_hdr: IPPROTO_IPV6,
        hop_limit: TTL,
        saddr: bytes(outer_source(flow)),
        daddr: bytes(backend.addr_be),
    };
    let at: *mut Ipv6Hdr = ptr_at(ctx, framing.l3)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *at = outer };
    Ok(xdp_action::XDP_TX)
}

/// Four words in packet order, as the packet's 16 bytes.
#[inline(always)]
pub fn bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// The outer source of a flow: the configured source with the host bits
/// of its last word from a multiplicative hash of the client's address
/// (its four words folded by XOR) and ports.
#[inline(always)]
fn outer_source(flow: &FlowKey6) -> [u32; 4] {
    let s = flow.src_be;
    let mut x = s[0] ^ s[1] ^ s[2] ^ s[3];
    x ^= u32::from(flow.sport_be) | (u32::from(flow.dport_be) << 16);
    x = x.wrapping_mul(0x9e37_79b1);
    x ^= x >> 16;
    let mut src = IPIP6_SRC_BE.load();
    src[3] |= x & IPIP6_SRC_HOST_MASK_BE.load();
    src
}
