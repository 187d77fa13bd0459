//! NAT state lifetime and SNAT port allocation. A state (NAT_FLOWS) ends
//! `linger_s` after it closed (RST either way, or FIN both ways) or
//! `idle_s` after its latest packet; a reverse entry (NAT_REVERSE) counts
//! only while its state exists, holds the same nonce and has not ended.
//! Nothing here touches the packet.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use foobar_common::{
    flow_hash, FlowKey, NatFlow, NatReverse, NatVip, Reason, AF_INET, NAT_CLOSED, NAT_FIN_BACKEND,
    NAT_FIN_CLIENT, NAT_PORT_PROBES,
};

use crate::{
    maps::{NAT_FLOWS, NAT_REVERSE},
    parse::{TCP_FIN, TCP_RST},
    schedule::HASH_SEED,
    verdict::Verdict,
};

const NS_PER_S: u64 = 1_000_000_000;
/// How stale a packet lets last-seen get before it rewrites it (as flow.rs).
const LAST_SEEN_REFRESH_NS: u64 = NS_PER_S;
/// Mixed into the hash seed so the port probe order is not the Maglev hash.
const PORT_HASH_SALT: u32 = 0x4e41_5450;

/// Whether a state has ended at `now`: `linger_s` after its close, or
/// `idle_s` after its latest packet.
#[inline(always)]
pub fn ended(
    flags: u16,
    closed_ns: u64,
    last_seen_ns: u64,
    linger_s: u32,
    idle_s: u32,
    now: u64,
) -> bool {
    if flags & NAT_CLOSED != 0 {
        return now.saturating_sub(closed_ns) > u64::from(linger_s) * NS_PER_S;
    }
    now.saturating_sub(last_seen_ns) > u64::from(idle_s) * NS_PER_S
}

/// Whether `state` (a NAT_FLOWS value) has ended at `now`.
#[inline(always)]
pub fn state_ended(state: *const NatFlow, now: u64) -> bool {
    // SAFETY: an LRU value; the fields are copied out at once (a recycled
    // entry at worst ends a flow early, never reads out of bounds).
    let (flags, closed, seen, linger, idle) = unsafe {
        (
            (*state).flags,
            (*state).closed_ns,
            (*state).last_seen_ns,
            (*state).linger_s,
            (*state).idle_s,
        )
    };
    ended(flags, closed, seen, linger, idle, now)
}

/// A packet of the flow either way: last-seen, and the close. `fin` is the
/// FIN flag of this direction (NAT_FIN_CLIENT or NAT_FIN_BACKEND).
#[inline(always)]
pub fn touch(state: *mut NatFlow, tcp_flags: u8, fin: u16, now: u64) {
    // SAFETY: as in `state_ended`; plain stores into the value.
    unsafe {
        let flags = (*state).flags;
        let mut new = flags;
        if tcp_flags & TCP_FIN != 0 {
            new |= fin;
        }
        if tcp_flags & TCP_RST != 0
            || new & (NAT_FIN_CLIENT | NAT_FIN_BACKEND) == (NAT_FIN_CLIENT | NAT_FIN_BACKEND)
        {
            new |= NAT_CLOSED;
        }
        if new != flags {
            if new & NAT_CLOSED != 0 && flags & NAT_CLOSED == 0 {
                (*state).closed_ns = now;
            }
            (*state).flags = new;
        }
        if now.saturating_sub((*state).last_seen_ns) > LAST_SEEN_REFRESH_NS {
            (*state).last_seen_ns = now;
        }
    }
}

/// Whether the reverse entry `rev` still belongs to a live state.
#[inline(always)]
pub fn reverse_live(rev: &NatReverse, now: u64) -> Option<*mut NatFlow> {
    let state = NAT_FLOWS.get_ptr_mut(&rev.flow)?;
    // SAFETY: as in `state_ended`.
    let nonce = unsafe { (*state).nonce };
    if nonce != rev.nonce || state_ended(state, now) {
        return None;
    }
    Some(state)
}

/// A new nonce: random, never 0.
#[inline(always)]
pub fn nonce() -> u32 {
    // SAFETY: no preconditions.
    (unsafe { bpf_get_prandom_u32() }) | 1
}

/// Chooses a free SNAT port of `cfg`'s range for the client flow `flow` to
/// (`backend_be`, `backend_port_be`) and records its reverse entry:
/// NAT_PORT_PROBES ports from a hash of the flow, each taken with a
/// BPF_NOEXIST insert, so two CPUs never take one port. An occupied port
/// whose entry is stale (its state gone, replaced or ended, or an earlier
/// state of this very flow) is reclaimed: deleted, then taken again with
/// BPF_NOEXIST, so a racing CPU reclaiming it too gets the next port.
/// A range of one port (dnat) tries it once. Returns the port (network
/// order).
#[inline(always)]
pub fn allocate(
    flow: &FlowKey,
    cfg: &NatVip,
    backend_be: u32,
    backend_port_be: u16,
    nonce: u32,
    now: u64,
) -> Result<u16, Verdict> {
    let exhausted = Verdict::drop(Reason::NatPortsExhausted);
    if cfg.port_max < cfg.port_min {
        return Err(exhausted);
    }
    let range = u32::from(cfg.port_max - cfg.port_min) + 1;
    let hash = flow_hash(flow, HASH_SEED.load() ^ PORT_HASH_SALT);
    let mut key = FlowKey {
        src_be: backend_be,
        dst_be: cfg.snat_addr_be,
        sport_be: backend_port_be,
        dport_be: 0,
        proto: flow.proto,
        family: AF_INET,
        _pad: [0; 2],
    };
    let rev = NatReverse {
        flow: *flow,
        nonce,
        _pad: 0,
    };
    // A constant bound: the verifier sees a bounded loop.
    for i in 0..NAT_PORT_PROBES {
        // checked_rem, not `%`: a `%` the compiler cannot prove safe leaves
        // a panic call the verifier rejects (range is never 0 here).
        let offset = hash
            .wrapping_add(i)
            .checked_rem(range)
            .ok_or(Verdict::drop(Reason::NatPortsExhausted))?;
        let port = (u32::from(cfg.port_min) + offset) as u16;
        key.dport_be = port.to_be();
        if NAT_REVERSE
            .insert(&key, &rev, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Ok(key.dport_be);
        }
        // SAFETY: a hash value, copied out at once.
        let Some(old) = (unsafe { NAT_REVERSE.get(&key) }).copied() else {
            continue;
        };
        if old.flow == *flow || reverse_live(&old, now).is_none() {
            let _ = NAT_REVERSE.remove(&key);
            if NAT_REVERSE
                .insert(&key, &rev, u64::from(BPF_NOEXIST))
                .is_ok()
            {
                return Ok(key.dport_be);
            }
        }
        // One port (dnat: the client's own): probing it again finds the
        // same live entry.
        if range == 1 {
            break;
        }
    }
    Err(exhausted)
}
