//! Step 4: pick a backend for a new flow. Source affinity first (if the VIP
//! has it and the client's backend still takes new flows), else the VIP's
//! ring: round-robin walks it with a per-CPU cursor, Maglev indexes it by
//! the flow hash. The ring state word selects the live half and its length
//! in one read, so a ring being rewritten by userspace (in the other half)
//! is never seen half-written.
use aya_ebpf::Global;
use foobar_common::{
    flow_hash, AffinityKey, Backend, Flow, Reason, Service, BACKEND_NEW_FLOWS, BACKEND_UP,
    RING_CAPACITY, RING_LEN_MASK, RING_STRIDE, SCHED_MAGLEV, SERVICE_AFFINITY,
};

use crate::{
    maps::{AFFINITY, BACKENDS, RINGS, RING_STATE, RR_CURSOR},
    parse::Packet,
    verdict::Verdict,
};

/// Seed of the flow hash (`datapath.hash_seed`), set at load time; the same
/// on every LB node so they agree on Maglev choices.
#[unsafe(no_mangle)]
pub(crate) static HASH_SEED: Global<u32> = Global::new(0);

#[inline(always)]
pub fn pick(pkt: &Packet, service: &Service, now: u64) -> Result<(u32, Backend), Verdict> {
    pick_for(
        [pkt.flow.src_be, 0, 0, 0],
        |seed| flow_hash(&pkt.flow, seed),
        service,
        now,
    )
}

/// `pick` for any address family: the client's address (an IPv4 address
/// in the first word) and the flow hash of the flow with a given seed.
#[inline(always)]
pub fn pick_for(
    client_be: [u32; 4],
    hash: impl Fn(u32) -> u32,
    service: &Service,
    now: u64,
) -> Result<(u32, Backend), Verdict> {
    if service.flags & SERVICE_AFFINITY == 0 {
        return ring_choice(hash, service);
    }
    let key = AffinityKey {
        client_be,
        vip_id: service.vip_id,
    };
    let timeout_ns = u64::from(service.affinity_timeout_s) * 1_000_000_000;
    if let Some(a) = AFFINITY.get_ptr_mut(&key) {
        // SAFETY: an LRU value, copied out at once (see flow.rs).
        let (backend_id, seen, gen) =
            unsafe { ((*a).backend_id, (*a).last_seen_ns, (*a).backend_gen) };
        if now.saturating_sub(seen) <= timeout_ns {
            if let Some(backend) = BACKENDS.get(backend_id) {
                if backend.gen == gen && backend.flags & BACKEND_NEW_FLOWS != 0 {
                    // SAFETY: as above; a plain store into the value.
                    unsafe { (*a).last_seen_ns = now };
                    return Ok((backend_id, *backend));
                }
            }
        }
    }
    let (backend_id, backend) = ring_choice(hash, service)?;
    let choice = Flow {
        backend_id,
        // Below MAX_VIPS: the VIPS map holds no other id.
        vip_id: service.vip_id as u16,
        last_seen_ns: now,
        flags: 0,
        backend_gen: backend.gen,
        vip_gen: 0,
    };
    let _ = AFFINITY.insert(&key, &choice, 0);
    Ok((backend_id, backend))
}

/// The ring's choice for the packet's flow, without source affinity (an
/// ICMP error's fallback, and the choice for a new flow).
#[inline(always)]
pub fn from_ring(pkt: &Packet, service: &Service) -> Result<(u32, Backend), Verdict> {
    ring_choice(|seed| flow_hash(&pkt.flow, seed), service)
}

/// `from_ring` for any address family: `hash` gives the flow hash of the
/// flow with a given seed (read only by Maglev).
#[inline(always)]
pub fn ring_choice(
    hash: impl Fn(u32) -> u32,
    service: &Service,
) -> Result<(u32, Backend), Verdict> {
    let vip_id = service.vip_id;
    let state = *RING_STATE
        .get(vip_id)
        .ok_or(Verdict::drop(Reason::NoBackend))?;
    let len = state & RING_LEN_MASK;
    if len == 0 || len > RING_CAPACITY {
        return Err(Verdict::drop(Reason::NoBackend));
    }
    let pos = if service.scheduler == SCHED_MAGLEV {
        // checked_rem, not `%`: see round_robin.
        hash(HASH_SEED.load())
            .checked_rem(len)
            .ok_or(Verdict::drop(Reason::NoBackend))?
    } else {
        round_robin(vip_id, len)?
    };
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
