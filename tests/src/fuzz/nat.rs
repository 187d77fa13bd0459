//! The fuzzer's NAT side: backends' replies to SNAT addresses and ports
//! (to live state, to stale reverse entries, to ports nothing holds), ICMP
//! errors about NAT flows both ways, and the clock. The datapath reads CLOCK_MONOTONIC_COARSE, which the harness
//! cannot set, so the NAT timeouts of the fuzzed plans are far longer than
//! any run and a state is ended by aging it: its entry in NAT_FLOWS gets
//! zero timeouts and timestamps (ended at any later instant, whatever the
//! clock reads), and the model marks it ended at the same point.
use std::{
    collections::HashMap as StdHashMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, MapData};
use foobar::datapath::Datapath;
use foobar_common::{FlowKey, NatFlow};

use super::{finish_ipv4, Built, Generator, LB_MAC};
use crate::model::Model;

/// NAT timeouts of every fuzzed NAT VIP: no state ends by the clock in a run.
pub const NAT_TIMEOUT_S: u32 = 1_000_000;

/// A handle of the harness's own on the datapath's NAT_FLOWS.
pub struct NatAger {
    flows: HashMap<MapData, FlowKey, NatFlow>,
}

impl NatAger {
    /// Finds NAT_FLOWS among the maps of `dp`'s program (by the program's
    /// id, from the descriptor's fdinfo: other datapaths may be loaded).
    pub fn open(dp: &mut Datapath) -> Result<Self> {
        let fd = dp.program_fd().context("the program's descriptor")?;
        let raw = fd.as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))
            .context("reading the program descriptor's fdinfo")?;
        let prog_id: u32 = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .context("no prog_id in the fdinfo")?
            .trim()
            .parse()
            .context("prog_id")?;
        let prog = aya::programs::loaded_programs()
            .filter_map(std::result::Result::ok)
            .find(|p| p.id() == prog_id)
            .context("the program is not among the loaded ones")?;
        for id in prog.map_ids()?.unwrap_or_default() {
            let data = MapData::from_id(id)?;
            if data.info()?.name_as_str() == Some("NAT_FLOWS") {
                let flows = HashMap::try_from(aya::maps::Map::HashMap(data))?;
                return Ok(NatAger { flows });
            }
        }
        bail!("the program has no NAT_FLOWS map")
    }

    /// Ends `key`'s state on both sides.
    pub fn expire(&mut self, model: &mut Model, key: &FlowKey) -> Result<()> {
        let mut state = self.flows.get(key, 0).context("a state the model holds")?;
        state.idle_s = 0;
        state.linger_s = 0;
        state.last_seen_ns = 0;
        state.closed_ns = 0;
        self.flows.insert(key, state, 0)?;
        model.expire(key);
        Ok(())
    }
}

/// The model's NAT states in a fixed order (hash maps iterate in a
/// per-process order; a seed must replay the same frames).
pub fn sorted_states(model: &Model) -> Vec<FlowKey> {
    let mut keys: Vec<FlowKey> = model.nat_flows.keys().copied().collect();
    keys.sort_by_key(order);
    keys
}

fn order(k: &FlowKey) -> (u32, u32, u16, u16, u8) {
    (k.src_be, k.dst_be, k.sport_be, k.dport_be, k.proto)
}

impl Generator<'_> {
    /// A backend's reply: to a state's SNAT port (live or not), to a stale
    /// reverse entry's, or to a port of the range nothing may hold.
    pub(super) fn nat_reply(&mut self, model: &Model) -> Built {
        let mut reverse: Vec<FlowKey> = model.nat_reverse.keys().copied().collect();
        reverse.sort_by_key(order);
        let key = if self.rng.chance(5) {
            // A dnat backend to some client (docs/DNAT.md: replies to the
            // client's own address and port), mostly without state.
            let &(src, sport) = self.rng.pick(&[
                ([10, 0, 0, 111], 8080u16),
                ([10, 0, 0, 112], 80),
                ([10, 0, 0, 113], 53),
            ]);
            let (dst, port) = super::client(self.rng.below(64) as u16);
            FlowKey {
                src_be: u32::from_ne_bytes(src),
                dst_be: u32::from_ne_bytes(dst),
                sport_be: sport.to_be(),
                dport_be: port.to_be(),
                proto: *self.rng.pick(&[6u8, 17]),
                ..FlowKey::default()
            }
        } else if reverse.is_empty() || self.rng.chance(15) {
            // Some backend of a NAT VIP to some SNAT address and port.
            let &(src, sport) = self.rng.pick(&[
                ([10, 0, 0, 91], 8080u16),
                ([10, 0, 0, 92], 80),
                ([10, 0, 0, 93], 5353),
                ([10, 0, 0, 94], 53),
            ]);
            let &(dst, lo, hi) = self.rng.pick(&[
                ([10, 0, 0, 1], 20000u16, 20031u16),
                ([192, 0, 2, 60], 30000, 30003),
            ]);
            let proto = *self.rng.pick(&[6u8, 17]);
            let port = self.rng.range(usize::from(lo) - 2, usize::from(hi) + 2) as u16;
            FlowKey {
                src_be: u32::from_ne_bytes(src),
                dst_be: u32::from_ne_bytes(dst),
                sport_be: sport.to_be(),
                dport_be: port.to_be(),
                proto,
                ..FlowKey::default()
            }
        } else {
            *self.rng.pick(&reverse)
        };
        let mac = if self.rng.chance(95) {
            LB_MAC
        } else {
            self.dst_mac()
        };
        let tags = if self.rng.chance(85) {
            Vec::new()
        } else {
            self.tags()
        };
        let mut b = self.ip_start(
            mac,
            &tags,
            key.src_be.to_ne_bytes(),
            key.dst_be.to_ne_bytes(),
            key.proto,
            0,
            &[],
        );
        // Replies come from the backends' side of the LB.
        b.bytes[6..12].copy_from_slice(&[0x02, 0xbe, 0, 0, 0, 0x99]);
        let flags = match self.rng.below(10) {
            0..=1 => 0x12, // SYN ACK
            2..=5 => 0x10, // ACK
            6 => 0x18,     // PSH ACK
            7 => 0x11,     // FIN ACK
            8 => 0x04,     // RST
            _ => self.rng.byte(),
        };
        let payload = self.payload(b.bytes.len() + 40);
        self.l4(
            &mut b,
            key.proto,
            u16::from_be(key.sport_be),
            u16::from_be(key.dport_be),
            flags,
            payload,
        );
        finish_ipv4(&mut b);
        b
    }
}

impl Generator<'_> {
    /// An ICMP error about a NAT flow (docs/NAT.md, "ICMP"): from the
    /// backends' side to the SNAT address, quoting a packet the LB sent to
    /// a backend (S:sp -> B:bp), or from the clients' side to the VIP,
    /// quoting a reply the LB sent (VIP:vp -> C:cp), of a state the model
    /// holds (live or not), with a quote cut at a random length (8 bytes
    /// after the quoted IP header and up, whole headers, a payload),
    /// quoted checksums right or not, now and then a port nothing holds.
    pub(super) fn nat_icmp(&mut self, model: &Model) -> Option<Built> {
        let states = sorted_states(model);
        if states.is_empty() {
            return None;
        }
        let key = *self.rng.pick(&states);
        let s = model.nat_flows[&key];
        let to_client = self.rng.chance(50);
        // (outer destination, quoted source, quoted destination)
        let (dst, (qsrc, qsport), (qdst, mut qdport)) = if to_client {
            (
                s.snat_addr_be,
                (s.snat_addr_be, s.snat_port_be),
                (s.backend_addr_be, s.backend_port_be),
            )
        } else {
            (
                key.dst_be,
                (key.dst_be, key.dport_be),
                (key.src_be, key.sport_be),
            )
        };
        if self.rng.chance(10) {
            qdport = qdport.wrapping_add(1u16.to_be());
        }
        let router = if to_client {
            [10, 0, 0, 254]
        } else {
            [198, 51, 100, 254]
        };
        let mut b = self.ip_start(LB_MAC, &[], router, dst.to_ne_bytes(), 1, 0, &[]);
        let (kind, code) = *self.rng.pick(&[(3u8, 4u8), (3, 3), (3, 1), (11, 0)]);
        let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
        let options: &[u8] = if self.rng.chance(15) {
            &[1, 1, 1, 0]
        } else {
            &[]
        };
        let mut quoted = self.ip_start(
            [0; 6],
            &[],
            qsrc.to_ne_bytes(),
            qdst.to_ne_bytes(),
            key.proto,
            0x4000,
            options,
        );
        let payload = self.payload(100);
        self.l4(
            &mut quoted,
            key.proto,
            u16::from_be(qsport),
            u16::from_be(qdport),
            0x10,
            payload,
        );
        finish_ipv4(&mut quoted);
        // The quoted packet without its Ethernet header, its checksums
        // broken now and then, cut after 8 bytes of L4 or more.
        let mut q = quoted.bytes[quoted.l3..].to_vec();
        if self.rng.chance(10) {
            q[10] ^= 0x5a;
        }
        let l4 = quoted.l4.expect("l4 written") - quoted.l3;
        let check = if key.proto == 6 { l4 + 16 } else { l4 + 6 };
        if self.rng.chance(10) && check + 2 <= q.len() {
            q[check] ^= 0x33;
        }
        if self.rng.chance(10) && key.proto == 17 {
            q[check..check + 2].copy_from_slice(&[0, 0]);
        }
        let cut = match self.rng.below(4) {
            0 => l4 + 8,
            1 => (l4 + 20).min(q.len()),
            2 => self.rng.range(l4 + 8, q.len().max(l4 + 8)),
            _ => q.len(),
        };
        q.truncate(cut.min(q.len()));
        icmp.extend(q);
        b.l4 = Some(b.bytes.len());
        b.bytes.extend(icmp);
        finish_ipv4(&mut b);
        if self.rng.chance(10) {
            // A wrong ICMP checksum is carried, not repaired.
            let at = b.l4.expect("set") + 2;
            b.bytes[at] ^= 0x0f;
        }
        Some(b)
    }
}

/// The NAT tables of both sides, compared entry by entry (keys, backend,
/// SNAT address and port, flags, client MAC; reverse: the flow). Nonces
/// are the datapath's: a reverse entry's must be its state's exactly when
/// the model says the entry belongs to that state.
pub fn compare(dp: &Datapath, model: &Model) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let flows: StdHashMap<FlowKey, NatFlow> = dp.nat_flows()?.into_iter().collect();
    let reverse: StdHashMap<FlowKey, foobar_common::NatReverse> =
        dp.nat_reverse()?.into_iter().collect();
    if flows.len() != model.nat_flows.len() {
        out.push(format!(
            "NAT_FLOWS holds {} states, the model {}",
            flows.len(),
            model.nat_flows.len()
        ));
    }
    for (k, m) in &model.nat_flows {
        let Some(d) = flows.get(k) else {
            out.push(format!("NAT state of {k:?} missing in the datapath"));
            continue;
        };
        let same = d.backend_id == m.backend_id
            && d.backend_gen == m.backend_gen
            && d.backend_addr_be == m.backend_addr_be
            && d.backend_port_be == m.backend_port_be
            && d.snat_addr_be == m.snat_addr_be
            && d.snat_port_be == m.snat_port_be
            && d.client_mac == m.client_mac
            && d.flags == m.flags;
        if !same {
            out.push(format!("NAT state of {k:?}: datapath {d:?}, model {m:?}"));
        }
    }
    if reverse.len() != model.nat_reverse.len() {
        out.push(format!(
            "NAT_REVERSE holds {} entries, the model {}",
            reverse.len(),
            model.nat_reverse.len()
        ));
    }
    for (k, m) in &model.nat_reverse {
        let Some(d) = reverse.get(k) else {
            out.push(format!("NAT reverse entry {k:?} missing in the datapath"));
            continue;
        };
        let model_current = model
            .nat_flows
            .get(&m.flow)
            .is_some_and(|s| s.version == m.version);
        let dp_current = flows.get(&d.flow).is_some_and(|s| s.nonce == d.nonce);
        if d.flow != m.flow || model_current != dp_current {
            out.push(format!(
                "NAT reverse entry {k:?}: datapath {d:?} (current {dp_current}), model {m:?} \
                 (current {model_current})"
            ));
        }
    }
    Ok(out)
}
