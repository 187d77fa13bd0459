//! The `nat` mode from docs/NAT.md: NAT state per client flow, the SNAT
//! port from the documented probe order (the flow hash with the node's
//! seed xor 0x4e415450, then up to 16 consecutive ports of the range, a
//! port free when its reverse entry is absent, stale, or this flow's
//! own), the translation both ways (ICMP errors about NAT flows
//! included), and state ending on close, idle
//! timeout or a new SYN. Time is not real here: a state ends only when
//! the harness expires it (`expire`), having aged it in the datapath's
//! map too; the configured timeouts are far longer than a run.
//!
//! `dnat` (docs/DNAT.md) is the same state with the client's address and
//! port in the SNAT fields; its replies come from the backends to the
//! client (DNAT_SRC_BITS picks them out, `Model::dnat_source`).
use foobar_common::{FlowKey, Service, AF_INET, FWD_DNAT};

use super::{
    opens,
    wire::{be16, carried, checksum, sum},
    Backend, Model, Packet, Reason, Update, Verdict, PROTO_TCP, TCP_FIN, TCP_RST, XDP_DROP, XDP_TX,
};

pub const NAT_FIN_CLIENT: u16 = 1;
pub const NAT_FIN_BACKEND: u16 = 2;
pub const NAT_CLOSED: u16 = 4;
/// docs/NAT.md "Port allocation".
const PORT_PROBES: u32 = 16;
const PORT_HASH_SALT: u32 = 0x4e41_5450;

/// A NAT_FLOWS value as far as decisions go; `version` stands for the
/// nonce (unique per state made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatState {
    pub backend_id: u32,
    pub backend_gen: u32,
    pub backend_addr_be: u32,
    pub backend_port_be: u16,
    pub snat_addr_be: u32,
    pub snat_port_be: u16,
    pub client_mac: [u8; 6],
    pub flags: u16,
    /// Past its linger or idle timeout (set by `expire`).
    pub ended: bool,
    pub version: u64,
}

/// A NAT_REVERSE value: the client flow and the version of its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatRev {
    pub flow: FlowKey,
    pub version: u64,
}

/// Where a translated packet goes (network order, as the frame holds it).
struct Tuple {
    src_be: u32,
    dst_be: u32,
    sport_be: u16,
    dport_be: u16,
}

/// Flags after a packet of the state: FIN of this direction, RST, both
/// FINs close.
fn touched(flags: u16, tcp_flags: u8, fin: u16) -> u16 {
    let mut new = flags;
    if tcp_flags & TCP_FIN != 0 {
        new |= fin;
    }
    if tcp_flags & TCP_RST != 0
        || new & (NAT_FIN_CLIENT | NAT_FIN_BACKEND) == (NAT_FIN_CLIENT | NAT_FIN_BACKEND)
    {
        new |= NAT_CLOSED;
    }
    new
}

impl Model {
    /// The harness aged this flow's state past its timeout in the datapath.
    pub fn expire(&mut self, key: &FlowKey) {
        if let Some(s) = self.nat_flows.get_mut(key) {
            s.ended = true;
        }
    }

    /// The live state a reverse entry belongs to.
    pub fn reverse_live(&self, rev: &NatRev) -> Option<&NatState> {
        self.nat_flows
            .get(&rev.flow)
            .filter(|s| s.version == rev.version && !s.ended)
    }

    /// A backend's reply to a live state, translated back to the client;
    /// None (after removing a stale reverse entry) if it is not one.
    pub(super) fn nat_reply(
        &self,
        f: &[u8],
        pkt: &Packet,
        updates: &mut Vec<Update>,
    ) -> Option<(u32, Reason, Vec<u8>)> {
        let rev = self.nat_reverse.get(&pkt.key)?;
        let Some(state) = self.reverse_live(rev) else {
            updates.push(Update::NatReverseRemove(pkt.key));
            return None;
        };
        updates.push(Update::NatTouch {
            key: rev.flow,
            flags: touched(state.flags, pkt.tcp_flags, NAT_FIN_BACKEND),
            client_mac: state.client_mac,
        });
        let mut out = translate(
            f,
            pkt,
            &Tuple {
                src_be: rev.flow.dst_be,
                dst_be: rev.flow.src_be,
                sport_be: rev.flow.dport_be,
                dport_be: rev.flow.sport_be,
            },
        );
        out[0..6].copy_from_slice(&state.client_mac);
        out[6..12].copy_from_slice(&self.lb_mac);
        Some((XDP_TX, Reason::ForwardedReply, out))
    }

    /// An ICMP error to an SNAT address quoting a packet the LB sent to a
    /// backend (its key, turned around, is the reverse key) of a live
    /// state: to the client, from the VIP, quoting the client's packet.
    /// Nothing is updated (an error is not a packet of the flow, and a
    /// stale reverse entry is left alone).
    pub(super) fn nat_icmp_to_client(
        &self,
        f: &[u8],
        pkt: &Packet,
    ) -> Option<(u32, Reason, Vec<u8>)> {
        let rev = self.nat_reverse.get(&pkt.key)?;
        let state = self.reverse_live(rev)?;
        let c = rev.flow;
        let inner = Tuple {
            src_be: c.src_be,
            dst_be: c.dst_be,
            sport_be: c.sport_be,
            dport_be: c.dport_be,
        };
        let mut out = translate_error(f, pkt, c.dst_be, c.src_be, &inner);
        out[0..6].copy_from_slice(&state.client_mac);
        out[6..12].copy_from_slice(&self.lb_mac);
        Some((XDP_TX, Reason::ForwardedIcmpReply, out))
    }

    /// An ICMP error to a NAT VIP quoting a reply of the client flow
    /// `pkt.key` with live state whose backend still holds its id (same
    /// generation and address): to that backend, from the SNAT address,
    /// quoting the backend's reply. The backend's id and the frame.
    pub(super) fn nat_icmp_to_backend(&self, f: &[u8], pkt: &Packet) -> Option<(u32, Vec<u8>)> {
        let s = self.nat_flows.get(&pkt.key).filter(|s| !s.ended)?;
        let b = self.backend(s.backend_id);
        if b.gen != s.backend_gen || b.addr_be != s.backend_addr_be {
            return None;
        }
        let inner = Tuple {
            src_be: s.backend_addr_be,
            dst_be: s.snat_addr_be,
            sport_be: s.backend_port_be,
            dport_be: s.snat_port_be,
        };
        let mut out = translate_error(f, pkt, s.snat_addr_be, s.backend_addr_be, &inner);
        out[0..6].copy_from_slice(&b.mac);
        out[6..12].copy_from_slice(&self.lb_mac);
        Some((s.backend_id, out))
    }

    /// A client's packet to a NAT (or dnat) VIP's backend `backend_id`: its live
    /// state's port, or a new state and port; the translated frame. With
    /// `dnat`, the SNAT address and port are the client's own, so only the
    /// destination changes and a taken reply 5-tuple is "exhausted".
    pub(super) fn nat_forward(
        &self,
        f: &[u8],
        pkt: &Packet,
        service: &Service,
        backend_id: u32,
        backend: &Backend,
        updates: &mut Vec<Update>,
    ) -> Result<Vec<u8>, Verdict> {
        let bad = (XDP_DROP, Reason::BadBackend);
        let dnat = service.forward_mode == FWD_DNAT;
        let mut cfg = self.nat_vips.get(&service.vip_id).copied().ok_or(bad)?;
        let key = pkt.key;
        if dnat {
            // docs/DNAT.md: settings with timeouts; the client's own address
            // and port stand for the SNAT ones (a one-port range).
            if cfg.tcp_idle_s == 0 {
                return Err(bad);
            }
            let port = u16::from_be(key.sport_be);
            (cfg.snat_addr_be, cfg.port_min, cfg.port_max) = (key.src_be, port, port);
        } else if cfg.snat_addr_be == 0 {
            return Err(bad);
        }
        let backend_port_be = match self.backend_ports.get(&backend_id) {
            Some(&p) if p != 0 => p,
            _ => key.dport_be,
        };
        let client_mac: [u8; 6] = f[6..12].try_into().expect("6 bytes");
        let current = self.nat_flows.get(&key).filter(|s| {
            s.backend_id == backend_id
                && s.backend_gen == backend.gen
                && s.backend_addr_be == backend.addr_be
                && s.backend_port_be == backend_port_be
                && s.snat_addr_be == cfg.snat_addr_be
                && !(opens(pkt.tcp_flags) && s.flags & NAT_CLOSED != 0)
                && !s.ended
        });
        let port_be = match current {
            Some(s) => {
                updates.push(Update::NatTouch {
                    key,
                    flags: touched(s.flags, pkt.tcp_flags, NAT_FIN_CLIENT),
                    client_mac,
                });
                s.snat_port_be
            }
            None => {
                let exhausted = (XDP_DROP, Reason::NatPortsExhausted);
                let mut reverse_key = FlowKey {
                    src_be: backend.addr_be,
                    dst_be: cfg.snat_addr_be,
                    sport_be: backend_port_be,
                    dport_be: 0,
                    proto: key.proto,
                    family: AF_INET,
                    _pad: [0; 2],
                };
                if cfg.port_max < cfg.port_min {
                    return Err(exhausted);
                }
                let range = u32::from(cfg.port_max - cfg.port_min) + 1;
                let hash = foobar_common::flow_hash(&key, self.hash_seed ^ PORT_HASH_SALT);
                let free = (0..PORT_PROBES)
                    .map(|i| (u32::from(cfg.port_min) + hash.wrapping_add(i) % range) as u16)
                    .find(|&port| {
                        reverse_key.dport_be = port.to_be();
                        match self.nat_reverse.get(&reverse_key) {
                            None => true,
                            Some(old) => old.flow == key || self.reverse_live(old).is_none(),
                        }
                    })
                    .ok_or(exhausted)?;
                reverse_key.dport_be = free.to_be();
                updates.push(Update::NatNew {
                    key,
                    state: NatState {
                        backend_id,
                        backend_gen: backend.gen,
                        backend_addr_be: backend.addr_be,
                        backend_port_be,
                        snat_addr_be: cfg.snat_addr_be,
                        snat_port_be: free.to_be(),
                        client_mac,
                        flags: touched(0, pkt.tcp_flags, NAT_FIN_CLIENT),
                        ended: false,
                        version: self.next_nat_version,
                    },
                    reverse_key,
                });
                free.to_be()
            }
        };
        let mut out = translate(
            f,
            pkt,
            &Tuple {
                src_be: cfg.snat_addr_be,
                dst_be: backend.addr_be,
                sport_be: port_be,
                dport_be: backend_port_be,
            },
        );
        out[0..6].copy_from_slice(&backend.mac);
        out[6..12].copy_from_slice(&self.lb_mac);
        Ok(out)
    }
}

/// The frame with new addresses and ports and checksums computed from
/// scratch: the IPv4 header's over the header, TCP's over the IP payload
/// and UDP's over its length, each with its pseudo-header; a UDP checksum
/// of 0 (none) stays 0, and a computed 0 is sent as 0xffff.
fn translate(f: &[u8], pkt: &Packet, to: &Tuple) -> Vec<u8> {
    let (l3, l4) = (pkt.l3, pkt.l4);
    let ihl = pkt.ip.ihl;
    let tcp = pkt.key.proto == PROTO_TCP;
    let seg_end = if tcp {
        l3 + pkt.ip.total_len
    } else {
        l4 + usize::from(be16(f, l4 + 4))
    };
    let check_at = if tcp { 16 } else { 6 };
    let l4_sum = |frame: &[u8]| {
        let mut pseudo = frame[l3 + 12..l3 + 20].to_vec();
        pseudo.extend_from_slice(&[0, pkt.key.proto]);
        pseudo.extend_from_slice(&((seg_end - l4) as u16).to_be_bytes());
        match checksum(&frame[l4..seg_end], check_at, sum(&pseudo)) {
            // UDP sends a computed 0 as 0xffff (0 means "none").
            0 if !tcp => 0xffff,
            c => c,
        }
    };
    let ip_in = checksum(&f[l3..l3 + ihl], 10, 0);
    let l4_in = l4_sum(f);
    let mut out = f.to_vec();
    out[l3 + 12..l3 + 16].copy_from_slice(&to.src_be.to_ne_bytes());
    out[l3 + 16..l3 + 20].copy_from_slice(&to.dst_be.to_ne_bytes());
    out[l4..l4 + 2].copy_from_slice(&to.sport_be.to_ne_bytes());
    out[l4 + 2..l4 + 4].copy_from_slice(&to.dport_be.to_ne_bytes());
    let ip = carried(be16(f, l3 + 10), ip_in, checksum(&out[l3..l3 + ihl], 10, 0));
    out[l3 + 10..l3 + 12].copy_from_slice(&ip.to_be_bytes());
    let claimed = be16(f, l4 + check_at);
    let l4c = if !tcp && claimed == 0 {
        0
    } else {
        match carried(claimed, l4_in, l4_sum(&out)) {
            0 if !tcp => 0xffff,
            c => c,
        }
    };
    out[l4 + check_at..l4 + check_at + 2].copy_from_slice(&l4c.to_be_bytes());
    out
}

/// An ICMP error with new outer addresses (`src_be`, `dst_be`) and its
/// quoted packet's addresses and ports set to `inner`; every checksum
/// computed from scratch over the bytes it covers that the frame holds
/// (`carried` keeps a wrong one as wrong): the outer IPv4 header's, the
/// quoted IPv4 header's, the quoted TCP/UDP checksum if it lies inside the
/// outer packet (its pseudo-header from the quoted addresses; a quoted
/// segment is usually cut short, and `carried` needs only the difference
/// the change makes), and the ICMP message's (type to the packet's end).
fn translate_error(f: &[u8], pkt: &Packet, src_be: u32, dst_be: u32, inner: &Tuple) -> Vec<u8> {
    let (l3, l4) = (pkt.l3, pkt.l4);
    let ihl = pkt.ip.ihl;
    let end = l3 + pkt.ip.total_len;
    let q3 = l4 + 8;
    let qihl = usize::from(f[q3] & 0x0f) * 4;
    let q4 = q3 + qihl;
    let tcp = pkt.key.proto == PROTO_TCP;
    let check_at = if tcp { 16 } else { 6 };
    let quoted_check = q4 + check_at + 2 <= end;
    let seg_sum = |frame: &[u8]| {
        let mut pseudo = frame[q3 + 12..q3 + 20].to_vec();
        pseudo.extend_from_slice(&[0, pkt.key.proto]);
        pseudo.extend_from_slice(&((end - q4) as u16).to_be_bytes());
        checksum(&frame[q4..end], check_at, sum(&pseudo))
    };
    let ip_in = checksum(&f[l3..l3 + ihl], 10, 0);
    let qip_in = checksum(&f[q3..q3 + qihl], 10, 0);
    let seg_in = quoted_check.then(|| seg_sum(f));
    let icmp_in = checksum(&f[l4..end], 2, 0);

    let mut out = f.to_vec();
    out[l3 + 12..l3 + 16].copy_from_slice(&src_be.to_ne_bytes());
    out[l3 + 16..l3 + 20].copy_from_slice(&dst_be.to_ne_bytes());
    let ip = carried(be16(f, l3 + 10), ip_in, checksum(&out[l3..l3 + ihl], 10, 0));
    out[l3 + 10..l3 + 12].copy_from_slice(&ip.to_be_bytes());

    out[q3 + 12..q3 + 16].copy_from_slice(&inner.src_be.to_ne_bytes());
    out[q3 + 16..q3 + 20].copy_from_slice(&inner.dst_be.to_ne_bytes());
    out[q4..q4 + 2].copy_from_slice(&inner.sport_be.to_ne_bytes());
    out[q4 + 2..q4 + 4].copy_from_slice(&inner.dport_be.to_ne_bytes());
    let qip = carried(
        be16(f, q3 + 10),
        qip_in,
        checksum(&out[q3..q3 + qihl], 10, 0),
    );
    out[q3 + 10..q3 + 12].copy_from_slice(&qip.to_be_bytes());
    if let Some(seg_in) = seg_in {
        let claimed = be16(f, q4 + check_at);
        let c = if !tcp && claimed == 0 {
            0
        } else {
            match carried(claimed, seg_in, seg_sum(&out)) {
                0 if !tcp => 0xffff,
                c => c,
            }
        };
        out[q4 + check_at..q4 + check_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let icmp = carried(be16(f, l4 + 2), icmp_in, checksum(&out[l4..end], 2, 0));
    out[l4 + 2..l4 + 4].copy_from_slice(&icmp.to_be_bytes());
    out
}
