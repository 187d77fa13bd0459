//! The only userspace code that touches BPF: loads the XDP object embedded
//! at build time, attaches it to an interface, writes the maps from a
//! [`Plan`], and reads the counters back. It decides nothing: what to write
//! comes from the plan, which comes from the validated config.
//!
//! One concern per file: `load` (object, maps, programs, link), `rings`
//! (the double-buffered ring writer), `flows` (the flow-table walk),
//! `stats` (counters); this file writes VIPs and backends from a plan.
pub mod bench;
mod dnat;
mod flow_tables;
mod flows;
mod load;
mod nat;
pub mod pin;
mod rings;
mod stats;
mod v6;

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{xdp::XdpLinkId, ProgramError, TestRun as _, TestRunOptions},
    Ebpf,
};

use foobar_common::{
    vip_addr_bit, AffinityKey, Backend, Flow, FlowKey, Service, VipAddrKey, VipGen, VipKey,
    BACKEND_UP, MAX_BACKENDS, MAX_VIPS, VIP_ADDR_BITMAP_WORDS,
};

pub use flows::{FlowUsage, FlowWalker};
pub use load::{Arm, AttachMode, FlowTableMode, LoadOptions, PassProgram};
pub use nat::{nat_state_ended, NatCollector, NatGcReport, NAT_GC_SLACK_NS};
pub(crate) use pin::mount_bpffs;
pub use pin::{PinDir, DEFAULT_PIN_ROOT};
pub use rings::RingWriter;
pub use stats::{Counters, Stats};

use load::xdp_program;

use crate::plan::{MapsContent, Plan};

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
    #[error("{}: {source}", path.display())]
    Pin {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot mount bpffs at /sys/fs/bpf ({source}); mount it \
         (`mount -t bpf bpf /sys/fs/bpf`) or give another --pin-root on a bpffs"
    )]
    Bpffs { source: std::io::Error },
    #[error(
        "{dir} holds a datapath pinned by a foobar binary of another map layout \
         ({found}; this binary uses {want}): it cannot adopt it. Run `foobar detach` \
         (forwarding stops; established connections are rescheduled when it starts \
         again), then start this binary"
    )]
    LayoutMismatch {
        dir: std::path::PathBuf,
        found: String,
        want: String,
    },
    #[error(
        "another foobar daemon serves the datapath pinned in {dir} (it holds its lock); \
         stop it first"
    )]
    InUse { dir: std::path::PathBuf },
    #[error("the pinned XDP link {path}: {source}")]
    Link {
        path: std::path::PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error(
        "VIP {vip} forwards with dnat, but the XDP program was loaded without the dnat \
         reply path (no dnat VIP at start; it costs the pass path a lookup): add the VIP \
         to the config file and restart foobar"
    )]
    DnatOff { vip: String },
    #[error(
        "putting interface index {ifindex} in the EGRESS devmap (two-arm): {source}; \
         check datapath.backend_interface names an interface that exists"
    )]
    Egress {
        ifindex: u32,
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("the plan has {what} {got}, more than the datapath's limit {limit}")]
    TooMany {
        what: &'static str,
        got: usize,
        limit: u32,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// A loaded XDP object and, once attached, its link.
pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    rings: RingWriter,
    attached: Option<Attached>,
    /// Two-arm: the link on the backend-side interface.
    arm_attached: Option<Attached>,
    /// Where the maps and the link are pinned (None: nothing is pinned, and
    /// dropping the datapath detaches it, as tests and benchmarks want).
    pins: Option<PinDir>,
    /// The maps were pinned already at load: this instance adopted them.
    adopted: bool,
    /// The pin directory's lock, held while this datapath lives.
    _pin_lock: Option<std::os::fd::OwnedFd>,
    /// Entries of each flow table (of each CPU's, when per CPU).
    flow_table_size: u32,
    flow_table: FlowTableMode,
    /// What the maps hold, as last written: `apply` writes differences only.
    written: Written,
    nat_written: nat::NatWritten,
    maps6: v6::Maps6,
    written6: v6::Written6,
}

/// How the load balancer is attached.
enum Attached {
    /// Through a link this process owns: closing it detaches.
    Owned(XdpLinkId),
    /// Through a pinned link: it stays attached after the process ends,
    /// until the pin is removed.
    Pinned(aya::programs::links::FdLink),
}

/// The maps this module writes or reads, taken from the object at load.
struct Maps {
    backends: Array<MapData, Backend>,
    vips: HashMap<MapData, VipKey, Service>,
    vip_gens: Array<MapData, VipGen>,
    vip_addrs4: HashMap<MapData, VipAddrKey, u32>,
    vip_addr_bits: Array<MapData, u64>,
    affinity: HashMap<MapData, AffinityKey, Flow>,
    /// The flow tables: the shared one, or one per CPU, by CPU id.
    flows: Vec<MapData>,
    counters: stats::CounterMaps,
    nat: nat::NatMaps,
    dnat: dnat::DnatMaps,
}

#[derive(Default)]
struct Written {
    backends: std::collections::HashMap<u32, Backend>,
    vips: std::collections::HashMap<VipKey, Service>,
    /// (IPv4 VIP address, VLAN) -> flags, as in the prefilter map.
    vip_addrs4: std::collections::HashMap<VipAddrKey, u32>,
    /// The words of the prefilter bitmap (VIP_ADDR_BITS); empty: all zero,
    /// as a freshly created map is.
    addr_bits: Vec<u64>,
    /// VIP id -> its VIP_GEN entry (absent: zero, as a fresh map holds).
    vip_gens: std::collections::HashMap<u32, VipGen>,
    /// The next VIP generation to hand out: above every one written.
    next_vip_gen: u32,
    /// The next `apply` bumps every VIP id it sees (set by `resync`: maps
    /// it did not write itself may hold a change whose second bump never
    /// came, e.g. an `apply` that failed half-way or a daemon that died).
    bump_all: bool,
}

/// The VIP ids whose generation must change when the VIPS map goes from
/// `old` to `new`: for every key added, removed or given another service,
/// the ids of its old and new service and, for an exact-port key, of the
/// port-0 VIP of its (address, protocol, VLAN), which it shadows for its
/// port (a flow entry does not say which of the two made it). Ids of
/// unchanged keys keep their generation, so their flows keep the
/// flow-first path.
fn vip_ids_to_bump(
    old: &std::collections::HashMap<VipKey, Service>,
    new: &std::collections::HashMap<VipKey, Service>,
) -> std::collections::BTreeSet<u32> {
    let mut ids = std::collections::BTreeSet::new();
    for key in old.keys().chain(new.keys()) {
        if old.get(key) == new.get(key) {
            continue;
        }
        let wildcard = VipKey { port_be: 0, ..*key };
        let keys = if key.port_be != 0 {
            vec![*key, wildcard]
        } else {
            vec![*key]
        };
        for k in keys {
            for side in [old, new] {
                if let Some(service) = side.get(&k) {
                    ids.insert(service.vip_id);
                }
            }
        }
    }
    ids
}

/// The prefilter bitmap of a set of VIP addresses (`vip_addr_bit`).
fn addr_bits<'a>(keys: impl IntoIterator<Item = &'a VipAddrKey>) -> Vec<u64> {
    let mut bits = vec![0; VIP_ADDR_BITMAP_WORDS as usize];
    for key in keys {
        let (word, mask) = vip_addr_bit(key.addr_be);
        bits[word as usize] |= mask;
    }
    bits
}

impl Datapath {
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
        self.check_dnat(plan)?;
        for (&id, backend) in &plan.backends {
            if backend.flags & BACKEND_UP != 0 && self.written.backends.get(&id) != Some(backend) {
                self.write_backend(id, backend)?;
            }
        }
        self.write_nat(plan)?;
        self.add_dnat_sources(plan)?;
        for vip in &plan.vips {
            let id = vip.service.vip_id;
            if self.rings.live(id) != Some(&vip.ring) {
                self.rings.set(id, &vip.ring)?;
            }
        }
        // Prefilter addresses before the VIP keys that need them, and
        // removed after the keys that used them are gone; the bitmap in
        // front of them likewise: bits set before the addresses are added,
        // cleared after they are removed.
        let addrs = &plan.addresses;
        let mut bits = addr_bits(addrs.keys());
        for (i, word) in bits.iter_mut().enumerate() {
            *word |= self.written.addr_bits.get(i).copied().unwrap_or(0);
        }
        self.write_addr_bits(&bits)?;
        self.add_addresses6(plan)?;
        let prefilter = &mut self.maps.vip_addrs4;
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
        // Generations: bumped before the VIPS writes, so no flow entry made
        // under the old meaning passes the flow-first check once the new
        // one shows, and again after them, so neither does an entry a
        // packet made while the writes were under way.
        let planned: std::collections::HashMap<VipKey, Service> =
            plan.vips.iter().map(|v| (v.key, v.service)).collect();
        let mut bump = vip_ids_to_bump(&self.written.vips, &planned);
        if std::mem::take(&mut self.written.bump_all) {
            let all = self.written.vips.values().chain(planned.values());
            bump.extend(all.map(|s| s.vip_id));
        }
        let old_ids: std::collections::BTreeSet<u32> =
            self.written.vips.values().map(|s| s.vip_id).collect();
        let vlans: std::collections::HashMap<u32, (u16, u8)> = plan
            .vips
            .iter()
            .map(|v| (v.service.vip_id, (v.key.vlan, v.service.forward_mode)))
            .collect();
        self.bump_vip_gens(&bump, &vlans)?;
        let vips = &mut self.maps.vips;
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
        // An id that left the plan goes back to the pool: the next VIP to
        // take it starts its counters from zero (also when its key stayed
        // and took another id).
        for id in old_ids {
            if !vlans.contains_key(&id) {
                self.maps.counters.clear_vip(id)?;
            }
        }
        self.bump_vip_gens(&bump, &vlans)?;
        let prefilter = &mut self.maps.vip_addrs4;
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
        self.write_addr_bits(&addr_bits(self.written.vip_addrs4.keys()))?;
        self.remove_addresses6(plan)?;
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
            // Generation 0 and no flags: no flow or affinity entry matches;
            // and the next backend to take the id counts from zero.
            self.set_backend(id, &Backend::default())?;
            self.maps.counters.clear_backend(id)?;
            self.written.backends.remove(&id);
        }
        self.clear_nat(plan)?;
        self.trim_dnat_sources(plan)?;
        Ok(())
    }

    /// The pass path's prefilter bitmap (VIP_ADDR_BITS) as the kernel
    /// holds it, one word per entry.
    pub fn prefilter_bits(&self) -> Result<Vec<u64>> {
        (0..VIP_ADDR_BITMAP_WORDS)
            .map(|i| {
                self.maps
                    .vip_addr_bits
                    .get(&i, 0)
                    .map_err(|source| DatapathError::Map {
                        map: "VIP_ADDR_BITS",
                        source,
                    })
            })
            .collect()
    }

    /// Gives each VIP id of `ids` a new generation (with the VLAN its VIP
    /// is served on and its forwarding mode, if it has one in the plan).
    fn bump_vip_gens(
        &mut self,
        ids: &std::collections::BTreeSet<u32>,
        vlans: &std::collections::HashMap<u32, (u16, u8)>,
    ) -> Result<()> {
        for &id in ids {
            let gen = self.written.next_vip_gen.max(1);
            self.written.next_vip_gen = gen.checked_add(1).unwrap_or(1);
            let (vlan, forward_mode) = vlans.get(&id).copied().unwrap_or((0, 0));
            let entry = VipGen {
                gen,
                vlan,
                forward_mode,
                _pad: 0,
            };
            self.maps
                .vip_gens
                .set(id, entry, 0)
                .map_err(|source| DatapathError::Map {
                    map: "VIP_GEN",
                    source,
                })?;
            self.written.vip_gens.insert(id, entry);
        }
        Ok(())
    }

    /// The VIP_GEN entry of VIP id `id`, as the datapath reads it.
    pub fn vip_gen(&self, id: u32) -> Result<VipGen> {
        self.maps
            .vip_gens
            .get(&id, 0)
            .map_err(|source| DatapathError::Map {
                map: "VIP_GEN",
                source,
            })
    }

    /// Writes the prefilter words that differ from what it holds.
    fn write_addr_bits(&mut self, bits: &[u64]) -> Result<()> {
        for (i, &word) in bits.iter().enumerate() {
            if self.written.addr_bits.get(i).copied().unwrap_or(0) != word {
                self.maps
                    .vip_addr_bits
                    .set(i as u32, word, 0)
                    .map_err(|source| DatapathError::Map {
                        map: "VIP_ADDR_BITS",
                        source,
                    })?;
                if self.written.addr_bits.len() <= i {
                    self.written.addr_bits.resize(i + 1, 0);
                }
                self.written.addr_bits[i] = word;
            }
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
        self.maps
            .backends
            .set(id, backend, 0)
            .map_err(|source| DatapathError::Map {
                map: "BACKENDS",
                source,
            })
    }

    /// Forgets the source-affinity choices of `vip_id`, or of every VIP:
    /// the clients' next new connections are scheduled afresh.
    pub fn purge_affinity(&mut self, vip_id: Option<u32>) -> Result<usize> {
        let map = &mut self.maps.affinity;
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
    /// maps' content), then writes the difference with `apply`. The state
    /// owner's rollback, and the reconciliation of adopted (pinned) maps.
    pub fn resync(&mut self, plan: &Plan) -> Result<()> {
        let map_err = |map| move |source| DatapathError::Map { map, source };
        // Take what the maps hold as the record `apply` diffs against; the
        // ring writer forgets its halves, so every ring is written whole.
        let mut backends = std::collections::HashMap::new();
        for id in 0..MAX_BACKENDS {
            let backend = self.backend(id)?;
            if backend != Backend::default() {
                backends.insert(id, backend);
            }
        }
        let vips = self
            .maps
            .vips
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VIPS"))?;
        let vip_addrs4 = self
            .maps
            .vip_addrs4
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VIP_ADDRS4"))?;
        let mut vip_gens = std::collections::HashMap::new();
        for id in 0..MAX_VIPS {
            let entry = self.vip_gen(id)?;
            if entry != VipGen::default() {
                vip_gens.insert(id, entry);
            }
        }
        // Generations handed out before (by this process or the one whose
        // maps were adopted) are never handed out again.
        let next_vip_gen = vip_gens
            .values()
            .map(|g| g.gen)
            .max()
            .unwrap_or(0)
            .max(self.written.next_vip_gen.saturating_sub(1))
            .checked_add(1)
            .unwrap_or(1);
        self.written = Written {
            backends,
            vips,
            vip_addrs4,
            addr_bits: self.prefilter_bits()?,
            vip_gens,
            next_vip_gen,
            bump_all: true,
        };
        self.reread6()?;
        self.rings.forget();
        self.apply(plan)
    }

    /// What the maps hold now: VIPs, backend entries in use, live rings
    /// (read back from the kernel, for adopting pinned maps).
    pub fn read_back(&self) -> Result<MapsContent> {
        let map_err = |map| move |source| DatapathError::Map { map, source };
        let mut content = MapsContent::default();
        for entry in self.maps.vips.iter() {
            let (key, service) = entry.map_err(map_err("VIPS"))?;
            if service.vip_id < MAX_VIPS {
                let ring = self.rings.read_live(service.vip_id)?;
                content.rings.insert(service.vip_id, ring);
            }
            content.vips.push((key, service));
        }
        for id in 0..MAX_BACKENDS {
            let backend = self.backend(id)?;
            if backend.gen != 0 {
                content.backends.insert(id, backend);
            }
        }
        Ok(content)
    }

    /// The BACKENDS entry of backend id `id`, as the datapath reads it.
    pub fn backend(&self, id: u32) -> Result<Backend> {
        self.maps
            .backends
            .get(&id, 0)
            .map_err(|source| DatapathError::Map {
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
            tables: self
                .maps
                .flows
                .iter()
                .map(flows::dup_fd)
                .collect::<Result<_>>()?,
            capacity: self.flow_table_size,
        })
    }

    /// A read-write handle of its own on the flow table CPU `cpu` uses
    /// (the shared one, whatever `cpu`, when the table is shared), for
    /// tests and benchmarks that fill or read it (the daemon never writes
    /// it).
    pub fn flow_table_of(&self, cpu: u32) -> Result<HashMap<MapData, FlowKey, Flow>> {
        let table = match self.flow_table {
            FlowTableMode::Shared => self.maps.flows.first(),
            FlowTableMode::PerCpu => self.maps.flows.get(cpu as usize),
        }
        .ok_or(DatapathError::Missing {
            what: "flow table of CPU",
            name: "FLOWS_PER_CPU",
        })?;
        let data =
            MapData::from_fd(flows::dup_fd(table)?).map_err(|source| DatapathError::Map {
                map: "FLOWS",
                source,
            })?;
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(|source| DatapathError::Map {
            map: "FLOWS",
            source,
        })
    }

    /// `flow_table_of(0)`: the shared table, or CPU 0's.
    pub fn flow_table(&self) -> Result<HashMap<MapData, FlowKey, Flow>> {
        self.flow_table_of(0)
    }

    /// Entries all flow tables hold together: `flow_table_size` times the
    /// tables (one, or one per possible CPU).
    pub fn flow_table_size(&self) -> u32 {
        self.flow_table_size
            .saturating_mul(self.maps.flows.len() as u32)
    }

    /// Entries of each flow table (of each CPU's, when per CPU).
    pub fn flow_table_size_each(&self) -> u32 {
        self.flow_table_size
    }

    /// The flow table mode in use (an adopted datapath keeps its own).
    pub fn flow_table_mode(&self) -> FlowTableMode {
        self.flow_table
    }

    /// How many flow tables there are: 1, or one per possible CPU.
    pub fn flow_tables(&self) -> usize {
        self.maps.flows.len()
    }

    /// Reads and sums every per-CPU counter of VIP ids below `vip_count` and
    /// backend ids below `backend_count`.
    pub fn stats(&self, vip_count: usize, backend_count: usize) -> Result<Stats> {
        self.maps.counters.read(vip_count, backend_count)
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
        self.test_run_on(None, frame)
    }

    /// As `test_run`, as if `frame` came in on interface `ingress` (an
    /// index in the calling thread's network namespace; None: the
    /// kernel's default, loopback): two-arm tests tell the arms apart.
    pub fn test_run_on(&mut self, ingress: Option<u32>, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let prog = xdp_program(&mut self.ebpf, LB_PROGRAM)?;
        // Room for growth: later forwarding modes encapsulate.
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex (the kernel wants data_end to be
        // the frame's length, the rest but the interface 0).
        let ctx: Option<Vec<u8>> = ingress.map(|i| {
            [0, frame.len() as u32, 0, i, 0, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect()
        });
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = ctx.as_deref();
        let result = prog
            .test_run(opts)
            .map_err(|source| DatapathError::Program {
                program: LB_PROGRAM,
                source,
            })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }
}
