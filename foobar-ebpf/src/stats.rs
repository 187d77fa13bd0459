//! Per-CPU counters: per VIP, per backend, per verdict reason, per event.
//! No locking is needed because each CPU owns its slot; userspace sums the
//! CPUs.
use foobar_common::{Counter, Event, Reason};

use crate::maps::{BACKEND_NEW_FLOWS, BACKEND_STATS, EVENTS, REASONS, VIP_STATS};

#[inline(always)]
fn add(counter: Option<*mut Counter>, bytes: u64) {
    if let Some(c) = counter {
        // SAFETY: a per-CPU array slot, valid and owned by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_reason(reason: Reason, bytes: u64) {
    add(REASONS.get_ptr_mut(reason as u32), bytes);
}

#[inline(always)]
pub fn count_event(event: Event) {
    add(EVENTS.get_ptr_mut(event as u32), 0);
}

#[inline(always)]
pub fn count_forward(vip_id: u32, backend_id: u32, bytes: u64) {
    add(VIP_STATS.get_ptr_mut(vip_id), bytes);
    add(BACKEND_STATS.get_ptr_mut(backend_id), bytes);
}

/// A flow was scheduled to backend `backend_id`.
#[inline(always)]
pub fn count_new_flow(backend_id: u32) {
    if let Some(n) = BACKEND_NEW_FLOWS.get_ptr_mut(backend_id) {
        // SAFETY: a per-CPU array slot, valid and owned by this CPU.
        unsafe { *n += 1 };
    }
}
