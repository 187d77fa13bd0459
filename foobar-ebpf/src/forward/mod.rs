//! Step 5: send the packet to its backend, in the VIP's forwarding mode:
//! `dsr` (L2 direct server return) or `ipip` (IPv4-in-IPv4 tunnel DSR).
//! NAT joins here as a sibling.
mod dsr;
mod ipip;

use aya_ebpf::programs::XdpContext;
use foobar_common::{Backend, FlowKey, FWD_IPIP};

use crate::verdict::Verdict;

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    forward_mode: u8,
    backend: &Backend,
    flow: &FlowKey,
) -> Result<u32, Verdict> {
    if forward_mode == FWD_IPIP {
        return ipip::forward(ctx, backend, flow);
    }
    dsr::forward(ctx, backend)
}
