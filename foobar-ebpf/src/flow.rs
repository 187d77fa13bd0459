//! Step 3: the flow table. A hit keeps an established flow on its backend
//! (whatever the ring now says) while that backend is up and is still the
//! backend the entry was made for (same generation); a miss, a backend that
//! went down or was replaced, or a new SYN on the 5-tuple of a closed flow
//! schedules anew and records the choice. A client FIN or RST marks the
//! flow closed. An ICMP error only reads the table: it follows its flow, or
//! where the flow would be scheduled, and creates nothing. A hit writes
//! the entry only to mark it closed or when its last-seen time is more than
//! LAST_SEEN_REFRESH_NS old: an established flow's packets leave the entry's
//! cache line clean (no bouncing between CPUs), and last-seen stays within a
//! second of the truth, far finer than the idle windows that read it.
use foobar_common::{Backend, Event, Flow, Service, BACKEND_UP, FLOW_CLOSED, IPPROTO_TCP};

use crate::{
    clock,
    maps::{BACKENDS, FLOWS},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    schedule, stats,
    verdict::Verdict,
};

/// How stale a hit lets last-seen get before it rewrites it.
const LAST_SEEN_REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn backend_for(pkt: &Packet, service: &Service) -> Result<(u32, Backend), Verdict> {
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let new_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(flow) = FLOWS.get_ptr_mut(&pkt.flow) {
        // SAFETY: LRU entries may be recycled under us; we copy the fields out
        // at once and at worst reschedule a flow, never touch out of bounds.
        let (backend_id, vip_id, flags, gen, seen) = unsafe {
            (
                (*flow).backend_id,
                (*flow).vip_id,
                (*flow).flags,
                (*flow).backend_gen,
                (*flow).last_seen_ns,
            )
        };
        let reopened = new_syn && flags & FLOW_CLOSED != 0;
        if vip_id == service.vip_id && !reopened {
            if let Some(backend) = BACKENDS.get(backend_id) {
                if backend.gen == gen && backend.flags & BACKEND_UP != 0 {
                    if !pkt.icmp_error {
                        let now = clock::now_ns();
                        // SAFETY: as above; plain stores into the value.
                        unsafe {
                            if closing {
                                (*flow).flags = flags | FLOW_CLOSED;
                                (*flow).last_seen_ns = now;
                            } else if now.saturating_sub(seen) > LAST_SEEN_REFRESH_NS {
                                (*flow).last_seen_ns = now;
                            }
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
        vip_id: service.vip_id,
        last_seen_ns: now,
        flags: if closing { FLOW_CLOSED } else { 0 },
        backend_gen: backend.gen,
    };
    // A full LRU evicts its oldest entry; an insert can only fail on memory
    // pressure, and then the packet is still forwarded (the next one
    // reschedules, which round-robin may send elsewhere).
    let _ = FLOWS.insert(&pkt.flow, &flow, 0);
    Ok((backend_id, backend))
}
