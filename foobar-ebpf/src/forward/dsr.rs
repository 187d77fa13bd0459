//! L2 direct server return: the IP packet is left exactly as the client sent
//! it (the backend holds the VIP on loopback); only the Ethernet addresses
//! change, and the frame goes back out of the interface it came in on, with
//! its VLAN tag (the backends of a VLAN's VIP are on that VLAN). The source
//! is always the interface's own MAC, never one copied from the frame.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use foobar_common::Backend;

use crate::{
    parse::{ptr_at, EthHdr, LB_MAC},
    verdict::Verdict,
};

#[inline(always)]
pub fn forward(ctx: &XdpContext, backend: &Backend) -> Result<u32, Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the Ethernet header is inside the frame.
    unsafe {
        (*eth).src = LB_MAC.load();
        (*eth).dst = backend.mac;
    }
    Ok(xdp_action::XDP_TX)
}
