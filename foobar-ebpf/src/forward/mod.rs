//! Step 5: send the packet to its backend. Version 1 has L2 direct server
//! return only; NAT and IPIP join here as siblings of `dsr`.
mod dsr;

use aya_ebpf::programs::XdpContext;
use foobar_common::Backend;

use crate::verdict::Verdict;

#[inline(always)]
pub fn forward(ctx: &XdpContext, backend: &Backend) -> Result<u32, Verdict> {
    dsr::forward(ctx, backend)
}
