//! Step 3: the flow table. A hit keeps an established flow on its backend
//! (whatever the ring now says) while that backend is up; a miss, or a
//! backend that went down, schedules anew and records the choice.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use foobar_common::{Backend, Flow, Service, BACKEND_UP};

use crate::{
    maps::{BACKENDS, FLOWS},
    parse::Packet,
    schedule,
    verdict::Verdict,
};

#[inline(always)]
pub fn backend_for(pkt: &Packet, service: &Service) -> Result<(u32, Backend), Verdict> {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(flow) = FLOWS.get_ptr_mut(&pkt.flow) {
        // SAFETY: LRU entries may be recycled under us; we copy the ids out at
        // once and at worst reschedule a flow, never touch out of bounds.
        let (backend_id, vip_id) = unsafe { ((*flow).backend_id, (*flow).vip_id) };
        if vip_id == service.vip_id {
            if let Some(backend) = BACKENDS.get(backend_id) {
                if backend.flags & BACKEND_UP != 0 {
                    // SAFETY: as above; a plain 8-byte store into the value.
                    unsafe { (*flow).last_seen_ns = now };
                    return Ok((backend_id, *backend));
                }
            }
        }
    }
    let (backend_id, backend) = schedule::pick(service)?;
    let flow = Flow {
        backend_id,
        vip_id: service.vip_id,
        last_seen_ns: now,
    };
    // A full LRU evicts its oldest entry; an insert can only fail on memory
    // pressure, and then the packet is still forwarded (the next one
    // reschedules, which round-robin may send elsewhere).
    let _ = FLOWS.insert(&pkt.flow, &flow, 0);
    Ok((backend_id, backend))
}
