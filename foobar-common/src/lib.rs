//! Types and constants shared by the XDP datapath and the userspace control
//! plane. Everything here is `#[repr(C)]` with explicit padding and a size
//! assertion, so a layout change fails the build instead of the kernel.
//! Multi-byte fields that hold packet data are in network byte order and are
//! named `*_be`.
#![cfg_attr(not(test), no_std)]

use core::mem::size_of;

/// Most VIPs one datapath holds (the VIP id indexes per-VIP arrays).
pub const MAX_VIPS: u32 = 64;
/// Most backends one datapath holds (the backend id indexes per-backend arrays).
pub const MAX_BACKENDS: u32 = 4096;
/// Slots in one half of a VIP's ring: room for a Maglev table of the default
/// prime size. Round-robin rings use the first `len` slots.
pub const RING_CAPACITY: u32 = 65537;
/// Entries of the ring array that belong to one VIP: two halves.
pub const RING_STRIDE: u32 = 2 * RING_CAPACITY;
/// Default size of the flow table (LRU); `flow_table_size` in the config
/// overrides it at load time.
pub const FLOW_TABLE_DEFAULT: u32 = 65536;

/// Ring state word: bit 31 selects the live half, the low bits its length.
/// One 32-bit word, so userspace switches half and length in one store.
pub const RING_HALF_BIT: u32 = 1 << 31;
pub const RING_LEN_MASK: u32 = RING_HALF_BIT - 1;

#[inline(always)]
pub const fn ring_state(half: u32, len: u32) -> u32 {
    ((half & 1) << 31) | (len & RING_LEN_MASK)
}

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of the VIP map. IPv4 addresses use `addr_be[0]`, the rest is zero.
/// `port_be == 0` is a wildcard VIP that matches every port of the protocol.
/// `vlan` is the 802.1Q VLAN id the VIP is served on (0: untagged frames),
/// so a tagged frame only ever matches a VIP configured for its VLAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
    pub vlan: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<VipKey>() == 24);

/// Key of the VIP-address table: an IPv4 address that has at least one VIP,
/// on one VLAN (0: untagged).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    pub addr_be: u32,
    pub vlan: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<VipAddrKey>() == 8);

/// VIP-address flag: TCP/UDP to a port of the address that no VIP serves is
/// passed to the node's own stack. Without it (the default) such packets are
/// dropped, so services bound to 0.0.0.0 on the LB node (sshd, exporters)
/// are not exposed on every VIP address.
pub const ADDR_PASS_CLOSED_PORTS: u32 = 1;

/// VIP-address flag: the address is a NAT (SNAT) address of some VIP:
/// TCP/UDP to it is looked up in the NAT reverse table first (a backend's
/// reply). Set on the (address, VLAN) of every VIP using it.
pub const ADDR_SNAT: u32 = 2;
/// VIP-address flag: the entry exists only for ADDR_SNAT (no VIP has this
/// address): whatever is not a NAT reply passes, untouched, as pass_not_vip.
pub const ADDR_SNAT_ONLY: u32 = 4;

/// 64-bit words of the VIP-address prefilter (VIP_ADDR_BITS): 4096 bits.
pub const VIP_ADDR_BITMAP_WORDS: u32 = 64;

/// The prefilter bit of an IPv4 address (any VLAN): (word, mask) in
/// VIP_ADDR_BITS. The bit is set while any (address, VLAN) of the
/// VIP-address table hashes to it, so a clear bit proves the destination is
/// no VIP address and the packet passes after one inlined array read; a set
/// bit is confirmed in the VIP-address table. Fibonacci hashing of the
/// address as the packet holds it (`addr_be`), top 12 bits. The XDP
/// program and userspace both compile this one function.
#[inline(always)]
pub const fn vip_addr_bit(addr_be: u32) -> (u32, u64) {
    let bit = addr_be.wrapping_mul(0x9e37_79b1) >> 20;
    (bit >> 6, 1u64 << (bit & 63))
}

/// Key of the IPv6 VIP-address table (VIP_ADDRS6): an IPv6 address that
/// has at least one VIP, on one VLAN (0: untagged).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey6 {
    pub addr_be: [u32; 4],
    pub vlan: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<VipAddrKey6>() == 20);

/// The prefilter bit of an IPv6 address (VIP_ADDR_BITS6): `vip_addr_bit`
/// of the address's four words folded into one (each rotated by its own
/// amount, so addresses that differ in one word only land apart).
#[inline(always)]
pub const fn vip_addr_bit6(addr_be: &[u32; 4]) -> (u32, u64) {
    vip_addr_bit(
        addr_be[0]
            ^ addr_be[1].rotate_left(8)
            ^ addr_be[2].rotate_left(16)
            ^ addr_be[3].rotate_left(24),
    )
}

/// Value of the VIP map: what the datapath needs to serve one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index into the per-VIP arrays (ring, ring state, counters).
    pub vip_id: u32,
    pub scheduler: u8,
    pub forward_mode: u8,
    pub flags: u16,
    /// With SERVICE_AFFINITY: how long a client stays with its backend
    /// after its latest new connection.
    pub affinity_timeout_s: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Service>() == 16);

/// Source affinity: new connections of a client go to the backend its
/// previous connection got (IPVS persistence, HAProxy `balance source`).
pub const SERVICE_AFFINITY: u16 = 1;

pub const SCHED_RR: u8 = 0;
/// Consistent hashing: the ring is a Maglev table indexed by `flow_hash`.
pub const SCHED_MAGLEV: u8 = 1;
pub const FWD_DSR: u8 = 0;
/// Full NAT (docs/NAT.md): DNAT to the backend, SNAT to an LB address and a
/// port from a range; replies are translated back by the datapath.
pub const FWD_NAT: u8 = 1;
/// IPv4-in-IPv4 tunnel DSR (Katran's mode): an outer IPv4 header to the
/// backend, stripped there by `foobar decap`.
pub const FWD_IPIP: u8 = 2;
/// DNAT, IPVS-NAT style (docs/DNAT.md): the destination becomes the
/// backend's, the client's address and port are kept; the backends route
/// their replies through the LB, which translates the source back.
pub const FWD_DNAT: u8 = 3;
/// Bytes the `ipip` mode adds in front of the client's IPv4 packet.
pub const IPIP_OVERHEAD: u32 = 20;
/// Bytes the `ipip` mode adds in front of the client's IPv6 packet (an
/// outer IPv6 header, next header 41).
pub const IPIP6_OVERHEAD: u32 = 40;

/// One backend, indexed by its backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr_be: [u32; 4],
    /// Next-hop MAC of the backend (resolved by userspace).
    pub mac: [u8; 6],
    pub family: u8,
    pub flags: u8,
    /// Generation of the id's current holder: userspace gives every backend
    /// a new, never-zero generation when it takes an id. Flow and affinity
    /// entries record the generation they were made with and count only
    /// while it matches, so an id handed to another backend can never
    /// inherit the flows of the one that held it before.
    pub gen: u32,
    /// Interface index the backend is reached through (two-arm, see
    /// docs/TOPOLOGY.md): a frame for it leaves there, with XDP_TX when
    /// that is the interface it came in on, else redirected through the
    /// EGRESS devmap. 0: the interface it came in on (one-arm).
    pub egress_ifindex: u32,
}
const _: () = assert!(size_of::<Backend>() == 32);

/// The backend may take traffic. A flow whose backend lost this flag is
/// rescheduled on its next packet.
pub const BACKEND_UP: u8 = 1;
/// The backend takes new flows (up and not drained: it is in the ring).
/// Source affinity only sends new connections to such a backend.
pub const BACKEND_NEW_FLOWS: u8 = 2;

/// Key of the flow table: the packet's IPv4 5-tuple as it arrives from the
/// client. 16 bytes, not room for IPv6 addresses: the kernel hashes and
/// compares every key byte on each lookup, and a 40-byte key cost more than
/// a third of a flow-table hit. IPv6 flows will get a table of their own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 16);

/// Key of the IPv6 flow table (FLOWS6): the packet's IPv6 5-tuple as it
/// arrives from the client. A table of its own, so the IPv4 table keeps
/// its 16-byte key (see `FlowKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub src_be: [u32; 4],
    pub dst_be: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey6>() == 40);

/// Key of the source-affinity table: one client address per VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client_be: [u32; 4],
    pub vip_id: u32,
}
const _: () = assert!(size_of::<AffinityKey>() == 20);

/// Value of the flow table (and of the source-affinity table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    /// The VIP id (below MAX_VIPS) the entry was made under.
    pub vip_id: u16,
    /// FLOW_CLOSED once the client sent FIN or RST.
    pub flags: u16,
    /// CLOCK_MONOTONIC_COARSE (bpf_ktime_get_coarse_ns) of the flow's latest
    /// packet: lets userspace tell live flows of a removed backend from idle
    /// ones.
    pub last_seen_ns: u64,
    /// `Backend::gen` of the backend when the entry was made.
    pub backend_gen: u32,
    /// `VipGen::gen` of the VIP (`vip_id`) when the entry was made or last
    /// confirmed: while it still matches, a packet of the flow is
    /// forwarded without looking the VIP up (the flow-first hit path).
    /// 0 never matches.
    pub vip_gen: u32,
}
const _: () = assert!(size_of::<Flow>() == 24);
const _: () = assert!(MAX_VIPS <= u16::MAX as u32);

/// Value of the per-VIP generation array (VIP_GEN, indexed by VIP id).
/// Userspace gives a VIP id a new, never-zero generation whenever what a
/// packet's VIP lookup would find for a flow of that id may have changed:
/// the VIP removed, its id taken by another VIP, its service changed, or
/// (for a port-0 VIP) an exact-port VIP on its address, protocol and VLAN
/// added or removed. A flow entry whose `vip_gen` equals its VIP's
/// generation, seen on the VIP's VLAN, is forwarded without the VIP
/// lookup; any other entry takes the full path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipGen {
    pub gen: u32,
    /// The 802.1Q VLAN id the VIP is served on (the flow key has no VLAN).
    pub vlan: u16,
    /// The VIP's `Service::forward_mode`, for the flow-first path, which
    /// forwards without the VIP lookup. A mode change is a service change,
    /// so the id gets a new generation (and this field) with it.
    pub forward_mode: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<VipGen>() == 8);

/// The client closed the flow (FIN or RST seen): it no longer counts as an
/// active connection, and a new SYN on its 5-tuple is a new flow.
pub const FLOW_CLOSED: u16 = 1;

/// Per-VIP NAT settings (NAT_VIPS, indexed by VIP id); all zero for a VIP
/// that does not use NAT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatVip {
    /// The source address of translated packets (an address of the LB's
    /// interface), network order. 0: not a NAT VIP.
    pub snat_addr_be: u32,
    /// The SNAT port range, inclusive, host order.
    pub port_min: u16,
    pub port_max: u16,
    /// Idle timeouts of NAT state: TCP, and UDP.
    pub tcp_idle_s: u32,
    pub udp_idle_s: u32,
    /// How long NAT state of a closed TCP flow (RST, or FIN both ways) lives on.
    pub linger_s: u32,
}
const _: () = assert!(size_of::<NatVip>() == 20);

/// NAT state of one client flow (NAT_FLOWS, keyed by the client's FlowKey).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatFlow {
    pub backend_id: u32,
    pub backend_gen: u32,
    /// Random, never 0: the NAT_REVERSE entry of this state carries it, so
    /// a reverse entry left from an earlier state of the same flow (or of a
    /// flow whose state was evicted) never matches.
    pub nonce: u32,
    pub snat_addr_be: u32,
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub snat_port_be: u16,
    /// Source MAC of the client's latest packet: the next hop of replies.
    pub client_mac: [u8; 6],
    pub vip_id: u16,
    /// NAT_FIN_CLIENT, NAT_FIN_BACKEND, NAT_CLOSED.
    pub flags: u16,
    pub _pad: u16,
    /// Idle timeout of this flow (TCP or UDP of its VIP), and its linger.
    pub idle_s: u32,
    pub linger_s: u32,
    /// Interface index the client's latest packet came in on: replies
    /// leave there (redirected when they came in on another interface).
    pub client_ifindex: u32,
    /// CLOCK_MONOTONIC_COARSE of the latest packet either way (kept within
    /// a second), and of the close (NAT_CLOSED).
    pub last_seen_ns: u64,
    pub closed_ns: u64,
}
const _: () = assert!(size_of::<NatFlow>() == 64);

pub const NAT_FIN_CLIENT: u16 = 1;
pub const NAT_FIN_BACKEND: u16 = 2;
/// RST either way, or FIN both ways: the state ends `linger_s` after `closed_ns`.
pub const NAT_CLOSED: u16 = 4;

/// Value of the NAT reverse table (NAT_REVERSE), keyed by the FlowKey of a
/// backend's reply (backend -> SNAT address and port): the client flow it
/// belongs to and that flow's state's nonce. It counts only while
/// NAT_FLOWS[flow] exists, holds the same nonce and has not expired, so a
/// reverse entry never outlives its forward state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReverse {
    pub flow: FlowKey,
    pub nonce: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<NatReverse>() == 24);

/// Probes of the NAT port allocation: a new flow tries at most this many
/// ports of its range (from a hash of its 5-tuple) before it is dropped as
/// `drop_nat_ports_exhausted`.
pub const NAT_PORT_PROBES: u32 = 16;

/// Entries of the EGRESS devmap (interface index -> interface): the
/// interfaces the load balancer is attached to (client side and backend
/// side in a two-arm node).
pub const MAX_EGRESS: u32 = 8;

/// Version of what the pinned maps hold and mean (see `LAYOUT_SIZES`).
/// Bump it by hand whenever a map's key or value changes meaning, a map is
/// added, removed or renamed, a map's size constant changes (a new
/// `Reason` grows REASONS, which holds REASON_COUNT counters: v10; two-arm's egress fields: v11; IPv6 maps: v12), or a
/// flag changes value: a daemon refuses to adopt maps pinned by a binary
/// of another layout.
pub const LAYOUT_VERSION: u32 = 12;

/// Sizes of the shared types the pinned maps hold, in the order FlowKey,
/// Flow, Backend, VipKey, Service, AffinityKey, VipAddrKey, Counter, VipGen,
/// NatVip, NatFlow, NatReverse, FlowKey6, VipAddrKey6: with
/// `LAYOUT_VERSION`, the layout a pinned instance is tagged with, so a size
/// change nobody remembered to version still refuses.
pub const LAYOUT_SIZES: [usize; 14] = [
    size_of::<FlowKey>(),
    size_of::<Flow>(),
    size_of::<Backend>(),
    size_of::<VipKey>(),
    size_of::<Service>(),
    size_of::<AffinityKey>(),
    size_of::<VipAddrKey>(),
    size_of::<Counter>(),
    size_of::<VipGen>(),
    size_of::<NatVip>(),
    size_of::<NatFlow>(),
    size_of::<NatReverse>(),
    size_of::<FlowKey6>(),
    size_of::<VipAddrKey6>(),
];

/// Packets and bytes (per CPU in the maps; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// Why the datapath returned what it returned. Every packet is counted under
/// exactly one reason, so `sum(reasons) == packets seen`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// XDP_TX: forwarded to a backend.
    Forwarded = 0,
    /// XDP_PASS: not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp = 1,
    /// XDP_PASS: IP, but no VIP matches (address, port, protocol).
    NotVip = 2,
    /// XDP_PASS: IPv6 that is not for an IPv6 VIP address (the node's own
    /// IPv6 traffic), or that the datapath leaves to the kernel: more
    /// extension headers than it walks, a routing header with segments
    /// left, a jumbogram (docs/IPV6.md).
    Ipv6 = 3,
    /// XDP_PASS: neither TCP nor UDP (ICMP, ICMPv6 neighbour discovery,
    /// VRRP, ...).
    OtherL4 = 4,
    /// XDP_DROP: an IPv4 fragment to a VIP address. Only the first fragment
    /// has ports, so later ones cannot be matched to a flow; passing them
    /// would let the node's own stack (which holds the VIP) answer.
    Fragment = 5,
    /// XDP_PASS: a header is truncated or claims lengths the frame does not
    /// have; the kernel drops it with its own counters.
    Malformed = 6,
    /// XDP_DROP: the VIP has no backend that may take traffic.
    NoBackend = 7,
    /// XDP_DROP: a ring slot names a backend the backend table lacks
    /// (a control-plane bug; counted so it cannot hide).
    BadBackend = 8,
    /// XDP_PASS: the destination MAC is not the interface's (broadcast,
    /// multicast, or another host's frame seen in promiscuous mode).
    NotForUs = 9,
    /// XDP_DROP: TCP/UDP to a VIP address on a port no VIP serves (see
    /// ADDR_PASS_CLOSED_PORTS).
    ClosedPort = 10,
    /// XDP_TX: an ICMP error (destination unreachable, time exceeded) about
    /// a VIP flow, sent to the backend that owns the embedded flow.
    ForwardedIcmp = 11,
    /// XDP_TX: an `ipip` VIP's packet with DF set (any IPv6 packet) would
    /// exceed the MTU once encapsulated; the client got ICMP "fragmentation
    /// needed" (ICMPv6 "packet too big") instead.
    IcmpFragNeededSent = 12,
    /// XDP_DROP: an `ipip` VIP's packet without DF would exceed the MTU once
    /// encapsulated (XDP does not fragment).
    TooBig = 13,
    /// XDP_DROP: a new NAT flow found no free SNAT port in its probes
    /// (NAT_PORT_PROBES) or no room for its state.
    NatPortsExhausted = 14,
    /// XDP_TX: a backend's reply to a NAT flow, translated back to the client.
    ForwardedReply = 15,
    /// XDP_DROP: an ICMP error to a NAT VIP about a flow without live NAT
    /// state (or whose backend is gone): there is nothing to translate its
    /// quoted header to.
    NatIcmp = 16,
    /// XDP_TX: an ICMP error to an SNAT address about a packet the LB sent
    /// to a backend, translated (outer and quoted headers) and sent to the
    /// NAT flow's client. Its counterpart towards the backend counts as
    /// `ForwardedIcmp`.
    ForwardedIcmpReply = 17,
}

pub const REASON_COUNT: u32 = 18;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Forwarded,
        Reason::NotIp,
        Reason::NotVip,
        Reason::Ipv6,
        Reason::OtherL4,
        Reason::Fragment,
        Reason::Malformed,
        Reason::NoBackend,
        Reason::BadBackend,
        Reason::NotForUs,
        Reason::ClosedPort,
        Reason::ForwardedIcmp,
        Reason::IcmpFragNeededSent,
        Reason::TooBig,
        Reason::NatPortsExhausted,
        Reason::ForwardedReply,
        Reason::NatIcmp,
        Reason::ForwardedIcmpReply,
    ];

    /// Stable name used in logs, `foobar stats` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::NotIp => "pass_not_ip",
            Reason::NotVip => "pass_not_vip",
            Reason::Ipv6 => "pass_ipv6",
            Reason::OtherL4 => "pass_other_l4",
            Reason::Fragment => "drop_fragment",
            Reason::Malformed => "pass_malformed",
            Reason::NoBackend => "drop_no_backend",
            Reason::BadBackend => "drop_bad_backend",
            Reason::NotForUs => "pass_not_for_us",
            Reason::ClosedPort => "drop_closed_port",
            Reason::ForwardedIcmp => "forwarded_icmp",
            Reason::IcmpFragNeededSent => "icmp_frag_needed_sent",
            Reason::TooBig => "drop_too_big",
            Reason::NatPortsExhausted => "drop_nat_ports_exhausted",
            Reason::ForwardedReply => "forwarded_reply",
            Reason::NatIcmp => "drop_nat_icmp",
            Reason::ForwardedIcmpReply => "forwarded_icmp_reply",
        }
    }
}

/// Things worth counting that are not the verdict of a packet (each packet
/// still has exactly one `Reason`); indexes of the EVENTS counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A TCP segment without SYN found no usable flow entry and was
    /// scheduled anew: its flow was evicted from a full table, the table
    /// was lost, or it is a stray. Under round-robin such a flow usually
    /// lands on another backend, which resets it.
    MidflowMiss = 0,
}

pub const EVENT_COUNT: u32 = 1;

impl Event {
    pub const ALL: [Event; EVENT_COUNT as usize] = [Event::MidflowMiss];

    pub const fn name(self) -> &'static str {
        match self {
            Event::MidflowMiss => "midflow_miss",
        }
    }
}

/// The flow hash of consistent hashing: MurmurHash3 (x86, 32-bit) over ten
/// little-endian 32-bit words — `src_be` and three zero words, `dst_be`
/// and three zero words (the layout of the 40-byte key this hash was first
/// defined on, so Maglev choices do not change with the key's layout),
/// `sport_be | dport_be << 16` and `proto` — with `seed`
/// (`datapath.hash_seed`, the same on every LB node).
/// The XDP program and userspace both compile this one function, so they
/// cannot disagree.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    murmur3_words(
        [
            key.src_be,
            0,
            0,
            0,
            key.dst_be,
            0,
            0,
            0,
            u32::from(key.sport_be) | (u32::from(key.dport_be) << 16),
            u32::from(key.proto),
        ],
        seed,
    )
}

/// The flow hash of an IPv6 flow: `flow_hash`'s ten words with the four
/// words of each address in place of the IPv4 address and its zeros.
#[inline(always)]
pub fn flow_hash6(key: &FlowKey6, seed: u32) -> u32 {
    let (s, d) = (key.src_be, key.dst_be);
    murmur3_words(
        [
            s[0],
            s[1],
            s[2],
            s[3],
            d[0],
            d[1],
            d[2],
            d[3],
            u32::from(key.sport_be) | (u32::from(key.dport_be) << 16),
            u32::from(key.proto),
        ],
        seed,
    )
}

/// MurmurHash3 (x86, 32-bit) of ten little-endian words.
#[inline(always)]
fn murmur3_words(words: [u32; 10], seed: u32) -> u32 {
    let mut h = seed;
    // A constant bound: the verifier sees a fixed, unrollable loop.
    let mut i = 0;
    while i < 10 {
        let mut k = words[i].wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    h ^= 40; // length in bytes
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with no implicit padding (the
    // size assertions above pin their layout) and valid for any bit pattern.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipAddrKey {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for VipGen {}
    unsafe impl aya::Pod for NatVip {}
    unsafe impl aya::Pod for NatFlow {}
    unsafe impl aya::Pod for NatReverse {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for VipAddrKey6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MurmurHash3_x86_32 reference vectors (from the public SMHasher
    /// suite): key = 40 bytes of the words, seed as given.
    fn murmur3_bytes(data: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        for chunk in data.chunks(4) {
            let mut k = u32::from_le_bytes(chunk.try_into().unwrap());
            k = k
                .wrapping_mul(0xcc9e_2d51)
                .rotate_left(15)
                .wrapping_mul(0x1b87_3593);
            h ^= k;
            h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        }
        h ^= data.len() as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    #[test]
    fn flow_hash_is_murmur3_over_the_documented_words() {
        let key = FlowKey {
            src_be: u32::from_ne_bytes([198, 51, 100, 7]),
            dst_be: u32::from_ne_bytes([192, 0, 2, 10]),
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            family: AF_INET,
            _pad: [0; 2],
        };
        let mut bytes = Vec::new();
        for w in [key.src_be, 0, 0, 0, key.dst_be, 0, 0, 0] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        bytes.extend_from_slice(
            &(u32::from(key.sport_be) | u32::from(key.dport_be) << 16).to_le_bytes(),
        );
        bytes.extend_from_slice(&u32::from(key.proto).to_le_bytes());
        for seed in [0, 1, 0xdead_beef] {
            assert_eq!(flow_hash(&key, seed), murmur3_bytes(&bytes, seed));
        }
        let key6 = FlowKey6 {
            src_be: [1, 2, 3, 4],
            dst_be: [5, 6, 7, 8],
            sport_be: key.sport_be,
            dport_be: key.dport_be,
            proto: IPPROTO_TCP,
            family: AF_INET6,
            _pad: [0; 2],
        };
        let mut bytes6 = Vec::new();
        for w in [1u32, 2, 3, 4, 5, 6, 7, 8] {
            bytes6.extend_from_slice(&w.to_le_bytes());
        }
        bytes6.extend_from_slice(&bytes[32..]);
        assert_eq!(flow_hash6(&key6, 9), murmur3_bytes(&bytes6, 9));
        // Known MurmurHash3_x86_32 values keep the byte-level reference honest.
        assert_eq!(murmur3_bytes(b"", 0), 0);
        assert_eq!(murmur3_bytes(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_bytes(&[0, 0, 0, 0], 0), 0x2362_f9de);
    }
}
