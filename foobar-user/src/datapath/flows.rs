//! The flow table, read from userspace: a bounded walk that says which
//! backends flows still use, and handles of their own on the table for
//! other threads. Never writes the table (only tests and benchmarks do,
//! through `Datapath::flow_table`).
use std::collections::HashSet;

use foobar_common::{Flow, FlowKey, FLOW_CLOSED};

use super::{DatapathError, Result};

/// What one walk of the flow table found (see `Datapath::flow_usage`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowUsage {
    pub in_use: HashSet<u32>,
    pub active: std::collections::HashMap<u32, u32>,
    pub entries: usize,
    /// Entries of the fullest table (= `entries` with one shared table):
    /// a per-CPU table evicts when it alone is full, whatever the others
    /// hold.
    pub fullest: usize,
}

/// Walks the flow tables (the shared one, or every CPU's) with BPF_MAP_LOOKUP_BATCH on a file descriptor of
/// its own (`Send`: it runs on a blocking thread). The kernel's batch
/// cursor is a hash bucket, so entries evicted during the walk neither
/// restart it (as a `get_next_key` walk restarts when its current key is
/// evicted) nor make it see an entry twice; and one system call reads
/// thousands of entries. The walk is bounded all the same.
pub struct FlowWalker {
    /// One descriptor per table: the shared one, or one per CPU.
    pub(super) tables: Vec<std::os::fd::OwnedFd>,
    /// Entries of each table.
    pub(super) capacity: u32,
}

/// Entries per BPF_MAP_LOOKUP_BATCH call (~256 KiB of keys and values).
const WALK_BATCH: usize = 4096;

impl FlowWalker {
    /// Which backends flows seen at or after `since_ns` (CLOCK_MONOTONIC)
    /// still use, how many of those flows are open (not closed by the
    /// client) per backend, and how many entries the tables hold together
    /// (never more than a table's capacity per table). Reads at most
    /// capacity + 1/8 + one batch entries per table, however the tables
    /// churn meanwhile. Per-CPU tables hold disjoint flows as long as a
    /// flow's packets keep to one CPU; one that moved counts once per
    /// table that holds it.
    pub fn usage(&self, since_ns: u64) -> Result<FlowUsage> {
        let mut usage = FlowUsage::default();
        let mut keys = vec![FlowKey::default(); WALK_BATCH];
        let mut values = vec![Flow::default(); WALK_BATCH];
        for table in &self.tables {
            let read = self.walk(table, since_ns, &mut usage, &mut keys, &mut values)?;
            usage.entries += read;
            usage.fullest = usage.fullest.max(read);
        }
        Ok(usage)
    }

    /// One table's walk into `usage`; returns the entries it read.
    fn walk(
        &self,
        table: &std::os::fd::OwnedFd,
        since_ns: u64,
        usage: &mut FlowUsage,
        keys: &mut [FlowKey],
        values: &mut [Flow],
    ) -> Result<usize> {
        let limit = self.capacity as usize + self.capacity as usize / 8 + WALK_BATCH;
        let mut cursor: Option<u32> = None;
        let mut seen = 0usize;
        loop {
            let (count, next, done) = lookup_batch(table, cursor, keys, values)?;
            for flow in &values[..count] {
                if flow.last_seen_ns >= since_ns {
                    usage.in_use.insert(flow.backend_id);
                    if flow.flags & FLOW_CLOSED == 0 {
                        *usage.active.entry(flow.backend_id).or_default() += 1;
                    }
                }
            }
            seen += count;
            if done || seen >= limit {
                break;
            }
            cursor = Some(next);
        }
        Ok(seen.min(self.capacity as usize))
    }
}

/// One BPF_MAP_LOOKUP_BATCH on `table` from `cursor` (None: the first
/// bucket): (entries read, the next cursor, whether the table is done).
fn lookup_batch(
    table: &std::os::fd::OwnedFd,
    cursor: Option<u32>,
    keys: &mut [FlowKey],
    values: &mut [Flow],
) -> Result<(usize, u32, bool)> {
    use std::os::fd::AsRawFd as _;
    /// The `batch` member of `union bpf_attr` (linux/bpf.h).
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let in_token = cursor.unwrap_or(0);
    let mut out_token = 0u32;
    let mut attr = BatchAttr {
        in_batch: cursor.map_or(0, |_| &in_token as *const u32 as u64),
        out_batch: &mut out_token as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: table.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the kernel writes at most `count` keys and values into
    // buffers that hold that many, and one u32 to `out_token`; all of
    // them outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if ret == 0 {
        return Ok((attr.count as usize, out_token, false));
    }
    let io_error = std::io::Error::last_os_error();
    if io_error.raw_os_error() == Some(libc::ENOENT) {
        // The last buckets: `count` entries were still read.
        return Ok((attr.count as usize, 0, true));
    }
    Err(DatapathError::Map {
        map: "FLOWS",
        source: aya::sys::SyscallError {
            call: "BPF_MAP_LOOKUP_BATCH",
            io_error,
        }
        .into(),
    })
}

/// A duplicate of the flow table's file descriptor.
pub(super) fn dup_fd(data: &aya::maps::MapData) -> Result<std::os::fd::OwnedFd> {
    std::os::fd::AsFd::as_fd(data.fd())
        .try_clone_to_owned()
        .map_err(|io_error| DatapathError::Map {
            map: "FLOWS",
            source: aya::sys::SyscallError {
                call: "dup",
                io_error,
            }
            .into(),
        })
}
