//! Step 3: the flow table. A hit keeps an established flow on its backend
//! (whatever the ring now says) while that backend is up and is still the
//! backend the entry was made for (same generation); a miss, a backend that
//! went down or was replaced, or a new SYN on the 5-tuple of a closed flow
//! schedules anew and records the choice. A client FIN or RST marks the
//! flow closed. An ICMP error only reads the table: it follows its flow, or
//! where the flow would be scheduled, and creates nothing. A hit writes
//! the entry only to mark it closed, when its last-seen time is more than
//! LAST_SEEN_REFRESH_NS old, or to record its VIP's new generation: an
//! established flow's packets leave the entry's cache line clean (no
//! bouncing between CPUs), and last-seen stays within a second of the
//! truth, far finer than the idle windows that read it.
//!
//! `first` is the flow-first hit path, tried before the VIP lookup: an
//! entry whose VIP generation is current (and seen on the VIP's VLAN) says
//! what the VIP lookup would say, so the packet is forwarded after one hash
//! lookup and two array reads. Anything else goes the full way, with the
//! entry already in hand.
use foobar_common::{Backend, Event, Flow, Service, BACKEND_UP, FLOW_CLOSED, IPPROTO_TCP};

use crate::{
    clock, flow_table,
    maps::{BACKENDS, VIP_GEN},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    schedule, stats,
    verdict::Verdict,
};

/// How stale a hit lets last-seen get before it rewrites it.
const LAST_SEEN_REFRESH_NS: u64 = 1_000_000_000;

/// What the flow-first lookup found.
pub enum First {
    /// Forward to this backend, counted under this VIP id.
    Hit {
        vip_id: u32,
        /// The VIP's forwarding mode (FWD_*), from its VIP_GEN entry.
        forward_mode: u8,
        backend_id: u32,
        backend: Backend,
    },
    /// The full path decides; the flow table's entry, if any.
    Full(Option<*mut Flow>),
}

/// The flow-first hit path (not for ICMP errors: see `backend_for`).
#[inline(always)]
pub fn first(pkt: &Packet) -> First {
    let Some(flow) = flow_table::get(&pkt.flow) else {
        return First::Full(None);
    };
    // SAFETY: LRU entries may be recycled under us; we copy the fields out
    // at once and at worst reschedule a flow, never touch out of bounds.
    let (backend_id, vip_id, flags, gen, vip_gen, seen) = unsafe {
        (
            (*flow).backend_id,
            (*flow).vip_id,
            (*flow).flags,
            (*flow).backend_gen,
            (*flow).vip_gen,
            (*flow).last_seen_ns,
        )
    };
    let full = First::Full(Some(flow));
    if reopened(pkt, flags) {
        return full;
    }
    // An inlined array read: is the VIP still the one the entry was made
    // under, and is the packet on its VLAN?
    let forward_mode = match VIP_GEN.get(u32::from(vip_id)) {
        Some(v) if vip_gen != 0 && v.gen == vip_gen && v.vlan == pkt.vlan => v.forward_mode,
        _ => return full,
    };
    match BACKENDS.get(backend_id) {
        Some(backend) if backend.gen == gen && backend.flags & BACKEND_UP != 0 => {
            touch(pkt, flow, flags, seen);
            First::Hit {
                vip_id: u32::from(vip_id),
                forward_mode,
                backend_id,
                backend: *backend,
            }
        }
        _ => full,
    }
}

/// The flow table's entry for the packet's flow (the full path's lookup,
/// when the flow-first one did not run).
#[inline(always)]
pub fn lookup(pkt: &Packet) -> Option<*mut Flow> {
    flow_table::get(&pkt.flow)
}

/// A TCP SYN without ACK: a client opening a connection.
///
/// Such a packet skips the flow-first path: its flow-table lookup nearly
/// always misses, and a miss (a cold hash bucket in a big table) costs
/// less after the VIP lookups, right before the scheduler's own cold read
/// (a Maglev slot), where the CPU overlaps the two memory reads; looked up
/// first, the miss and the VIP lookups' instructions come between them
/// (measured: Maglev new flows 484 -> 555-588 ns, round-robin 459 ->
/// 472-493 ns).
#[inline(always)]
pub fn opens(pkt: &Packet) -> bool {
    pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A new SYN on the 5-tuple of a closed flow: a new flow.
#[inline(always)]
fn reopened(pkt: &Packet, flags: u16) -> bool {
    opens(pkt) && flags & FLOW_CLOSED != 0
}

/// A hit's writes: closed on FIN/RST, last-seen when stale.
#[inline(always)]
fn touch(pkt: &Packet, flow: *mut Flow, flags: u16, seen: u64) {
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let now = clock::now_ns();
    // SAFETY: as in `first`; plain stores into the value.
    unsafe {
        if closing {
            (*flow).flags = flags | FLOW_CLOSED;
            (*flow).last_seen_ns = now;
        } else if now.saturating_sub(seen) > LAST_SEEN_REFRESH_NS {
            (*flow).last_seen_ns = now;
        }
    }
}

/// The full path: `service` is the packet's VIP, `vip_gen` its generation,
/// `entry` the flow table's entry for the packet's flow.
#[inline(always)]
pub fn backend_for(
    pkt: &Packet,
    service: &Service,
    vip_gen: u32,
    entry: Option<*mut Flow>,
) -> Result<(u32, Backend), Verdict> {
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if let Some(flow) = entry {
        // SAFETY: as in `first`.
        let (backend_id, vip_id, flags, gen, entry_vip_gen, seen) = unsafe {
            (
                (*flow).backend_id,
                (*flow).vip_id,
                (*flow).flags,
                (*flow).backend_gen,
                (*flow).vip_gen,
                (*flow).last_seen_ns,
            )
        };
        if u32::from(vip_id) == service.vip_id && !reopened(pkt, flags) {
            if let Some(backend) = BACKENDS.get(backend_id) {
                if backend.gen == gen && backend.flags & BACKEND_UP != 0 {
                    if !pkt.icmp_error {
                        touch(pkt, flow, flags, seen);
                        // The VIP lookup just confirmed the entry: the
                        // flow's next packets may take the flow-first path.
                        if entry_vip_gen != vip_gen {
                            // SAFETY: as above.
                            unsafe { (*flow).vip_gen = vip_gen };
                        }
                    }
                    return Ok((backend_id, *backend));
                }
            }
        }
    }
    if pkt.icmp_error {
        return schedule::from_ring(pkt, service);
    }
    let now = clock::now_ns();
    let (backend_id, backend) = schedule::pick(pkt, service, now)?;
    if pkt.flow.proto == IPPROTO_TCP && pkt.tcp_flags & TCP_SYN == 0 {
        stats::count_event(Event::MidflowMiss);
    }
    let flow = Flow {
        backend_id,
        // Below MAX_VIPS: the VIPS map holds no other id.
        vip_id: service.vip_id as u16,
        last_seen_ns: now,
        flags: if closing { FLOW_CLOSED } else { 0 },
        backend_gen: backend.gen,
        vip_gen,
    };
    // A failed insert still forwards the packet (the next one
    // reschedules, which round-robin may send elsewhere).
    flow_table::insert(&pkt.flow, &flow);
    stats::count_new_flow(backend_id);
    Ok((backend_id, backend))
}
