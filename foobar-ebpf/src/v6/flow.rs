//! Step 3 for IPv6: the flow table FLOWS6, with the rules of `flow` (see
//! there): the flow-first hit path under VIP_GEN, the full path's
//! keep-or-reschedule, FIN/RST closing, ICMPv6 errors reading only. Kept
//! beside the IPv4 table, not inside it: the IPv4 key stays 16 bytes.
use foobar_common::{
    flow_hash6, Backend, Event, Flow, Service, BACKEND_UP, FLOW_CLOSED, IPPROTO_TCP,
};

use crate::{
    clock,
    flow::First,
    maps::{BACKENDS, FLOWS6, VIP_GEN},
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    schedule, stats,
    verdict::Verdict,
};

use super::parse::Packet6;

/// As in `flow`.
const LAST_SEEN_REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn first(pkt: &Packet6) -> First {
    let Some(flow) = FLOWS6.get_ptr_mut(&pkt.flow) else {
        return First::Full(None);
    };
    // SAFETY: LRU entries may be recycled under us; copied out at once.
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

#[inline(always)]
pub fn lookup(pkt: &Packet6) -> Option<*mut Flow> {
    FLOWS6.get_ptr_mut(&pkt.flow)
}

/// A TCP SYN without ACK (see flow::opens).
#[inline(always)]
pub fn opens(pkt: &Packet6) -> bool {
    pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
fn reopened(pkt: &Packet6, flags: u16) -> bool {
    opens(pkt) && flags & FLOW_CLOSED != 0
}

#[inline(always)]
fn touch(pkt: &Packet6, flow: *mut Flow, flags: u16, seen: u64) {
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

/// The full path (flow::backend_for for IPv6).
#[inline(always)]
pub fn backend_for(
    pkt: &Packet6,
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
    let hash = |seed| flow_hash6(&pkt.flow, seed);
    if pkt.icmp_error {
        return schedule::ring_choice(hash, service);
    }
    let now = clock::now_ns();
    let (backend_id, backend) = schedule::pick_for(pkt.flow.src_be, hash, service, now)?;
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
    let _ = FLOWS6.insert(&pkt.flow, &flow, 0);
    stats::count_new_flow(backend_id);
    Ok((backend_id, backend))
}
