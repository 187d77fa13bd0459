//! L2 direct server return: the IP packet is left exactly as the client sent
//! it (the backend holds the VIP on loopback); only the Ethernet addresses
//! change, and the frame goes out of the interface the backend is reached
//! through (iface.rs: the one it came in on, one-arm), with its VLAN tag
//! (the backends of a VLAN's VIP are on that VLAN). The source is always
//! the egress interface's own MAC, never one copied from the frame.
use aya_ebpf::programs::XdpContext;
use foobar_common::Backend;

use crate::{
    iface,
    parse::{ptr_at, EthHdr},
    verdict::Verdict,
};

#[inline(always)]
pub fn forward(ctx: &XdpContext, backend: &Backend) -> Result<u32, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let out = iface::out(ctx, backend.egress_ifindex)?;
    // SAFETY: ptr_at checked the Ethernet header is inside the frame.
    unsafe {
        (*eth).src = out.src;
        (*eth).dst = backend.mac;
    }
    Ok(out.action)
}
