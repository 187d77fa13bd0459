//! Where the flow table lives: one LRU shared by every CPU (FLOWS), or,
//! with `datapath.flow_table = "per-cpu"`, each CPU's own LRU (slot
//! `bpf_get_smp_processor_id()` of FLOWS_PER_CPU), as Katran keeps them.
//! A shared LRU takes a global lock when its free lists run dry, which is
//! on nearly every insert of a busy table; per-CPU tables never share a
//! lock or a cache line between CPUs. The price: a flow whose packets move
//! to another CPU (RSS change, IRQ moved) misses there and is scheduled
//! anew. `flow.rs` reads and writes entries only through here.
use aya_ebpf::{helpers::bpf_get_smp_processor_id, Global};
use foobar_common::{Flow, FlowKey};

use crate::maps::{FLOWS, FLOWS_PER_CPU};

/// Non-zero: per-CPU tables (set at load time; a read-only global, so the
/// verifier prunes the mode not taken and the branch costs nothing).
#[unsafe(no_mangle)]
static FLOW_TABLE_PER_CPU: Global<u8> = Global::new(0);

/// The entry of `key` in this CPU's table.
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<*mut Flow> {
    if FLOW_TABLE_PER_CPU.load() == 0 {
        return FLOWS.get_ptr_mut(key);
    }
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    FLOWS_PER_CPU.get_value_ptr_mut(cpu, key)
}

/// Records `flow` under `key` in this CPU's table. A full LRU evicts its
/// oldest entry; an insert can only fail on memory pressure (or a CPU
/// without a table), and the caller forwards the packet all the same.
#[inline(always)]
pub fn insert(key: &FlowKey, flow: &Flow) {
    if FLOW_TABLE_PER_CPU.load() == 0 {
        let _ = FLOWS.insert(key, flow, 0);
        return;
    }
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if let Some(table) = FLOWS_PER_CPU.get(cpu) {
        let _ = table.insert(key, flow, 0);
    }
}
