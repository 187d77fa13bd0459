//! Step 5: send the packet to its backend, in the VIP's forwarding mode:
//! `dsr` (L2 direct server return), `nat` (full NAT), `dnat` (the
//! destination only: NAT's state and rewrite with the client's own address
//! and port as the "SNAT" ones) or `ipip` (IPv4-in-IPv4 tunnel DSR).
pub mod dsr;
pub mod ipip;
mod nat;

use aya_ebpf::programs::XdpContext;
use foobar_common::{Backend, FWD_DNAT, FWD_IPIP, FWD_NAT};

use crate::{parse::Packet, verdict::Verdict};

/// Where a packet goes: counted under this VIP and backend, sent in the
/// VIP's forwarding mode (FWD_*).
pub struct Target {
    pub vip_id: u32,
    pub forward_mode: u8,
    pub backend_id: u32,
}

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    to: &Target,
    backend: &Backend,
) -> Result<u32, Verdict> {
    match to.forward_mode {
        // One inlined copy of the NAT forward for both modes.
        FWD_NAT | FWD_DNAT => {
            let dnat = to.forward_mode == FWD_DNAT;
            nat::forward(ctx, pkt, to.vip_id, to.backend_id, backend, dnat)
        }
        FWD_IPIP => ipip::forward(ctx, backend, &pkt.flow),
        _ => dsr::forward(ctx, backend),
    }
}
