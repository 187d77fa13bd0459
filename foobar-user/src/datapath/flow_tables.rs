//! The flow tables behind `datapath.flow_table`: the shared LRU (FLOWS),
//! or one LRU per possible CPU in the slots of FLOWS_PER_CPU, an array of
//! maps. The object creates only the outer array (and a 1-entry template
//! for the kernel's type check); this module creates each CPU's table at
//! `flow_table_size` entries and puts it in its slot. Only the outer array
//! is pinned: it holds its tables, so an adopting run finds them there.
use std::os::fd::{FromRawFd as _, OwnedFd};

use aya::maps::{ArrayOfMaps, Map, MapData};
use foobar_common::{Flow, FlowKey};

use super::{pin::PinDir, DatapathError, Result};
use crate::config::FlowTableMode;

/// The outer array of the per-CPU tables (the object's BTF map).
pub(super) const PER_CPU_MAP: &str = "FLOWS_PER_CPU";

/// Possible CPUs: the per-CPU tables' count, so that every id
/// `bpf_get_smp_processor_id` returns has a slot.
pub(super) fn possible_cpus() -> Result<u32> {
    aya::util::nr_cpus()
        .map(|n| n as u32)
        .map_err(|(path, source)| DatapathError::Pin {
            path: path.into(),
            source,
        })
}

/// The mode of the flow tables pinned under `pins`, if any: per-CPU when
/// the pinned outer array holds a table, shared when only FLOWS is pinned.
/// An adopting run keeps it, whatever the config says, so that restarts
/// keep the flows (the config's mode takes effect after `foobar detach`).
pub(super) fn pinned_mode(pins: &PinDir) -> Option<FlowTableMode> {
    let outer = pins.map(PER_CPU_MAP);
    if outer.exists() {
        if let Ok(data) = MapData::from_pin(&outer) {
            if let Ok(tables) = ArrayOfMaps::<_, MapData>::try_from(Map::ArrayOfMaps(data)) {
                if tables.get(&0, 0).is_ok() {
                    return Some(FlowTableMode::PerCpu);
                }
            }
        }
    }
    pins.map("FLOWS").exists().then_some(FlowTableMode::Shared)
}

/// Fills every empty slot of the outer array with a new table of `size`
/// entries and returns all the tables, by CPU. Tables found in their slot
/// (adopted) are kept as they are.
pub(super) fn per_cpu_tables(outer: MapData, size: u32) -> Result<Vec<MapData>> {
    let map_error = |source| DatapathError::Map {
        map: PER_CPU_MAP,
        source,
    };
    let mut outer =
        ArrayOfMaps::<_, MapData>::try_from(Map::ArrayOfMaps(outer)).map_err(map_error)?;
    let mut tables = Vec::with_capacity(outer.len() as usize);
    for cpu in 0..outer.len() {
        let table = match outer.get(&cpu, 0) {
            Ok(table) => table,
            Err(aya::maps::MapError::KeyNotFound) => {
                let table = create_lru(cpu, size)?;
                outer.set(cpu, &table, 0).map_err(map_error)?;
                table
            }
            Err(source) => return Err(map_error(source)),
        };
        tables.push(table);
    }
    Ok(tables)
}

/// A new LRU hash map FlowKey -> Flow of `size` entries, named after its
/// CPU (`bpftool map` shows FLOWS_CPU7). Its type, key, value and flags
/// match the object's inner template, as the kernel checks on insert.
fn create_lru(cpu: u32, size: u32) -> Result<MapData> {
    /// The `map_create` member of `union bpf_attr` (linux/bpf.h), up to
    /// the name.
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let mut attr = CreateAttr {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: std::mem::size_of::<FlowKey>() as u32,
        value_size: std::mem::size_of::<Flow>() as u32,
        max_entries: size,
        ..CreateAttr::default()
    };
    let name = format!("FLOWS_CPU{cpu}");
    let len = name.len().min(attr.map_name.len() - 1);
    attr.map_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: the kernel reads `size_of::<CreateAttr>()` bytes of `attr`,
    // which outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &mut attr as *mut CreateAttr,
            std::mem::size_of::<CreateAttr>(),
        )
    };
    if fd < 0 {
        return Err(DatapathError::Map {
            map: PER_CPU_MAP,
            source: aya::sys::SyscallError {
                call: "BPF_MAP_CREATE (a CPU's flow table; datapath.flow_table_size × CPUs \
                       may exceed the memory this process may lock)",
                io_error: std::io::Error::last_os_error(),
            }
            .into(),
        });
    }
    // SAFETY: a descriptor the kernel just returned, owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    MapData::from_fd(fd).map_err(|source| DatapathError::Map {
        map: PER_CPU_MAP,
        source,
    })
}
