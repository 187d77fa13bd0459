//! The datapath's clock: CLOCK_MONOTONIC_COARSE, as userspace reads it, but
//! read through a per-CPU cache keyed by jiffies. The coarse clock only
//! moves on a timer tick, as jiffies do, so while this CPU's cached jiffies
//! value is current the cached time is too (within one tick); `jiffies64`
//! is inlined by the verifier into a plain load, the coarse clock is a
//! helper call. One helper call per tick per CPU instead of one per packet.
use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::CLOCK;

/// A CPU's latest reading: the coarse clock and the jiffies it was read at.
#[repr(C)]
pub struct Reading {
    pub jiffies: u64,
    pub now_ns: u64,
}

/// CLOCK_MONOTONIC_COARSE in ns, at worst one tick old.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: neither helper has preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cache) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: a per-CPU slot, owned by this CPU while the program runs.
    unsafe {
        if (*cache).jiffies == jiffies {
            return (*cache).now_ns;
        }
        let now = bpf_ktime_get_coarse_ns();
        (*cache).jiffies = jiffies;
        (*cache).now_ns = now;
        now
    }
}
