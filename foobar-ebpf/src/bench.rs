//! Benchmark helpers, never attached to an interface. BPF_PROG_TEST_RUN
//! with `repeat` runs a program on its own previous output; `harness`
//! restores only what the programs under test change, then tail-calls the
//! program in TARGET[0]. MODE[0] says how much to restore (RESTORE_*): the
//! bench measures each variant with `xdp_tx` as the target and subtracts
//! exactly that variant (an `ipip` forward grows the frame: its variant
//! strips the outer header again with a helper call, measured the same
//! way). `xdp_tx` is the floor: the least an XDP program can cost. Every program here is frags-aware (`xdp.frags`) like the load
//! balancer: the kernel lets a program tail-call only programs of its own
//! kind, so a plain harness could not hold the load balancer in TARGET.
#![no_std]
#![no_main]

mod rt;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_smp_processor_id, bpf_xdp_adjust_head},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

/// Every benchmark frame is this long (padded payload).
pub const FRAME_LEN: usize = 128;
/// Offsets in an untagged IPv4/TCP frame without IP options: the second
/// byte of the source address, and the TCP source port.
const SRC_ADDR_BYTE1: usize = 14 + 12 + 1;
const TCP_SPORT: usize = 14 + 20;
/// Destination and source MAC: all a DSR forward changes.
const MACS_LEN: usize = 12;
/// Ethernet, IPv4 and TCP headers (14 + 20 + 20) rounded up to whole
/// 8-byte words: all a NAT rewrite changes (the 2 payload bytes past the
/// headers are the template's too).
const HEADER_WORDS: usize = 7;
/// The Ethernet header rounded up to whole 8-byte words: what an `ipip`
/// encapsulation overwrites once its outer header is stripped again.
const ETH_WORDS: usize = 2;

/// Restore nothing (the pass path changes nothing).
const RESTORE_NOTHING: u32 = 0;
/// Restore the two MAC addresses (a flow-table hit rewrites them).
const RESTORE_MACS: u32 = 1;
/// Restore the MACs and give the frame a 5-tuple never seen before on any
/// CPU: source address bytes 1..4 = (CPU, iteration >> 16), source port =
/// the iteration's low 16 bits.
const RESTORE_NEW_FLOW: u32 = 2;
/// Restore the Ethernet, IPv4 and TCP headers (a NAT rewrite: addresses,
/// ports, both checksums, MACs).
const RESTORE_HEADERS: u32 = 3;
/// RESTORE_HEADERS, then a new 5-tuple as RESTORE_NEW_FLOW.
const RESTORE_HEADERS_NEW_FLOW: u32 = 4;
/// Strip what an encapsulation put in front of the frame (move its start
/// by its length minus FRAME_LEN, with bpf_xdp_adjust_head; 0 when nothing
/// was added: the helper runs either way, so the variant's measured cost
/// is the cost it adds), then restore the Ethernet header.
const RESTORE_DECAP: u32 = 5;
/// RESTORE_DECAP, then a new 5-tuple as RESTORE_NEW_FLOW.
const RESTORE_DECAP_NEW_FLOW: u32 = 6;

#[map]
static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static TEMPLATE: Array<[u8; FRAME_LEN]> = Array::with_max_entries(1, 0);
/// [0]: one of RESTORE_*.
#[map]
static MODE: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static ITERATION: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp(frags)]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// The minimal XDP forwarder: rewrites both MACs to fixed values (one
/// backend) and sends the frame back out, nothing else. The ceiling for any
/// XDP balancer's forward, measured beside foobar's paths.
#[xdp(frags)]
pub fn forwarder(ctx: XdpContext) -> u32 {
    const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    let start = ctx.data();
    // The verifier needs this check before the direct packet writes.
    if start + MACS_LEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let frame = start as *mut u8;
    // SAFETY: the frame holds at least MACS_LEN bytes (checked above).
    unsafe {
        for i in 0..6 {
            *frame.add(i) = BACKEND_MAC[i];
            *frame.add(6 + i) = LB_MAC[i];
        }
    }
    xdp_action::XDP_TX
}

#[xdp(frags)]
pub fn harness(ctx: XdpContext) -> u32 {
    let mode = MODE.get(0).copied().unwrap_or(RESTORE_NOTHING);
    if mode == RESTORE_DECAP || mode == RESTORE_DECAP_NEW_FLOW {
        let grown = (ctx.data_end() - ctx.data()) as i32 - FRAME_LEN as i32;
        // SAFETY: the helper checks the move against the frame itself.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, grown) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    // After adjust_head the verifier knows no packet bound: this check
    // comes after it, and before any direct packet write below.
    let start = ctx.data();
    if start + FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let frame = start as *mut u8;
    let words = match mode {
        RESTORE_MACS | RESTORE_NEW_FLOW => 0,
        RESTORE_HEADERS | RESTORE_HEADERS_NEW_FLOW => HEADER_WORDS,
        RESTORE_DECAP | RESTORE_DECAP_NEW_FLOW => ETH_WORDS,
        _ => usize::MAX,
    };
    if words != usize::MAX {
        let Some(template) = TEMPLATE.get(0) else {
            return xdp_action::XDP_ABORTED;
        };
        if words == 0 {
            // SAFETY: the frame holds FRAME_LEN bytes (checked above), the
            // template as many; plain stores, no helper call.
            unsafe {
                for i in 0..MACS_LEN {
                    *frame.add(i) = template[i];
                }
            }
        } else {
            let from = template.as_ptr() as *const u64;
            let to = frame as *mut u64;
            // A constant bound (HEADER_WORDS) for the verifier.
            for i in 0..HEADER_WORDS {
                if i >= words {
                    break;
                }
                // SAFETY: i * 8 + 8 <= 56 < FRAME_LEN (checked above) for
                // both. Whole 8-byte loads and stores: BPF_PROG_TEST_RUN puts
                // the frame 256 bytes into a fresh allocation and map values
                // are 8-byte aligned (`read_unaligned` would compile to byte
                // loads here, tripling the harness's cost).
                unsafe { *to.add(i) = *from.add(i) };
            }
        }
    }
    if mode == RESTORE_NEW_FLOW
        || mode == RESTORE_HEADERS_NEW_FLOW
        || mode == RESTORE_DECAP_NEW_FLOW
    {
        if let Some(i) = ITERATION.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot, owned by this CPU.
            let n = unsafe {
                *i = (*i).wrapping_add(1);
                *i
            };
            // SAFETY: no preconditions.
            let cpu = unsafe { bpf_get_smp_processor_id() } as u8;
            let [a, b, c, d] = n.to_be_bytes();
            // SAFETY: offsets inside the FRAME_LEN bytes checked above.
            unsafe {
                *frame.add(SRC_ADDR_BYTE1) = cpu;
                *frame.add(SRC_ADDR_BYTE1 + 1) = a;
                *frame.add(SRC_ADDR_BYTE1 + 2) = b;
                *frame.add(TCP_SPORT) = c;
                *frame.add(TCP_SPORT + 1) = d;
            }
        }
    }
    // SAFETY: TARGET holds an XDP program; on success this does not return.
    unsafe { TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}
