//! The frame's length. The programs are loaded frags-aware (`xdp.frags`,
//! multi-buffer): a frame larger than the driver's first buffer (jumbo MTU)
//! arrives as a linear part plus fragments, and `data_end - data` covers
//! the linear part only. Every length the datapath compares or counts is
//! the whole frame's; headers are read from the linear part only (`ptr_at`),
//! which holds far more than any header on every driver (veth: ~3.5 KB).
//! The helper costs 5 ns: parse asks it only for a packet that ends
//! beyond the linear part and passes the length on (`parse::L3::frame_len`).
use aya_ebpf::{helpers::bpf_xdp_get_buff_len, programs::XdpContext};

/// The whole frame's length: the linear part and every fragment.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> usize {
    // SAFETY: the helper only reads the xdp_buff the context points to.
    (unsafe { bpf_xdp_get_buff_len(ctx.ctx) }) as usize
}
