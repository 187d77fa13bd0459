//! Every map of the datapath, on one screen. Userspace (foobar-user's
//! `datapath` module) is their only writer, except the flow table, the
//! round-robin cursors and the counters, which the datapath writes.
use crate::clock::Reading;
use aya_ebpf::{
    btf_maps,
    macros::{btf_map, map},
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use foobar_common::{
    AffinityKey, Backend, Counter, Flow, FlowKey, FlowKey6, NatFlow, NatReverse, NatVip, Service,
    VipAddrKey, VipAddrKey6, VipGen, VipKey, EVENT_COUNT, FLOW_TABLE_DEFAULT, MAX_BACKENDS,
    MAX_EGRESS, MAX_VIPS, REASON_COUNT, RING_STRIDE, VIP_ADDR_BITMAP_WORDS,
};

/// (IPv4 address, VLAN) pairs that have at least one VIP -> ADDR_* flags:
/// one lookup on an 8-byte key sends all other traffic on its way (the
/// pass path) and says what to do with ports no VIP serves.
#[map]
pub static VIP_ADDRS4: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// The pass path's prefilter: a bitmap of `vip_addr_bit` over the addresses
/// of VIP_ADDRS4. A clear bit passes the packet without the hash lookup.
/// Userspace sets a bit before the first VIP_ADDRS4 key of its addresses is
/// added and clears it after the last is gone.
#[map]
pub static VIP_ADDR_BITS: Array<u64> = Array::with_max_entries(VIP_ADDR_BITMAP_WORDS, 0);

/// The reply prefilter of `dnat` VIPs: a bitmap of `vip_addr_bit` over the
/// SOURCE addresses of their backends. A packet that is no VIP's (its
/// destination is a client) is looked up as a DNAT reply only if its
/// source's bit is set. Userspace sets a bit before the VIPs whose
/// backends need it take traffic and clears it after they are gone.
#[map]
pub static DNAT_SRC_BITS: Array<u64> = Array::with_max_entries(VIP_ADDR_BITMAP_WORDS, 0);

/// (address, port, protocol) -> service. Port 0 is the every-port VIP.
#[map]
pub static VIPS: HashMap<VipKey, Service> = HashMap::with_max_entries(MAX_VIPS, 0);

/// VIP id -> its generation and VLAN (foobar_common::VipGen): a flow entry
/// made with the current generation is forwarded without the VIP lookup.
#[map]
pub static VIP_GEN: Array<VipGen> = Array::with_max_entries(MAX_VIPS, 0);

/// Backend id -> backend (address, next-hop MAC, up flag).
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Per VIP, two halves of RING_CAPACITY backend ids each; the VIP's
/// RING_STATE word says which half is live and how long it is.
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(MAX_VIPS * RING_STRIDE, 0);

/// Per VIP: `ring_state(half, len)`, written by userspace after the half.
#[map]
pub static RING_STATE: Array<u32> = Array::with_max_entries(MAX_VIPS, 0);

/// Per VIP, per CPU: the next round-robin position.
#[map]
pub static RR_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// 5-tuple -> backend of an established flow, one table for all CPUs
/// (`datapath.flow_table = "shared"`). Size set at load time; 1 entry,
/// unused, when the tables are per CPU.
#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(FLOW_TABLE_DEFAULT, 0);

/// The per-CPU flow tables (`datapath.flow_table = "per-cpu"`): slot N
/// holds CPU N's own LRU table (5-tuple -> flow, as FLOWS), created and
/// sized by userspace; no CPU takes another's lock. The outer array's size
/// is set at load time (the possible CPUs; 1 when the table is shared).
/// A BTF map definition: aya's legacy `#[map]` has no map-in-map. The
/// inner definition is only the template the kernel checks the inner
/// tables against (type, key, value, flags; not the size).
#[btf_map]
pub static FLOWS_PER_CPU: btf_maps::ArrayOfMaps<btf_maps::LruHashMap<FlowKey, Flow, 1>, 1> =
    btf_maps::ArrayOfMaps::new();

/// (VIP, client address) -> the backend of the client's latest new
/// connection, for VIPs with source affinity. Size set at load time
/// (`affinity_table_size`; 1 entry when no VIP uses persistence).
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, Flow> =
    LruHashMap::with_max_entries(FLOW_TABLE_DEFAULT, 0);

#[map]
pub static VIP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per backend id: flows scheduled to it (entries the flow table got: new
/// connections, and flows rescheduled mid-stream).
#[map]
pub static BACKEND_NEW_FLOWS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per reason (foobar_common::Reason): every packet lands in exactly one.
#[map]
pub static REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Per event (foobar_common::Event): counted besides the packet's reason.
#[map]
pub static EVENTS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(EVENT_COUNT, 0);

/// Per CPU: the clock's latest reading (clock.rs).
#[map]
pub static CLOCK: PerCpuArray<Reading> = PerCpuArray::with_max_entries(1, 0);

/// VIP id -> NAT settings (SNAT address, port range, timeouts); zero for a
/// VIP that does not use NAT.
#[map]
pub static NAT_VIPS: Array<NatVip> = Array::with_max_entries(MAX_VIPS, 0);

/// Backend id -> the backend's port for NAT (network order; 0: the port the
/// client asked for).
#[map]
pub static NAT_BACKEND_PORTS: Array<u16> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Client 5-tuple -> NAT state (SNAT port, backend address and port,
/// client MAC, lifetime). An LRU, sized as FLOWS at load time.
#[map]
pub static NAT_FLOWS: LruHashMap<FlowKey, NatFlow> =
    LruHashMap::with_max_entries(FLOW_TABLE_DEFAULT, 0);

/// A backend's reply 5-tuple (backend -> SNAT address and port) -> the
/// client flow. A plain hash, not an LRU: an entry is never evicted under
/// a live flow (its port would be handed out twice); stale entries are
/// reclaimed by the allocation that probes them and by replies that find
/// them. Sized as FLOWS at load time.
#[map]
pub static NAT_REVERSE: HashMap<FlowKey, NatReverse> =
    HashMap::with_max_entries(FLOW_TABLE_DEFAULT, 0);

/// Interface index -> that interface, for XDP_REDIRECT (iface.rs): the
/// interfaces the program is attached to, written by userspace at load on
/// a two-arm node (empty on a one-arm node, which only uses XDP_TX).
#[map]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(MAX_EGRESS, 0);

/// (IPv6 address, VLAN) pairs that have at least one VIP -> ADDR_* flags:
/// VIP_ADDRS4 for IPv6 (docs/IPV6.md).
#[map]
pub static VIP_ADDRS6: HashMap<VipAddrKey6, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// The IPv6 prefilter: a bitmap of `vip_addr_bit6` over the addresses of
/// VIP_ADDRS6, kept as VIP_ADDR_BITS is.
#[map]
pub static VIP_ADDR_BITS6: Array<u64> = Array::with_max_entries(VIP_ADDR_BITMAP_WORDS, 0);

/// IPv6 5-tuple -> backend of an established flow: FLOWS for IPv6, beside
/// it so the IPv4 key stays 16 bytes. Sized as FLOWS at load time.
#[map]
pub static FLOWS6: LruHashMap<FlowKey6, Flow> = LruHashMap::with_max_entries(FLOW_TABLE_DEFAULT, 0);

/// Slot 0: the IPv6 pipeline program (`foobar_ipv6`), which `foobar`
/// tail-calls for IPv6 frames. Filled by userspace at every load and not
/// pinned: each loaded program has its own.
#[map]
pub static PIPELINE6: ProgramArray = ProgramArray::with_max_entries(1, 0);
