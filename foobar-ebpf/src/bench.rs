//! Benchmark helpers, never attached to an interface. BPF_PROG_TEST_RUN
//! with `repeat` runs a program on its own previous output; `harness`
//! restores the template frame first (and, in new-flow mode, gives it a
//! 5-tuple never seen before), then tail-calls the program under test in
//! TARGET[0]. `xdp_tx` is the floor: the least an XDP program can cost.
#![no_std]
#![no_main]

mod rt;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
    EbpfContext as _,
};

/// Every benchmark frame is this long (padded payload).
pub const FRAME_LEN: usize = 128;
/// Offsets in an untagged IPv4/TCP frame without IP options.
const SRC_ADDR_LAST2: usize = 14 + 12 + 2;
const TCP_SPORT: usize = 14 + 20;

#[map]
static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static TEMPLATE: Array<[u8; FRAME_LEN]> = Array::with_max_entries(1, 0);
/// [0]: 1 = new-flow mode (vary source address and port per iteration).
#[map]
static MODE: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static ITERATION: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn harness(ctx: XdpContext) -> u32 {
    let Some(template) = TEMPLATE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if ctx.data_end() - ctx.data() != FRAME_LEN {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the helper checks offset and length against the frame; the
    // template is a map value of exactly FRAME_LEN bytes.
    let stored =
        unsafe { bpf_xdp_store_bytes(ctx.as_ptr().cast(), 0, template.cast(), FRAME_LEN as u32) };
    if stored != 0 {
        return xdp_action::XDP_ABORTED;
    }
    if MODE.get(0).copied() == Some(1) {
        if let Some(i) = ITERATION.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot, owned by this CPU.
            let n = unsafe {
                *i = (*i).wrapping_add(1);
                *i
            };
            let mut bytes = n.to_be_bytes();
            // SAFETY: as above; the frame is FRAME_LEN bytes long.
            unsafe {
                bpf_xdp_store_bytes(
                    ctx.as_ptr().cast(),
                    SRC_ADDR_LAST2 as u32,
                    bytes.as_mut_ptr().cast(),
                    2,
                );
                bpf_xdp_store_bytes(
                    ctx.as_ptr().cast(),
                    TCP_SPORT as u32,
                    bytes[2..].as_mut_ptr().cast(),
                    2,
                );
            }
        }
    }
    // SAFETY: TARGET holds an XDP program; on success this does not return.
    unsafe { TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}
