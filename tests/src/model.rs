//! A reference model of the datapath's forwarding decision, written from
//! docs/DATAPATH.md (the spec), not from the XDP code: given what the maps
//! hold and a frame, it says which XDP action and reason the datapath must
//! return, the frame it must leave, and what it must remember. It shares no
//! parsing code with the datapath (frames are read here by plain byte
//! slicing); only `flow_hash`, the documented hash of consistent hashing,
//! comes from foobar-common. It never touches BPF. Every forwarding mode
//! is modelled: `dsr` here, `ipip` (encapsulation, the MTU check and the
//! ICMP it sends) in `ipip`, `nat` (state, port choice, both directions of
//! translation) in `nat`; every output checksum is computed from scratch
//! (`wire`), never updated incrementally as the datapath does.
use std::collections::HashMap;

use foobar::plan::Plan;
use foobar_common::{
    flow_hash, vip_addr_bit, AffinityKey, FlowKey, NatVip, Service, AF_INET, BACKEND_NEW_FLOWS,
    BACKEND_UP, FWD_DNAT, FWD_IPIP, FWD_NAT, SCHED_MAGLEV, SERVICE_AFFINITY,
};

mod ipip;
pub mod nat;
mod wire;

pub use nat::{NatRev, NatState};
use wire::{be16, ne16, ne32};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// An ICMP header: type, code, checksum and 4 bytes of "rest of header";
/// the erring datagram's IPv4 header follows it.
const ICMP_HDR_LEN: usize = 8;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// VIP address flags (VIP_ADDRS4): TCP/UDP to a port no service uses goes
/// to the kernel instead of being dropped; the address is an SNAT address
/// (replies are looked up first); it is only that.
pub const ADDR_PASS_CLOSED_PORTS: u32 = 1;
pub const ADDR_SNAT: u32 = 2;
pub const ADDR_SNAT_ONLY: u32 = 4;

/// The spec's reasons, numbered as the REASONS counter array is indexed.
/// The model keeps its own list so that a renumbering on either side shows
/// up as a difference instead of being followed silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Forwarded = 0,
    NotIp = 1,
    NotVip = 2,
    Ipv6 = 3,
    OtherL4 = 4,
    Fragment = 5,
    Malformed = 6,
    NoBackend = 7,
    BadBackend = 8,
    NotForUs = 9,
    ClosedPort = 10,
    ForwardedIcmp = 11,
    IcmpFragNeededSent = 12,
    TooBig = 13,
    NatPortsExhausted = 14,
    ForwardedReply = 15,
    NatIcmp = 16,
    ForwardedIcmpReply = 17,
}

impl Reason {
    pub const ALL: [Reason; 18] = [
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

    pub fn index(self) -> usize {
        self as usize
    }

    /// The stable name `foobar stats` prints.
    pub fn name(self) -> &'static str {
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

/// A VIP map key as the model sees it (IPv4 only: the datapath serves no
/// IPv6 VIP). `port_be == 0` is the every-port VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub vlan: u16,
}

/// A BACKENDS entry as far as forwarding is concerned. An id the plan
/// does not hold reads as all zeroes (the array's cleared entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr_be: u32,
    pub mac: [u8; 6],
    pub flags: u8,
    pub gen: u32,
}

/// A FLOWS or AFFINITY value. Last-seen times are not modelled: the
/// harness keeps affinity timeouts far longer than a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub backend_id: u32,
    pub vip_id: u32,
    pub closed: bool,
    pub backend_gen: u32,
}

/// The `ipip` load-time settings: the outer source (address, prefix
/// length) and the interface MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpipSettings {
    pub source: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
}

impl Default for IpipSettings {
    fn default() -> Self {
        IpipSettings {
            source: std::net::Ipv4Addr::UNSPECIFIED,
            prefix_len: 32,
            mtu: 1500,
        }
    }
}

/// Everything the decision reads: the maps userspace writes (from a
/// [`Plan`]), the load-time globals, and the tables the datapath writes
/// itself, kept here as the model's own copy.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub lb_mac: [u8; 6],
    pub hash_seed: u32,
    pub ipip: IpipSettings,
    pub vips: HashMap<VipKey, Service>,
    /// VIP_ADDRS4: (address, VLAN) -> ADDR_* flags.
    pub addrs: HashMap<(u32, u16), u32>,
    pub backends: HashMap<u32, Backend>,
    /// Live ring of each VIP id.
    pub rings: HashMap<u32, Vec<u32>>,
    /// NAT settings by VIP id, and the NAT port of backend ids that have one.
    pub nat_vips: HashMap<u32, NatVip>,
    pub backend_ports: HashMap<u32, u16>,
    /// DNAT_SRC_BITS: the `vip_addr_bit` bitmap over the dnat backends'
    /// addresses (the datapath is loaded with the reply path whenever a
    /// plan has dnat VIPs; without any, the bitmap is empty).
    pub dnat_src_bits: HashMap<u32, u64>,
    pub flows: HashMap<FlowKey, Entry>,
    pub affinity: HashMap<AffinityKey, Entry>,
    /// NAT_FLOWS and NAT_REVERSE as the model keeps them (see `nat`).
    pub nat_flows: HashMap<FlowKey, NatState>,
    pub nat_reverse: HashMap<FlowKey, NatRev>,
    /// The version the next new NAT state gets (the model's nonce: unique,
    /// so "same nonce" is "same version").
    pub next_nat_version: u64,
    /// The round-robin cursor of each VIP id, for the one CPU the harness
    /// runs on.
    pub rr_cursor: HashMap<u32, u32>,
    /// Packets and bytes forwarded per VIP id and per backend id.
    pub vip_counters: HashMap<u32, (u64, u64)>,
    pub backend_counters: HashMap<u32, (u64, u64)>,
    /// TCP packets without SYN that had to be scheduled anew.
    pub midflow_misses: u64,
}

/// What the model remembers after a frame. A dropped or passed frame may
/// still change things (a round-robin cursor moved, a flow inserted before
/// its NAT port ran out, a stale reverse entry removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    FlowInsert(FlowKey, Entry),
    /// A valid hit; `closed` is the flow's FLOW_CLOSED after the packet.
    FlowHit {
        key: FlowKey,
        closed: bool,
    },
    AffinityInsert(AffinityKey, Entry),
    CursorAdvance {
        vip_id: u32,
        to: u32,
    },
    Counted {
        vip_id: u32,
        backend_id: u32,
    },
    MidflowMiss,
    /// NAT state made (replacing any), with its reverse entry.
    NatNew {
        key: FlowKey,
        state: NatState,
        reverse_key: FlowKey,
    },
    /// A packet of a live NAT state, either way: its flags after it, and
    /// the client's MAC (client packets refresh it).
    NatTouch {
        key: FlowKey,
        flags: u16,
        client_mac: [u8; 6],
    },
    /// A stale reverse entry met by a reply, removed.
    NatReverseRemove(FlowKey),
}

/// The model's answer for one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub reason: Reason,
    pub output: Vec<u8>,
    pub updates: Vec<Update>,
}

/// A verdict that leaves the frame as it came.
type Verdict = (u32, Reason);

/// What a decision sends: action, reason, the frame.
type Sent = (u32, Reason, Vec<u8>);

/// A TCP/UDP packet to a VIP address (or an ICMP error about a VIP flow,
/// with the embedded flow turned around as `key`), as the decision reads it.
pub(crate) struct Packet {
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp_error: bool,
    pub l3: usize,
    pub ip: Ipv4,
    pub l4: usize,
}

impl Model {
    /// The maps as `Datapath::apply(plan)` writes them, with empty
    /// flow/affinity tables and cursors at zero.
    pub fn new(plan: &Plan, lb_mac: [u8; 6], hash_seed: u32) -> Self {
        let mut m = Model {
            lb_mac,
            hash_seed,
            next_nat_version: 1,
            ..Model::default()
        };
        m.apply_plan(plan);
        m
    }

    /// The same with the `ipip` load-time settings.
    pub fn with_ipip(mut self, ipip: IpipSettings) -> Self {
        self.ipip = ipip;
        self
    }

    /// Replaces what userspace writes (VIPs, addresses, backends, rings,
    /// NAT settings) and keeps what the datapath wrote itself (flows,
    /// affinity, NAT state, cursors). This function is the only place that
    /// reads foobar-common's map layouts, so a layout change is adapted
    /// here only.
    pub fn apply_plan(&mut self, plan: &Plan) {
        // An id that leaves the maps goes back to the pool with its
        // counters zeroed (the next holder counts from zero).
        let vip_ids: Vec<u32> = plan.vips.iter().map(|v| v.service.vip_id).collect();
        self.vip_counters.retain(|id, _| vip_ids.contains(id));
        self.backend_counters
            .retain(|id, _| plan.backends.contains_key(id));
        self.vips.clear();
        self.addrs.clear();
        self.rings.clear();
        self.backends.clear();
        for v in &plan.vips {
            if v.key.family != AF_INET {
                continue;
            }
            let key = VipKey {
                addr_be: v.key.addr_be[0],
                port_be: v.key.port_be,
                proto: v.key.proto,
                vlan: plan_vlan(v),
            };
            self.vips.insert(key, v.service);
            self.rings.insert(v.service.vip_id, v.ring.clone());
        }
        for (k, &flags) in &plan.addresses {
            self.addrs.insert((k.addr_be, k.vlan), flags);
        }
        for (&id, b) in &plan.backends {
            self.backends.insert(
                id,
                Backend {
                    addr_be: b.addr_be[0],
                    mac: b.mac,
                    flags: b.flags,
                    gen: plan_gen(b),
                },
            );
        }
        self.nat_vips = plan.nat_vips.iter().map(|(&k, &v)| (k, v)).collect();
        self.backend_ports = plan.backend_ports.iter().map(|(&k, &v)| (k, v)).collect();
        self.dnat_src_bits.clear();
        for &addr_be in &plan.dnat_sources {
            let (word, mask) = vip_addr_bit(addr_be);
            *self.dnat_src_bits.entry(word).or_insert(0) |= mask;
        }
    }

    /// Whether a source may be a dnat backend (its DNAT_SRC_BITS bit).
    fn dnat_source(&self, src_be: u32) -> bool {
        let (word, mask) = vip_addr_bit(src_be);
        self.dnat_src_bits.get(&word).is_some_and(|w| w & mask != 0)
    }

    fn backend(&self, id: u32) -> Backend {
        self.backends.get(&id).copied().unwrap_or_default()
    }

    /// Runs the model on one frame and applies its updates.
    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        let outcome = self.decide(frame);
        self.apply(&outcome);
        outcome
    }

    /// Records an outcome's updates (and counters: the bytes sent) in the
    /// model's tables.
    pub fn apply(&mut self, outcome: &Outcome) {
        let sent_len = outcome.output.len() as u64;
        for u in &outcome.updates {
            match u {
                Update::FlowInsert(k, e) => {
                    self.flows.insert(*k, *e);
                }
                Update::FlowHit { key, closed } => {
                    if let Some(e) = self.flows.get_mut(key) {
                        e.closed = *closed;
                    }
                }
                Update::AffinityInsert(k, e) => {
                    self.affinity.insert(*k, *e);
                }
                Update::CursorAdvance { vip_id, to } => {
                    self.rr_cursor.insert(*vip_id, *to);
                }
                Update::Counted { vip_id, backend_id } => {
                    for (map, id) in [
                        (&mut self.vip_counters, vip_id),
                        (&mut self.backend_counters, backend_id),
                    ] {
                        let c = map.entry(*id).or_default();
                        c.0 += 1;
                        c.1 += sent_len;
                    }
                }
                Update::MidflowMiss => self.midflow_misses += 1,
                Update::NatNew {
                    key,
                    state,
                    reverse_key,
                } => {
                    self.nat_flows.insert(*key, *state);
                    self.nat_reverse.insert(
                        *reverse_key,
                        NatRev {
                            flow: *key,
                            version: state.version,
                        },
                    );
                    self.next_nat_version = self.next_nat_version.max(state.version + 1);
                }
                Update::NatTouch {
                    key,
                    flags,
                    client_mac,
                } => {
                    if let Some(s) = self.nat_flows.get_mut(key) {
                        s.flags = *flags;
                        s.client_mac = *client_mac;
                    }
                }
                Update::NatReverseRemove(key) => {
                    self.nat_reverse.remove(key);
                }
            }
        }
    }

    /// The decision for one frame, without changing the model.
    pub fn decide(&self, frame: &[u8]) -> Outcome {
        let mut updates = Vec::new();
        match self.decide_inner(frame, &mut updates) {
            Ok((action, reason, output)) => Outcome {
                action,
                reason,
                output,
                updates,
            },
            Err((action, reason)) => Outcome {
                action,
                reason,
                output: frame.to_vec(),
                updates,
            },
        }
    }

    fn decide_inner(&self, f: &[u8], updates: &mut Vec<Update>) -> Result<Sent, Verdict> {
        let pass = |r| (XDP_PASS, r);
        let drop = |r| (XDP_DROP, r);
        // 1. Ethernet.
        if f.len() < ETH_LEN {
            return Err(pass(Reason::Malformed));
        }
        // 2. Addressed to the LB?
        if f[0..6] != self.lb_mac {
            return Err(pass(Reason::NotForUs));
        }
        // 3. At most one VLAN tag.
        let mut ethertype = be16(f, 12);
        let mut l3 = ETH_LEN;
        let mut vlan = 0;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            if f.len() < l3 + 4 {
                return Err(pass(Reason::Malformed));
            }
            vlan = be16(f, l3) & 0x0fff;
            ethertype = be16(f, l3 + 2);
            l3 += 4;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return Err(pass(Reason::NotIp));
            }
        }
        // 4. IPv4 only.
        match ethertype {
            ETH_P_IP => {}
            ETH_P_IPV6 => return Err(pass(Reason::Ipv6)),
            _ => return Err(pass(Reason::NotIp)),
        }
        // 5. IPv4 header, lengths checked against the frame.
        let ip = Ipv4::read(f, l3).ok_or(pass(Reason::Malformed))?;
        // 6. A VIP (or SNAT) address on this VLAN?
        // Not one: the node's own, or (from a dnat backend) a dnat reply:
        // translated back if it is one of a live dnat state.
        let Some(&addr_flags) = self.addrs.get(&(ip.dst_be, vlan)) else {
            if self.dnat_source(ip.src_be) {
                if let Ok(pkt) = self.l4(f, l3, ip) {
                    if !pkt.icmp_error {
                        if let Some(sent) = self.nat_reply(f, &pkt, updates) {
                            return Ok(sent);
                        }
                    }
                }
            }
            return Err(pass(Reason::NotVip));
        };
        // 7-9. Fragments dropped; TCP/UDP, or the flow of an ICMP error.
        let parsed = self.l4(f, l3, ip);
        // 10. An SNAT address: a backend's reply to a live NAT state is
        // translated back; anything else to an SNAT-only address is the
        // node's.
        if addr_flags & ADDR_SNAT != 0 {
            if let Ok(pkt) = &parsed {
                let sent = if pkt.icmp_error {
                    self.nat_icmp_to_client(f, pkt)
                } else {
                    self.nat_reply(f, pkt, updates)
                };
                if let Some(sent) = sent {
                    return Ok(sent);
                }
            }
            if addr_flags & ADDR_SNAT_ONLY != 0 {
                return Err(pass(Reason::NotVip));
            }
        }
        let pkt = parsed?;
        // 11. The VIP: the exact port, then the every-port VIP.
        let Some(service) = self.service(pkt.key.dst_be, pkt.key.dport_be, pkt.key.proto, vlan)
        else {
            return Err(
                if pkt.icmp_error || addr_flags & ADDR_PASS_CLOSED_PORTS != 0 {
                    pass(Reason::NotVip)
                } else {
                    drop(Reason::ClosedPort)
                },
            );
        };
        // The embedded header of an ICMP error about a dnat flow is not
        // translated.
        if service.forward_mode == FWD_DNAT && pkt.icmp_error {
            return Err(drop(Reason::NatIcmp));
        }
        // An ICMP error about a NAT flow's reply goes to its backend,
        // translated; without live state it is dropped.
        if service.forward_mode == FWD_NAT && pkt.icmp_error {
            let (id, out) = self
                .nat_icmp_to_backend(f, &pkt)
                .ok_or(drop(Reason::NatIcmp))?;
            updates.push(Update::Counted {
                vip_id: service.vip_id,
                backend_id: id,
            });
            return Ok((XDP_TX, Reason::ForwardedIcmp, out));
        }
        // 12-13. The backend.
        let (reason, id) = if pkt.icmp_error {
            let id = match self.valid_hit(&pkt.key, &service, false) {
                Some(id) => id,
                None => self.ring_choice(&pkt.key, &service, updates)?,
            };
            (Reason::ForwardedIcmp, id)
        } else {
            (
                Reason::Forwarded,
                self.schedule_flow(&pkt.key, &service, pkt.tcp_flags, updates)?,
            )
        };
        // 14. Forward in the VIP's mode.
        let backend = self.backend(id);
        let output = match service.forward_mode {
            FWD_NAT | FWD_DNAT => self.nat_forward(f, &pkt, &service, id, &backend, updates)?,
            FWD_IPIP => match self.ipip_forward(f, &pkt, &backend)? {
                ipip::Encapsulated::Frame(out) => out,
                // The client got ICMP instead: not counted as forwarded.
                ipip::Encapsulated::FragNeeded(icmp) => {
                    return Ok((XDP_TX, Reason::IcmpFragNeededSent, icmp))
                }
            },
            _ => self.rewrite_macs(f, &backend.mac),
        };
        updates.push(Update::Counted {
            vip_id: service.vip_id,
            backend_id: id,
        });
        Ok((XDP_TX, reason, output))
    }

    /// The frame with the Ethernet addresses of a frame the LB sends to `to`.
    fn rewrite_macs(&self, f: &[u8], to: &[u8; 6]) -> Vec<u8> {
        let mut output = f.to_vec();
        output[0..6].copy_from_slice(to);
        output[6..12].copy_from_slice(&self.lb_mac);
        output
    }

    /// Steps 7-9: the packet's flow (TCP/UDP), or the flow an ICMP error
    /// is about (from the VIP to the client, turned around).
    fn l4(&self, f: &[u8], l3: usize, ip: Ipv4) -> Result<Packet, Verdict> {
        let malformed = (XDP_PASS, Reason::Malformed);
        if ip.frag & 0x3fff != 0 {
            return Err((XDP_DROP, Reason::Fragment));
        }
        let l4 = l3 + ip.ihl;
        let l4_len = ip.total_len - ip.ihl;
        let key = |src_be, dst_be, sport_be, dport_be, proto| FlowKey {
            src_be,
            dst_be,
            sport_be,
            dport_be,
            proto,
            family: AF_INET,
            _pad: [0; 2],
        };
        match ip.proto {
            PROTO_ICMP => {
                if f.len() < l4 + ICMP_HDR_LEN {
                    return Err(malformed);
                }
                if f[l4] != ICMP_DEST_UNREACH && f[l4] != ICMP_TIME_EXCEEDED {
                    return Err((XDP_PASS, Reason::OtherL4));
                }
                let inner = l4 + ICMP_HDR_LEN;
                if f.len() < inner + 20 {
                    return Err(malformed);
                }
                let ihl = usize::from(f[inner] & 0x0f) * 4;
                let proto = f[inner + 9];
                if f[inner] >> 4 != 4
                    || ihl < 20
                    || !(proto == PROTO_TCP || proto == PROTO_UDP)
                    // The quote must lie inside the ICMP message (the IP
                    // payload), not in padding after it.
                    || ICMP_HDR_LEN + ihl + 8 > l4_len
                {
                    return Err(malformed);
                }
                // The erring datagram went from the VIP to the client.
                Ok(Packet {
                    key: key(
                        ne32(f, inner + 16),
                        ne32(f, inner + 12),
                        ne16(f, inner + ihl + 2),
                        ne16(f, inner + ihl),
                        proto,
                    ),
                    tcp_flags: 0,
                    icmp_error: true,
                    l3,
                    ip,
                    l4,
                })
            }
            PROTO_TCP | PROTO_UDP => {
                let (sport_be, dport_be, tcp_flags) =
                    l4_ports(f, l4, l4_len, ip.proto).ok_or(malformed)?;
                Ok(Packet {
                    key: key(ip.src_be, ip.dst_be, sport_be, dport_be, ip.proto),
                    tcp_flags,
                    icmp_error: false,
                    l3,
                    ip,
                    l4,
                })
            }
            _ => Err((XDP_PASS, Reason::OtherL4)),
        }
    }

    /// VIP lookup: the exact port, then the every-port VIP.
    fn service(&self, addr_be: u32, port_be: u16, proto: u8, vlan: u16) -> Option<Service> {
        let key = VipKey {
            addr_be,
            port_be,
            proto,
            vlan,
        };
        self.vips
            .get(&key)
            .or_else(|| self.vips.get(&VipKey { port_be: 0, ..key }))
            .copied()
    }

    /// The backend of a flow-table hit that still counts.
    fn valid_hit(&self, key: &FlowKey, service: &Service, new_syn: bool) -> Option<u32> {
        let flow = self.flows.get(key)?;
        let b = self.backend(flow.backend_id);
        let valid = flow.vip_id == service.vip_id
            && !(new_syn && flow.closed)
            && b.gen == flow.backend_gen
            && b.flags & BACKEND_UP != 0;
        valid.then_some(flow.backend_id)
    }

    /// The flow table for TCP/UDP: a valid hit, else a new choice,
    /// remembered.
    fn schedule_flow(
        &self,
        key: &FlowKey,
        service: &Service,
        tcp_flags: u8,
        updates: &mut Vec<Update>,
    ) -> Result<u32, Verdict> {
        let closing = tcp_flags & (TCP_FIN | TCP_RST) != 0;
        let new_syn = opens(tcp_flags);
        if let Some(id) = self.valid_hit(key, service, new_syn) {
            let was_closed = self.flows[key].closed;
            updates.push(Update::FlowHit {
                key: *key,
                closed: was_closed || closing,
            });
            return Ok(id);
        }
        let id = self.pick(key, service, updates)?;
        if key.proto == PROTO_TCP && tcp_flags & TCP_SYN == 0 {
            updates.push(Update::MidflowMiss);
        }
        updates.push(Update::FlowInsert(
            *key,
            Entry {
                backend_id: id,
                vip_id: service.vip_id,
                closed: closing,
                backend_gen: self.backend(id).gen,
            },
        ));
        Ok(id)
    }

    /// Source affinity, else the ring (and remember the choice).
    fn pick(
        &self,
        key: &FlowKey,
        service: &Service,
        updates: &mut Vec<Update>,
    ) -> Result<u32, Verdict> {
        if service.flags & SERVICE_AFFINITY == 0 {
            return self.ring_choice(key, service, updates);
        }
        let akey = AffinityKey {
            client_be: [key.src_be, 0, 0, 0],
            vip_id: service.vip_id,
        };
        if let Some(a) = self.affinity.get(&akey) {
            let b = self.backend(a.backend_id);
            if b.gen == a.backend_gen && b.flags & BACKEND_NEW_FLOWS != 0 {
                return Ok(a.backend_id);
            }
        }
        let id = self.ring_choice(key, service, updates)?;
        updates.push(Update::AffinityInsert(
            akey,
            Entry {
                backend_id: id,
                vip_id: service.vip_id,
                closed: false,
                backend_gen: self.backend(id).gen,
            },
        ));
        Ok(id)
    }

    /// The ring's choice: round-robin by this CPU's cursor, Maglev by the
    /// flow hash. The cursor moves whenever the ring is not empty, even
    /// when the slot names a down backend and the packet is dropped.
    fn ring_choice(
        &self,
        key: &FlowKey,
        service: &Service,
        updates: &mut Vec<Update>,
    ) -> Result<u32, Verdict> {
        let ring = self
            .rings
            .get(&service.vip_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if ring.is_empty() {
            return Err((XDP_DROP, Reason::NoBackend));
        }
        let len = ring.len() as u32;
        let pos = if service.scheduler == SCHED_MAGLEV {
            flow_hash(key, self.hash_seed) % len
        } else {
            let pos = self.rr_cursor.get(&service.vip_id).copied().unwrap_or(0) % len;
            updates.push(Update::CursorAdvance {
                vip_id: service.vip_id,
                to: pos + 1,
            });
            pos
        };
        let id = ring[pos as usize];
        if self.backend(id).flags & BACKEND_UP == 0 {
            return Err((XDP_DROP, Reason::BadBackend));
        }
        Ok(id)
    }
}

/// A TCP SYN without ACK: a client opening a connection.
fn opens(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The VLAN of a planned VIP.
fn plan_vlan(v: &foobar::plan::PlannedVip) -> u16 {
    v.key.vlan
}

/// The generation of a backend entry.
fn plan_gen(b: &foobar_common::Backend) -> u32 {
    b.gen
}

/// The IPv4 header fields the decision reads, after step 5's checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ipv4 {
    pub ihl: usize,
    pub total_len: usize,
    pub frag: u16,
    pub proto: u8,
    pub src_be: u32,
    pub dst_be: u32,
}

impl Ipv4 {
    fn read(f: &[u8], l3: usize) -> Option<Ipv4> {
        if f.len() < l3 + 20 || f[l3] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(f[l3] & 0x0f) * 4;
        let total_len = usize::from(be16(f, l3 + 2));
        if ihl < 20 || total_len < ihl || l3 + total_len > f.len() {
            return None;
        }
        Some(Ipv4 {
            ihl,
            total_len,
            frag: be16(f, l3 + 6),
            proto: f[l3 + 9],
            src_be: ne32(f, l3 + 12),
            dst_be: ne32(f, l3 + 16),
        })
    }
}

/// Ports (as they lie in the frame) and TCP flags of a TCP or UDP header
/// whose claimed length fits the IP payload; None if malformed.
fn l4_ports(f: &[u8], l4: usize, l4_len: usize, proto: u8) -> Option<(u16, u16, u8)> {
    if proto == PROTO_TCP {
        // The datapath reads the first 14 bytes (ports .. flags) first.
        if f.len() < l4 + 14 {
            return None;
        }
        let doff = usize::from(f[l4 + 12] >> 4) * 4;
        if doff < 20 || doff > l4_len {
            return None;
        }
        Some((ne16(f, l4), ne16(f, l4 + 2), f[l4 + 13]))
    } else {
        if f.len() < l4 + 8 {
            return None;
        }
        let len = usize::from(be16(f, l4 + 4));
        if len < 8 || len > l4_len {
            return None;
        }
        Some((ne16(f, l4), ne16(f, l4 + 2), 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{Spec, L4};
    use std::net::Ipv4Addr;

    const LB: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    /// web 192.0.2.10:80/tcp rr over .11 .12; udp-any 192.0.2.20:0/udp.
    fn model() -> Model {
        let config = foobar::config::parse(
            r#"
            [[vip]]
            name = "web"
            address = "192.0.2.10"
            port = 80
            forwarding = "dsr"
            [[vip.backend]]
            address = "10.0.0.11"
            [[vip.backend]]
            address = "10.0.0.12"

            [[vip]]
            name = "udp-any"
            address = "192.0.2.20"
            port = 0
            protocol = "udp"
            forwarding = "dsr"
            [[vip.backend]]
            address = "10.0.0.21"
            "#,
        )
        .unwrap();
        let macs = [11, 12, 21]
            .into_iter()
            .map(|n| (Ipv4Addr::new(10, 0, 0, n).into(), [2, 0xbe, 0, 0, 0, n]))
            .collect();
        Model::new(
            &foobar::state::plan_of_config(&config, &macs).unwrap(),
            LB,
            0,
        )
    }

    #[test]
    fn new_flows_walk_the_ring_and_stay_on_their_backend() {
        let mut m = model();
        let a = Spec::default();
        let b = Spec {
            sport: 40001,
            ..Spec::default()
        };
        let out = m.run(&a.build());
        assert_eq!((out.action, out.reason), (XDP_TX, Reason::Forwarded));
        assert_eq!(out.output[0..6], [2, 0xbe, 0, 0, 0, 11]);
        assert_eq!(out.output[6..12], LB);
        assert_eq!(out.output[12..], a.build()[12..], "only the MACs change");
        assert_eq!(m.run(&b.build()).output[5], 12);
        assert_eq!(m.run(&a.build()).output[5], 11, "the flow table keeps it");
        assert_eq!(m.flows.len(), 2);
        assert_eq!(m.rr_cursor[&0], 2);
    }

    #[test]
    fn each_rule_gives_its_reason() {
        let mut m = model();
        let cases: Vec<(Vec<u8>, u32, Reason)> = vec![
            (
                Spec {
                    dst_mac: [0xff; 6],
                    ..Spec::default()
                }
                .build(),
                XDP_PASS,
                Reason::NotForUs,
            ),
            (
                Spec {
                    vlan: Some(100),
                    ..Spec::default()
                }
                .build(),
                XDP_PASS,
                Reason::NotVip,
            ),
            (
                Spec {
                    dport: 22,
                    ..Spec::default()
                }
                .build(),
                XDP_DROP,
                Reason::ClosedPort,
            ),
            (
                Spec {
                    more_fragments: true,
                    ..Spec::default()
                }
                .build(),
                XDP_DROP,
                Reason::Fragment,
            ),
            (
                Spec {
                    l4: L4::Icmp,
                    ..Spec::default()
                }
                .build(),
                XDP_PASS,
                Reason::OtherL4,
            ),
            (
                Spec {
                    dst: [192, 0, 2, 2],
                    ..Spec::default()
                }
                .build(),
                XDP_PASS,
                Reason::NotVip,
            ),
            (crate::frames::ipv6_tcp(), XDP_PASS, Reason::Ipv6),
            (
                Spec::default().build()[..40].to_vec(),
                XDP_PASS,
                Reason::Malformed,
            ),
        ];
        for (frame, action, reason) in cases {
            let out = m.run(&frame);
            assert_eq!((out.action, out.reason), (action, reason));
            assert_eq!(out.output, frame, "{reason:?}: untouched");
        }
        assert!(m.flows.is_empty());
    }

    /// An ICMP "fragmentation needed" about the reply of a known flow goes
    /// to that flow's backend and inserts nothing.
    #[test]
    fn icmp_errors_follow_the_embedded_flow() {
        let mut m = model();
        m.run(&Spec::default().build()); // client 198.51.100.7:40000 -> .11
        m.run(
            &Spec {
                sport: 40001,
                ..Spec::default()
            }
            .build(),
        ); // -> .12
        let mut f = m.lb_mac.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0x10, 0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0]);
        f.extend_from_slice(&[203, 0, 113, 1, 192, 0, 2, 10]);
        f.extend_from_slice(&[3, 4, 0, 0, 0, 0, 0x05, 0xdc]);
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[192, 0, 2, 10, 198, 51, 100, 7]);
        f.extend_from_slice(&[0, 80, 0x9c, 0x41, 0, 0, 0, 1]);
        let flows = m.flows.clone();
        let out = m.run(&f);
        assert_eq!((out.action, out.reason), (XDP_TX, Reason::ForwardedIcmp));
        assert_eq!(out.output[5], 12, "the flow of port 40001");
        assert_eq!(m.flows, flows, "no insert");
        f.truncate(f.len() - 1);
        assert_eq!(m.run(&f).reason, Reason::Malformed, "7 bytes of inner L4");
    }

    #[test]
    fn a_reused_id_does_not_inherit_flows_of_another_generation() {
        let mut m = model();
        m.run(&Spec::default().build());
        let id = m.flows.values().next().unwrap().backend_id;
        m.backends.get_mut(&id).unwrap().gen += 1;
        let out = m.run(&Spec::default().build());
        assert_eq!(out.output[5], 12, "rescheduled: the ring's next slot");
        assert!(out
            .updates
            .iter()
            .any(|u| matches!(u, Update::FlowInsert(..))));
    }

    /// nat-web 192.0.2.60:80 (backend 10.0.0.91:8080, SNAT 10.0.0.1,
    /// ports 20000-20001) and ipip-web 192.0.2.70:80 (10.0.0.101), outer
    /// source 172.16.0.0/24, MTU 1500.
    fn modes_model() -> Model {
        let config = foobar::config::parse(
            r#"
            [datapath]
            snat_address = "10.0.0.1"
            snat_ports = "20000-20001"
            ipip_source = "172.16.0.0/24"
            [[vip]]
            name = "nat-web"
            address = "192.0.2.60"
            port = 80
            forwarding = "nat"
            [[vip.backend]]
            address = "10.0.0.91"
            port = 8080
            [[vip]]
            name = "ipip-web"
            address = "192.0.2.70"
            port = 80
            forwarding = "ipip"
            [[vip.backend]]
            address = "10.0.0.101"
            "#,
        )
        .unwrap();
        let macs = [91, 101]
            .into_iter()
            .map(|n| (Ipv4Addr::new(10, 0, 0, n).into(), [2, 0xbe, 0, 0, 0, n]))
            .collect();
        Model::new(
            &foobar::state::plan_of_config(&config, &macs).unwrap(),
            LB,
            0,
        )
        .with_ipip(IpipSettings {
            source: Ipv4Addr::new(172, 16, 0, 0),
            prefix_len: 24,
            mtu: 1500,
        })
    }

    /// The model's dnat translation (docs/DNAT.md), both ways, read back by
    /// etherparse: only the destination changes, the backend's reply to
    /// the client's own address is found by its source and translated back
    /// to the VIP; one client port to one backend through two VIPs is the
    /// counted collision; a reply after the state aged out passes and takes
    /// its stale reverse entry with it.
    #[test]
    fn dnat_keeps_the_client_translates_replies_back_and_counts_a_collision() {
        let config = foobar::config::parse(
            r#"
            [[vip]]
            name = "dnat-web"
            address = "192.0.2.80"
            port = 80
            forwarding = "dnat"
            [[vip.backend]]
            address = "10.0.0.111"
            port = 8080
            [[vip]]
            name = "dnat-web2"
            address = "192.0.2.81"
            port = 80
            forwarding = "dnat"
            [[vip.backend]]
            address = "10.0.0.111"
            port = 8080
            "#,
        )
        .unwrap();
        let macs = [(Ipv4Addr::new(10, 0, 0, 111).into(), [2, 0xbe, 0, 0, 0, 111])]
            .into_iter()
            .collect();
        let mut m = Model::new(
            &foobar::state::plan_of_config(&config, &macs).unwrap(),
            LB,
            0,
        );
        let client = Spec {
            dst: [192, 0, 2, 80],
            sport: 40000,
            ..Spec::default()
        };
        let out = m.run(&client.build());
        assert_eq!((out.action, out.reason), (XDP_TX, Reason::Forwarded));
        let forwarded = Spec {
            dst_mac: [2, 0xbe, 0, 0, 0, 111],
            src_mac: LB,
            dst: [10, 0, 0, 111],
            dport: 8080,
            ..client.clone()
        }
        .build();
        assert_eq!(out.output, forwarded, "the client's address and port kept");
        let reply = Spec {
            src_mac: [2, 0xbe, 0, 0, 0, 111],
            src: [10, 0, 0, 111],
            dst: Spec::default().src,
            sport: 8080,
            dport: 40000,
            ack: true,
            ..Spec::default()
        };
        let back = m.run(&reply.build());
        assert_eq!(back.reason, Reason::ForwardedReply);
        let want = Spec {
            src_mac: LB,
            dst_mac: Spec::default().src_mac,
            src: [192, 0, 2, 80],
            dst: Spec::default().src,
            sport: 80,
            dport: 40000,
            ack: true,
            ..Spec::default()
        }
        .build();
        assert_eq!(back.output, want, "etherparse's frame, checksums included");
        // Another host's packet to the client is no VIP's business.
        let other = Spec {
            src: [10, 0, 0, 200],
            ..reply.clone()
        };
        let passed = m.run(&other.build());
        assert_eq!((passed.action, passed.reason), (XDP_PASS, Reason::NotVip));
        let collide = Spec {
            dst: [192, 0, 2, 81],
            ..client.clone()
        };
        assert_eq!(m.run(&collide.build()).reason, Reason::NatPortsExhausted);
        for k in m.nat_flows.keys().copied().collect::<Vec<_>>() {
            m.expire(&k);
        }
        let stale = m.run(&reply.build());
        assert_eq!((stale.action, stale.reason), (XDP_PASS, Reason::NotVip));
        assert!(stale
            .updates
            .iter()
            .any(|u| matches!(u, Update::NatReverseRemove(_))));
        // The state gone, the other VIP's flow takes the 5-tuple.
        assert_eq!(m.run(&collide.build()).reason, Reason::Forwarded);
    }

    /// The model's NAT translation, both ways, read back by etherparse:
    /// addresses, ports and every checksum; the range of two ports runs out
    /// on the third client; a reply to an aged-out state is not translated.
    #[test]
    fn nat_translates_both_ways_with_valid_checksums_and_runs_out_of_ports() {
        let mut m = modes_model();
        let client = |sport| Spec {
            dst: [192, 0, 2, 60],
            sport,
            ..Spec::default()
        };
        let out = m.run(&client(40000).build());
        assert_eq!((out.action, out.reason), (XDP_TX, Reason::Forwarded));
        crate::frames::check_checksums(&out.output).unwrap();
        let want_ports = (out.output[34..36].to_vec(), &out.output[36..38]);
        assert_eq!(out.output[26..34], [10, 0, 0, 1, 10, 0, 0, 91]);
        assert_eq!(want_ports.1, 8080u16.to_be_bytes());
        let port = u16::from_be_bytes([want_ports.0[0], want_ports.0[1]]);
        assert!((20000..=20001).contains(&port));
        let reply = Spec {
            src_mac: [2, 0xbe, 0, 0, 0, 91],
            src: [10, 0, 0, 91],
            dst: [10, 0, 0, 1],
            sport: 8080,
            dport: port,
            ack: true,
            ..Spec::default()
        };
        let back = m.run(&reply.build());
        assert_eq!(back.reason, Reason::ForwardedReply);
        let want = Spec {
            src_mac: LB,
            dst_mac: Spec::default().src_mac,
            src: [192, 0, 2, 60],
            dst: Spec::default().src,
            sport: 80,
            dport: 40000,
            ack: true,
            ..Spec::default()
        }
        .build();
        assert_eq!(back.output, want, "etherparse's frame, checksums included");
        assert_eq!(m.run(&client(40001).build()).reason, Reason::Forwarded);
        assert_eq!(
            m.run(&client(40002).build()).reason,
            Reason::NatPortsExhausted
        );
        for k in m.nat_flows.keys().copied().collect::<Vec<_>>() {
            m.expire(&k);
        }
        let stale = m.run(&reply.build());
        assert_eq!(stale.reason, Reason::NotVip, "an SNAT-only address");
        assert!(stale.updates.contains(&Update::NatReverseRemove(FlowKey {
            src_be: u32::from_ne_bytes([10, 0, 0, 91]),
            dst_be: u32::from_ne_bytes([10, 0, 0, 1]),
            sport_be: 8080u16.to_be(),
            dport_be: port.to_be(),
            proto: PROTO_TCP,
            family: AF_INET,
            _pad: [0; 2],
        })));
    }

    /// ICMP errors about a NAT flow, both ways, equal the frames etherparse
    /// builds around the packets as their senders wrote them (every
    /// checksum included); after the state ended, the error to the VIP is
    /// dropped and the one to the SNAT address passed untouched.
    #[test]
    fn nat_icmp_errors_are_translated_both_ways() {
        use crate::frames::{icmp_error, quote};
        use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type};
        let mut m = modes_model();
        let router = [2, 0x99, 0, 0, 0, 1];
        let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        });
        let client = Spec {
            dst: [192, 0, 2, 60],
            ..Spec::default()
        };
        let sent = client.build();
        let forwarded = m.run(&sent).output;
        let port = u16::from_be_bytes([forwarded[34], forwarded[35]]);
        let to_snat = icmp_error(
            router,
            LB,
            [10, 0, 0, 254],
            [10, 0, 0, 1],
            kind.clone(),
            &quote(&forwarded, None),
        );
        let out = m.run(&to_snat);
        assert_eq!(
            (out.action, out.reason),
            (XDP_TX, Reason::ForwardedIcmpReply)
        );
        let want = icmp_error(
            LB,
            client.src_mac,
            client.dst,
            client.src,
            kind.clone(),
            &quote(&sent, None),
        );
        assert_eq!(out.output, want, "to the client, quoting its packet");

        let reply = |src, dst, sport, dport| {
            Spec {
                src,
                dst,
                sport,
                dport,
                ack: true,
                payload: vec![1; 1400],
                ..client.clone()
            }
            .build()
        };
        let backend_reply = reply([10, 0, 0, 91], [10, 0, 0, 1], 8080, port);
        let client_reply = reply(client.dst, client.src, 80, client.sport);
        let to_vip = icmp_error(
            router,
            LB,
            [203, 0, 113, 1],
            client.dst,
            kind.clone(),
            &quote(&client_reply, Some(8)),
        );
        let out = m.run(&to_vip);
        assert_eq!((out.action, out.reason), (XDP_TX, Reason::ForwardedIcmp));
        let want = icmp_error(
            LB,
            [2, 0xbe, 0, 0, 0, 91],
            [10, 0, 0, 1],
            [10, 0, 0, 91],
            kind,
            &quote(&backend_reply, Some(8)),
        );
        assert_eq!(out.output, want, "to the backend, quoting its reply");

        for k in m.nat_flows.keys().copied().collect::<Vec<_>>() {
            m.expire(&k);
        }
        let out = m.run(&to_vip);
        assert_eq!((out.action, out.reason), (XDP_DROP, Reason::NatIcmp));
        let out = m.run(&to_snat);
        assert_eq!((out.action, out.reason), (XDP_PASS, Reason::NotVip));
        assert_eq!(out.output, to_snat);
    }

    /// ipip: etherparse reads the outer header (protocol 4, source in the
    /// prefix, valid checksum) and the untouched inner packet; a DF packet
    /// over the MTU gets a valid ICMP frag-needed, one without DF is dropped.
    #[test]
    fn ipip_encapsulates_and_answers_too_big_packets() {
        let m = modes_model();
        let spec = Spec {
            dst: [192, 0, 2, 70],
            ..Spec::default()
        };
        let frame = spec.build();
        let out = m.decide(&frame);
        assert_eq!((out.action, out.reason), (XDP_TX, Reason::Forwarded));
        let outer = etherparse::Ipv4HeaderSlice::from_slice(&out.output[14..]).unwrap();
        let h = outer.to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(outer.protocol(), etherparse::IpNumber::IPV4);
        assert_eq!(outer.source()[..3], [172, 16, 0]);
        assert_eq!(outer.destination(), [10, 0, 0, 101]);
        assert_eq!(usize::from(outer.total_len()), frame.len() - 14 + 20);
        assert_eq!(out.output[34..], frame[14..]);

        let big = |df: bool| {
            let mut f = Spec {
                payload: vec![7; 1500],
                ..spec.clone()
            }
            .build();
            // etherparse sets DF; set or clear it, and fix the checksum.
            f[20] = if df { f[20] | 0x40 } else { f[20] & !0x40 };
            let c = wire::checksum(&f[14..34], 10, 0);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        };
        let icmp = m.decide(&big(true));
        assert_eq!(icmp.reason, Reason::IcmpFragNeededSent);
        crate::frames::check_checksums(&icmp.output).unwrap();
        assert_eq!(icmp.output[34..36], [3, 4]);
        assert_eq!(icmp.output[40..42], 1480u16.to_be_bytes());
        assert!(!icmp
            .updates
            .iter()
            .any(|u| matches!(u, Update::Counted { .. })));
        assert_eq!(m.decide(&big(false)).reason, Reason::TooBig);
    }
}
