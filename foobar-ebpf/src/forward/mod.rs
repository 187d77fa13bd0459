//! Step 5: send the packet to its backend: L2 direct server return
//! (`forward`, dsr.rs) or full NAT (`nat::forward`); IPIP joins here as a
//! sibling.
mod dsr;
pub mod nat;

use aya_ebpf::programs::XdpContext;
use foobar_common::Backend;

use crate::verdict::Verdict;

#[inline(always)]
pub fn forward(ctx: &XdpContext, backend: &Backend) -> Result<u32, Verdict> {
    dsr::forward(ctx, backend)
}
