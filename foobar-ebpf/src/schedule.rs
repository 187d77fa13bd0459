//! Step 4: pick a backend from the VIP's ring. The ring state word selects
//! the live half and its length in one read, so a ring being rewritten by
//! userspace (in the other half) is never seen half-written.
use foobar_common::{
    Backend, Reason, Service, BACKEND_UP, RING_CAPACITY, RING_LEN_MASK, RING_STRIDE,
};

use crate::{
    maps::{BACKENDS, RINGS, RING_STATE, RR_CURSOR},
    verdict::Verdict,
};

#[inline(always)]
pub fn pick(service: &Service) -> Result<(u32, Backend), Verdict> {
    let vip_id = service.vip_id;
    let state = *RING_STATE
        .get(vip_id)
        .ok_or(Verdict::drop(Reason::NoBackend))?;
    let len = state & RING_LEN_MASK;
    if len == 0 || len > RING_CAPACITY {
        return Err(Verdict::drop(Reason::NoBackend));
    }
    let pos = round_robin(vip_id, len)?;
    let half = state >> 31;
    let slot = vip_id * RING_STRIDE + half * RING_CAPACITY + pos;
    let backend_id = *RINGS.get(slot).ok_or(Verdict::drop(Reason::BadBackend))?;
    let backend = BACKENDS
        .get(backend_id)
        .ok_or(Verdict::drop(Reason::BadBackend))?;
    // Userspace takes a backend out of the ring before it clears its up flag,
    // so a down backend in a live ring is a control-plane bug: count it.
    if backend.flags & BACKEND_UP == 0 {
        return Err(Verdict::drop(Reason::BadBackend));
    }
    Ok((backend_id, *backend))
}

/// The next position of this CPU's cursor over a ring of `len` slots. Each
/// CPU walks the ring on its own (no atomics on the hot path); the weights
/// are already interleaved into the ring, so every CPU's walk is balanced.
#[inline(always)]
fn round_robin(vip_id: u32, len: u32) -> Result<u32, Verdict> {
    let cursor = RR_CURSOR
        .get_ptr_mut(vip_id)
        .ok_or(Verdict::drop(Reason::NoBackend))?;
    // checked_rem, not `%`: the compiler cannot always see len != 0 here, and
    // a `%` would leave a call to a panic handler that the verifier rejects.
    // SAFETY: a per-CPU slot, owned by this CPU while the program runs.
    let pos = unsafe { *cursor }
        .checked_rem(len)
        .ok_or(Verdict::drop(Reason::NoBackend))?;
    unsafe { *cursor = pos + 1 };
    Ok(pos)
}
