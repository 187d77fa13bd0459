//! The only userspace code that touches BPF: loads the XDP object embedded
//! at build time, attaches it to an interface, writes the maps from a
//! [`Plan`], and reads the counters back. It decides nothing: what to write
//! comes from the plan, which comes from the validated config.
pub mod bench;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        xdp::{XdpLinkId, XdpMode},
        ProgramError, TestRun as _, TestRunOptions, Xdp,
    },
    Ebpf, EbpfLoader,
};
use std::collections::HashSet;

use foobar_common::{
    ring_state, AffinityKey, Backend, Counter, Event, Flow, FlowKey, Reason, Service, VipAddrKey,
    VipKey, BACKEND_UP, FLOW_CLOSED, MAX_BACKENDS, MAX_VIPS, RING_CAPACITY, RING_HALF_BIT,
    RING_STRIDE,
};

use crate::plan::Plan;

/// The XDP object built by build.rs (foobar-ebpf's `foobar` binary).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/foobar"));

/// The load balancer program.
pub const LB_PROGRAM: &str = "foobar";
/// A program that only returns XDP_PASS: attached to the peer of a veth it
/// makes the kernel deliver frames the LB sends with XDP_TX.
pub const PASS_PROGRAM: &str = "foobar_pass";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no {what} named {name}")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("interface {iface} does not exist (see `ip link`)")]
    UnknownInterface { iface: String },
    #[error(
        "interface {iface} does not support XDP in {mode} mode; \
         try --xdp-mode skb (generic XDP), which every driver supports"
    )]
    ModeUnsupported { iface: String, mode: &'static str },
    #[error(
        "interface {iface} already has an XDP program attached \
         (another foobar? see `ip link show dev {iface}`); detach it first"
    )]
    Busy { iface: String },
    #[error("attaching to {iface} in {mode} mode failed: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
    #[error("the plan has {what} {got}, more than the datapath's limit {limit}")]
    TooMany {
        what: &'static str,
        got: usize,
        limit: u32,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// Where XDP runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists (the fast path).
    Native,
    /// Generic XDP in the kernel stack: works on every interface, slower.
    Skb,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// Load-time settings of the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the flow table.
    pub flow_table_size: u32,
    /// Entries of the source-affinity table (1 when no VIP uses it: a map
    /// cannot have 0).
    pub affinity_table_size: u32,
    /// Seed of the Maglev flow hash (a global of the program).
    pub hash_seed: u32,
    /// MAC of the interface the program serves: only frames addressed to it
    /// are handled, and it is the source MAC of every frame sent.
    pub lb_mac: [u8; 6],
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_table_size: foobar_common::FLOW_TABLE_DEFAULT,
            affinity_table_size: 1,
            hash_seed: 0,
            lb_mac: [0; 6],
        }
    }
}

/// What one walk of the flow table found (see `Datapath::flow_usage`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowUsage {
    pub in_use: HashSet<u32>,
    pub active: std::collections::HashMap<u32, u32>,
    pub entries: usize,
}

/// Walks the flow table with BPF_MAP_LOOKUP_BATCH on a file descriptor of
/// its own (`Send`: it runs on a blocking thread). The kernel's batch
/// cursor is a hash bucket, so entries evicted during the walk neither
/// restart it (as a `get_next_key` walk restarts when its current key is
/// evicted) nor make it see an entry twice; and one system call reads
/// thousands of entries. The walk is bounded all the same.
pub struct FlowWalker {
    fd: std::os::fd::OwnedFd,
    capacity: u32,
}

/// Entries per BPF_MAP_LOOKUP_BATCH call (~256 KiB of keys and values).
const WALK_BATCH: usize = 4096;

impl FlowWalker {
    /// Which backends flows seen at or after `since_ns` (CLOCK_MONOTONIC)
    /// still use, how many of those flows are open (not closed by the
    /// client) per backend, and how many entries the table holds (never
    /// more than its capacity). Reads at most capacity + 1/8 + one batch
    /// entries, however the table churns meanwhile.
    pub fn usage(&self, since_ns: u64) -> Result<FlowUsage> {
        let limit = self.capacity as usize + self.capacity as usize / 8 + WALK_BATCH;
        let mut usage = FlowUsage::default();
        let mut keys = vec![FlowKey::default(); WALK_BATCH];
        let mut values = vec![Flow::default(); WALK_BATCH];
        let mut cursor: Option<u32> = None;
        let mut seen = 0usize;
        loop {
            let (count, next, done) = self.lookup_batch(cursor, &mut keys, &mut values)?;
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
        usage.entries = seen.min(self.capacity as usize);
        Ok(usage)
    }

    /// One BPF_MAP_LOOKUP_BATCH from `cursor` (None: the first bucket):
    /// (entries read, the next cursor, whether the table is done).
    fn lookup_batch(
        &self,
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
            map_fd: self.fd.as_raw_fd() as u32,
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
}

/// Summed per-CPU counters, as the datapath sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Indexed by `Reason as usize`.
    pub reasons: Vec<(&'static str, Counters)>,
    /// Indexed by `Event as usize` (packets only).
    pub events: Vec<(&'static str, u64)>,
    /// Indexed by VIP id.
    pub vips: Vec<Counters>,
    /// Indexed by backend id.
    pub backends: Vec<Counters>,
}

impl Stats {
    pub fn reason(&self, reason: Reason) -> &Counters {
        &self.reasons[reason as usize].1
    }

    pub fn event(&self, event: Event) -> u64 {
        self.events.get(event as usize).map_or(0, |e| e.1)
    }

    /// The counters of VIP id `id` (zero if it was not read).
    pub fn vip(&self, id: u32) -> Counters {
        self.vips.get(id as usize).cloned().unwrap_or_default()
    }

    /// The counters of backend id `id` (zero if it was not read).
    pub fn backend(&self, id: u32) -> Counters {
        self.backends.get(id as usize).cloned().unwrap_or_default()
    }
}

/// A loaded XDP object and, once attached, its link.
pub struct Datapath {
    ebpf: Ebpf,
    rings: RingWriter,
    attached: Option<(String, XdpLinkId)>,
    flow_table_size: u32,
    /// What the maps hold, as last written: `apply` writes differences only.
    written: Written,
}

#[derive(Default)]
struct Written {
    backends: std::collections::HashMap<u32, Backend>,
    vips: std::collections::HashMap<VipKey, Service>,
    /// (IPv4 VIP address, VLAN) -> flags, as in the prefilter map.
    vip_addrs4: std::collections::HashMap<VipAddrKey, u32>,
}

#[derive(Clone, Default)]
struct RingHalves {
    live: usize,
    /// What each half holds, as this writer wrote it (None: unknown).
    halves: [Option<Vec<u32>>; 2],
}

/// Writes VIP rings with the double-buffer protocol: fill the half the
/// datapath is not reading, then switch half and length with one 32-bit
/// store, so no packet sees a half-written ring. Only slots that differ
/// from what that half already holds are written (consecutive Maglev
/// tables differ in few slots). It holds its own handles on the two maps:
/// the datapath owns one; `Datapath::ring_writer` opens another for a
/// test or benchmark thread (whose writes the datapath's does not know).
pub struct RingWriter {
    rings: Array<MapData, u32>,
    state: Array<MapData, u32>,
    written: std::collections::HashMap<u32, RingHalves>,
}

impl RingWriter {
    /// Opens RINGS and RING_STATE of a loaded load-balancer program by id.
    fn open(prog: &Xdp) -> Result<Self> {
        let ids = prog
            .info()
            .and_then(|i| i.map_ids())
            .map_err(|source| DatapathError::Program {
                program: LB_PROGRAM,
                source,
            })?
            .unwrap_or_default();
        let (mut rings, mut state) = (None, None);
        for id in ids {
            let data = MapData::from_id(id).map_err(|source| DatapathError::Map {
                map: "(by id)",
                source,
            })?;
            let name = data
                .info()
                .map_err(|source| DatapathError::Map {
                    map: "(by id)",
                    source,
                })?
                .name_as_str()
                .map(str::to_owned);
            match name.as_deref() {
                Some("RINGS") => rings = Some(data),
                Some("RING_STATE") => state = Some(data),
                _ => {}
            }
        }
        let missing = |name| DatapathError::Missing { what: "map", name };
        let array = |data: Option<MapData>, name: &'static str| {
            Array::try_from(aya::maps::Map::Array(data.ok_or(missing(name))?))
                .map_err(|source| DatapathError::Map { map: name, source })
        };
        Ok(RingWriter {
            rings: array(rings, "RINGS")?,
            state: array(state, "RING_STATE")?,
            written: Default::default(),
        })
    }

    /// The ring this writer last made live for `vip_id`.
    fn live(&self, vip_id: u32) -> Option<&Vec<u32>> {
        let h = self.written.get(&vip_id)?;
        h.halves[h.live].as_ref()
    }

    pub fn set(&mut self, vip_id: u32, ring: &[u32]) -> Result<()> {
        if ring.len() > RING_CAPACITY as usize {
            return Err(DatapathError::TooMany {
                what: "ring slots",
                got: ring.len(),
                limit: RING_CAPACITY,
            });
        }
        if vip_id >= MAX_VIPS {
            return Err(DatapathError::TooMany {
                what: "VIP id",
                got: vip_id as usize,
                limit: MAX_VIPS - 1,
            });
        }
        let live_word = self
            .state
            .get(&vip_id, 0)
            .map_err(|source| DatapathError::Map {
                map: "RING_STATE",
                source,
            })?;
        let next = usize::from(live_word & RING_HALF_BIT == 0);
        let mut halves = self.written.remove(&vip_id).unwrap_or_default();
        let known = halves.halves[next].take();
        let base = vip_id * RING_STRIDE + next as u32 * RING_CAPACITY;
        for (pos, backend_id) in ring.iter().enumerate() {
            if known.as_ref().and_then(|k| k.get(pos)) == Some(backend_id) {
                continue;
            }
            self.rings
                .set(base + pos as u32, backend_id, 0)
                .map_err(|source| DatapathError::Map {
                    map: "RINGS",
                    source,
                })?;
        }
        self.state
            .set(vip_id, ring_state(next as u32, ring.len() as u32), 0)
            .map_err(|source| DatapathError::Map {
                map: "RING_STATE",
                source,
            })?;
        halves.halves[next] = Some(ring.to_vec());
        halves.live = next;
        self.written.insert(vip_id, halves);
        Ok(())
    }
}

impl Datapath {
    /// Loads the object and both programs into the kernel (nothing is
    /// attached yet, nothing forwards).
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("FLOWS", opts.flow_table_size)
            .map_max_entries("AFFINITY", opts.affinity_table_size.max(1))
            .override_global("HASH_SEED", &opts.hash_seed, true)
            .override_global("LB_MAC", &opts.lb_mac, true)
            .load(OBJECT)?;
        for name in [LB_PROGRAM, PASS_PROGRAM] {
            xdp_program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        let rings = RingWriter::open(xdp_program(&mut ebpf, LB_PROGRAM)?)?;
        Ok(Datapath {
            ebpf,
            rings,
            attached: None,
            flow_table_size: opts.flow_table_size,
            written: Written::default(),
        })
    }

    /// Attaches the load balancer to `iface`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let link = attach_program(&mut self.ebpf, LB_PROGRAM, iface, mode)?;
        self.attached = Some((iface.to_owned(), link));
        Ok(())
    }

    /// Detaches the load balancer if attached. Dropping the `Datapath` also
    /// detaches (the link's file descriptor closes); this makes it explicit
    /// and reports errors.
    pub fn detach(&mut self) -> Result<()> {
        if let Some((_, link)) = self.attached.take() {
            xdp_program(&mut self.ebpf, LB_PROGRAM)?
                .detach(link)
                .map_err(|source| DatapathError::Program {
                    program: LB_PROGRAM,
                    source,
                })?;
        }
        Ok(())
    }

    /// Makes the maps hold `plan`, writing only what differs from the last
    /// plan written. The order keeps every packet consistent: entries of
    /// backends that may take traffic first, then rings, then VIP keys (new
    /// and removed), and last the entries of backends that went down or
    /// were freed, which no ring names any more.
    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        if plan.vips.len() > MAX_VIPS as usize {
            return Err(DatapathError::TooMany {
                what: "VIPs",
                got: plan.vips.len(),
                limit: MAX_VIPS,
            });
        }
        if let Some((&id, _)) = plan.backends.iter().find(|(&id, _)| id >= MAX_BACKENDS) {
            return Err(DatapathError::TooMany {
                what: "backend id",
                got: id as usize,
                limit: MAX_BACKENDS - 1,
            });
        }
        for (&id, backend) in &plan.backends {
            if backend.flags & BACKEND_UP != 0 && self.written.backends.get(&id) != Some(backend) {
                self.write_backend(id, backend)?;
            }
        }
        for vip in &plan.vips {
            let id = vip.service.vip_id;
            if self.rings.live(id) != Some(&vip.ring) {
                self.rings.set(id, &vip.ring)?;
            }
        }
        // Prefilter addresses before the VIP keys that need them, and
        // removed after the keys that used them are gone.
        let addrs = &plan.addresses;
        let mut prefilter: HashMap<&mut MapData, VipAddrKey, u32> =
            map_mut(&mut self.ebpf, "VIP_ADDRS4")?;
        for (key, flags) in addrs {
            if self.written.vip_addrs4.get(key) != Some(flags) {
                prefilter
                    .insert(key, flags, 0)
                    .map_err(|source| DatapathError::Map {
                        map: "VIP_ADDRS4",
                        source,
                    })?;
                self.written.vip_addrs4.insert(*key, *flags);
            }
        }
        let mut vips: HashMap<&mut MapData, VipKey, Service> = map_mut(&mut self.ebpf, "VIPS")?;
        for vip in &plan.vips {
            if self.written.vips.get(&vip.key) != Some(&vip.service) {
                vips.insert(vip.key, vip.service, 0)
                    .map_err(|source| DatapathError::Map {
                        map: "VIPS",
                        source,
                    })?;
                self.written.vips.insert(vip.key, vip.service);
            }
        }
        let gone: Vec<VipKey> = self
            .written
            .vips
            .keys()
            .filter(|k| !plan.vips.iter().any(|v| v.key == **k))
            .copied()
            .collect();
        for key in gone {
            vips.remove(&key).map_err(|source| DatapathError::Map {
                map: "VIPS",
                source,
            })?;
            self.written.vips.remove(&key);
        }
        let mut prefilter: HashMap<&mut MapData, VipAddrKey, u32> =
            map_mut(&mut self.ebpf, "VIP_ADDRS4")?;
        let stale: Vec<VipAddrKey> = self
            .written
            .vip_addrs4
            .keys()
            .filter(|k| !addrs.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            prefilter
                .remove(&key)
                .map_err(|source| DatapathError::Map {
                    map: "VIP_ADDRS4",
                    source,
                })?;
            self.written.vip_addrs4.remove(&key);
        }
        for (&id, backend) in &plan.backends {
            if backend.flags & BACKEND_UP == 0 && self.written.backends.get(&id) != Some(backend) {
                self.write_backend(id, backend)?;
            }
        }
        let freed: Vec<u32> = self
            .written
            .backends
            .keys()
            .filter(|id| !plan.backends.contains_key(id))
            .copied()
            .collect();
        for id in freed {
            // Generation 0 and no flags: no flow or affinity entry matches.
            self.set_backend(id, &Backend::default())?;
            self.written.backends.remove(&id);
        }
        Ok(())
    }

    /// Writes one backend entry and remembers it, so the next `apply`
    /// knows what the map holds.
    fn write_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.set_backend(id, backend)?;
        self.written.backends.insert(id, *backend);
        Ok(())
    }

    /// Writes one backend entry behind `apply`'s back (tests and the bench);
    /// the next `apply` rewrites it only if its plan differs from what it
    /// last wrote.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        let mut backends: Array<&mut MapData, Backend> = self.map_mut("BACKENDS")?;
        backends
            .set(id, backend, 0)
            .map_err(|source| DatapathError::Map {
                map: "BACKENDS",
                source,
            })
    }

    /// Forgets the source-affinity choices of `vip_id`, or of every VIP:
    /// the clients' next new connections are scheduled afresh.
    pub fn purge_affinity(&mut self, vip_id: Option<u32>) -> Result<usize> {
        let mut map: HashMap<&mut MapData, AffinityKey, Flow> = self.map_mut("AFFINITY")?;
        // Collect first: deleting while walking restarts the kernel's walk.
        let keys: Vec<AffinityKey> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| vip_id.is_none_or(|id| k.vip_id == id))
            .collect();
        let mut purged = 0;
        for key in keys {
            match map.remove(&key) {
                Ok(()) => purged += 1,
                // Evicted meanwhile: already gone.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DatapathError::Map {
                        map: "AFFINITY",
                        source,
                    })
                }
            }
        }
        Ok(purged)
    }

    /// Replaces a VIP's ring (see `RingWriter`).
    pub fn set_ring(&mut self, vip_id: u32, ring: &[u32]) -> Result<()> {
        self.rings.set(vip_id, ring)
    }

    /// A second, independent ring writer on the same maps.
    pub fn ring_writer(&mut self) -> Result<RingWriter> {
        RingWriter::open(xdp_program(&mut self.ebpf, LB_PROGRAM)?)
    }

    /// Makes the maps hold exactly `plan`, whatever they hold now: reads
    /// the VIP and backend maps back instead of trusting what `apply` last
    /// wrote (after an `apply` failed half-way, that record is not the
    /// maps' content). The state owner's rollback. Same order as `apply`.
    pub fn resync(&mut self, plan: &Plan) -> Result<()> {
        let map_err = |map| move |source| DatapathError::Map { map, source };
        for (&id, backend) in plan
            .backends
            .iter()
            .filter(|(_, b)| b.flags & BACKEND_UP != 0)
        {
            self.set_backend(id, backend)?;
        }
        for vip in &plan.vips {
            self.rings.set(vip.service.vip_id, &vip.ring)?;
        }
        let addrs = &plan.addresses;
        let mut prefilter: HashMap<&mut MapData, VipAddrKey, u32> =
            map_mut(&mut self.ebpf, "VIP_ADDRS4")?;
        for (key, flags) in addrs {
            prefilter
                .insert(key, flags, 0)
                .map_err(map_err("VIP_ADDRS4"))?;
        }
        let mut vips: HashMap<&mut MapData, VipKey, Service> = map_mut(&mut self.ebpf, "VIPS")?;
        for vip in &plan.vips {
            vips.insert(vip.key, vip.service, 0)
                .map_err(map_err("VIPS"))?;
        }
        let stray: Vec<VipKey> = vips
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !plan.vips.iter().any(|v| v.key == *k))
            .collect();
        for key in stray {
            vips.remove(&key).map_err(map_err("VIPS"))?;
        }
        let mut prefilter: HashMap<&mut MapData, VipAddrKey, u32> =
            map_mut(&mut self.ebpf, "VIP_ADDRS4")?;
        let stray: Vec<VipAddrKey> = prefilter
            .keys()
            .filter_map(|k| k.ok())
            .filter(|a| !addrs.contains_key(a))
            .collect();
        for addr in stray {
            prefilter.remove(&addr).map_err(map_err("VIP_ADDRS4"))?;
        }
        for id in 0..MAX_BACKENDS {
            let want = plan.backends.get(&id).copied().unwrap_or_default();
            if self.backend(id)? != want {
                self.set_backend(id, &want)?;
            }
        }
        self.written = Written {
            backends: plan.backends.iter().map(|(&id, b)| (id, *b)).collect(),
            vips: plan.vips.iter().map(|v| (v.key, v.service)).collect(),
            vip_addrs4: addrs.clone(),
        };
        Ok(())
    }

    /// The BACKENDS entry of backend id `id`, as the datapath reads it.
    pub fn backend(&self, id: u32) -> Result<Backend> {
        let backends: Array<&MapData, Backend> = self.map("BACKENDS")?;
        backends.get(&id, 0).map_err(|source| DatapathError::Map {
            map: "BACKENDS",
            source,
        })
    }

    /// Walks the flow table once (see `FlowWalker::usage`). Blocks for as
    /// long as the walk takes: the daemon walks on another thread through
    /// its own `flow_walker`.
    pub fn flow_usage(&self, since_ns: u64) -> Result<FlowUsage> {
        self.flow_walker()?.usage(since_ns)
    }

    /// A handle of its own on the flow table, to walk it on another thread
    /// while this `Datapath` keeps serving its owner.
    pub fn flow_walker(&self) -> Result<FlowWalker> {
        Ok(FlowWalker {
            fd: self.flow_table_fd()?,
            capacity: self.flow_table_size,
        })
    }

    /// A read-write handle of its own on the flow table, for tests and
    /// benchmarks that fill it (the daemon never writes it).
    pub fn flow_table(&self) -> Result<HashMap<MapData, FlowKey, Flow>> {
        let data =
            MapData::from_fd(self.flow_table_fd()?).map_err(|source| DatapathError::Map {
                map: "FLOWS",
                source,
            })?;
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(|source| DatapathError::Map {
            map: "FLOWS",
            source,
        })
    }

    fn flow_table_fd(&self) -> Result<std::os::fd::OwnedFd> {
        let map = self.ebpf.map("FLOWS").ok_or(DatapathError::Missing {
            what: "map",
            name: "FLOWS",
        })?;
        let (aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) = map else {
            return Err(DatapathError::Missing {
                what: "hash map",
                name: "FLOWS",
            });
        };
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

    pub fn flow_table_size(&self) -> u32 {
        self.flow_table_size
    }

    /// Reads and sums every per-CPU counter of VIP ids below `vip_count` and
    /// backend ids below `backend_count`.
    pub fn stats(&self, vip_count: usize, backend_count: usize) -> Result<Stats> {
        let reasons = Reason::ALL
            .iter()
            .map(|r| Ok((r.name(), self.counter("REASONS", *r as u32)?)))
            .collect::<Result<_>>()?;
        let events = Event::ALL
            .iter()
            .map(|e| Ok((e.name(), self.counter("EVENTS", *e as u32)?.packets)))
            .collect::<Result<_>>()?;
        let vips = (0..vip_count as u32)
            .map(|id| self.counter("VIP_STATS", id))
            .collect::<Result<_>>()?;
        let backends = (0..backend_count as u32)
            .map(|id| self.counter("BACKEND_STATS", id))
            .collect::<Result<_>>()?;
        Ok(Stats {
            reasons,
            events,
            vips,
            backends,
        })
    }

    fn counter(&self, map: &'static str, index: u32) -> Result<Counters> {
        let array: PerCpuArray<&MapData, Counter> = self.map(map)?;
        let per_cpu = array
            .get(&index, 0)
            .map_err(|source| DatapathError::Map { map, source })?;
        Ok(per_cpu.iter().fold(Counters::default(), |acc, c| Counters {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }))
    }

    /// The load balancer program's file descriptor (for the bench harness's
    /// tail call).
    pub fn program_fd(&mut self) -> Result<aya::programs::ProgramFd> {
        let prog = xdp_program(&mut self.ebpf, LB_PROGRAM)?;
        let fd = prog.fd().map_err(|source| DatapathError::Program {
            program: LB_PROGRAM,
            source,
        })?;
        fd.try_clone().map_err(|e| DatapathError::Program {
            program: LB_PROGRAM,
            source: ProgramError::IOError(e),
        })
    }

    /// Runs the load balancer once on `frame` with BPF_PROG_TEST_RUN and
    /// returns the XDP action and the frame as the program left it.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let prog = xdp_program(&mut self.ebpf, LB_PROGRAM)?;
        // Room for growth: later forwarding modes encapsulate.
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let result = prog
            .test_run(opts)
            .map_err(|source| DatapathError::Program {
                program: LB_PROGRAM,
                source,
            })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DatapathError::Missing { what: "map", name })?;
        T::try_from(map).map_err(|source| DatapathError::Map { map: name, source })
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        map_mut(&mut self.ebpf, name)
    }
}

/// A typed view of a map, borrowing only the `Ebpf` (so the caller may
/// update its other fields while it holds the view).
fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(DatapathError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| DatapathError::Map { map: name, source })
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::error!(%err, "detaching the XDP program failed");
        }
    }
}

/// The `foobar_pass` program of a loaded object, attached on its own: the
/// lab puts it on the peer of the LB's veth. Dropping it detaches it.
pub struct PassProgram {
    _ebpf: Ebpf,
}

impl PassProgram {
    pub fn attach(iface: &str, mode: AttachMode) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            // The pass program uses no map; keep the big tables tiny.
            .map_max_entries("FLOWS", 1)
            .map_max_entries("AFFINITY", 1)
            .load(OBJECT)?;
        xdp_program(&mut ebpf, PASS_PROGRAM)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: PASS_PROGRAM,
                source,
            })?;
        attach_program(&mut ebpf, PASS_PROGRAM, iface, mode)?;
        Ok(PassProgram { _ebpf: ebpf })
    }
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Missing {
        what: "program",
        name,
    })?;
    prog.try_into().map_err(|source| DatapathError::Program {
        program: name,
        source,
    })
}

fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: AttachMode,
) -> Result<XdpLinkId> {
    let prog = xdp_program(ebpf, name)?;
    prog.attach(iface, mode.xdp_mode())
        .map_err(|source| classify_attach_error(iface, mode, source))
}

fn classify_attach_error(iface: &str, mode: AttachMode, source: ProgramError) -> DatapathError {
    let errno = match &source {
        ProgramError::UnknownInterface { .. } => {
            return DatapathError::UnknownInterface {
                iface: iface.to_owned(),
            }
        }
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        other => io_errno_in(&other.to_string()),
    };
    match errno {
        Some(libc::EOPNOTSUPP) => DatapathError::ModeUnsupported {
            iface: iface.to_owned(),
            mode: mode.name(),
        },
        Some(libc::EBUSY) | Some(libc::EEXIST) => DatapathError::Busy {
            iface: iface.to_owned(),
        },
        _ => DatapathError::Attach {
            iface: iface.to_owned(),
            mode: mode.name(),
            source,
        },
    }
}

/// The netlink fallback reports errors as text ("... (os error 95)").
fn io_errno_in(text: &str) -> Option<i32> {
    let start = text.rfind("os error ")? + "os error ".len();
    text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::io_errno_in;

    #[test]
    fn errno_is_read_from_netlink_error_text() {
        assert_eq!(
            io_errno_in("netlink error: Operation not supported (os error 95)"),
            Some(95)
        );
        assert_eq!(io_errno_in("no number here"), None);
    }
}
