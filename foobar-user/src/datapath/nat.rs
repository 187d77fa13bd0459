//! The NAT maps: per-VIP NAT settings and per-backend NAT ports, written
//! from a plan, and the NAT state and reverse tables, read for status,
//! tests and garbage collection. The datapath alone creates NAT state.
use aya::{
    maps::{Array, HashMap, Map, MapData},
    Ebpf,
};
use foobar_common::{FlowKey, NatFlow, NatReverse, NatVip};

use super::{Datapath, DatapathError, Result};
use crate::plan::Plan;

pub(super) struct NatMaps {
    vips: Array<MapData, NatVip>,
    backend_ports: Array<MapData, u16>,
    flows: HashMap<MapData, FlowKey, NatFlow>,
    reverse: HashMap<MapData, FlowKey, NatReverse>,
}

/// What the NAT maps hold, as last written by `apply`.
#[derive(Default)]
pub(super) struct NatWritten {
    vips: std::collections::BTreeMap<u32, NatVip>,
    backend_ports: std::collections::BTreeMap<u32, u16>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

impl NatMaps {
    fn flows_data(&self) -> &MapData {
        aya::maps::IterableMap::map(&self.flows)
    }

    fn reverse_data(&self) -> &MapData {
        aya::maps::IterableMap::map(&self.reverse)
    }
}

pub(super) fn take(ebpf: &mut Ebpf) -> Result<NatMaps> {
    let mut map = |name: &'static str| {
        ebpf.take_map(name)
            .ok_or(DatapathError::Missing { what: "map", name })
    };
    let vips = Array::try_from(map("NAT_VIPS")?).map_err(map_err("NAT_VIPS"))?;
    let backend_ports =
        Array::try_from(map("NAT_BACKEND_PORTS")?).map_err(map_err("NAT_BACKEND_PORTS"))?;
    let flows = match map("NAT_FLOWS")? {
        // aya reads an LRU hash through its HashMap type.
        Map::LruHashMap(d) => HashMap::try_from(Map::HashMap(d)),
        other => HashMap::try_from(other),
    }
    .map_err(map_err("NAT_FLOWS"))?;
    let reverse = HashMap::try_from(map("NAT_REVERSE")?).map_err(map_err("NAT_REVERSE"))?;
    Ok(NatMaps {
        vips,
        backend_ports,
        flows,
        reverse,
    })
}

impl Datapath {
    /// Writes the NAT settings and backend ports of `plan` that differ from
    /// what the maps hold; called by `apply` before the VIP keys, so a NAT
    /// VIP never shows without its settings.
    pub(super) fn write_nat(&mut self, plan: &Plan) -> Result<()> {
        for (&id, cfg) in &plan.nat_vips {
            if self.nat_written.vips.get(&id) != Some(cfg) {
                self.maps
                    .nat
                    .vips
                    .set(id, cfg, 0)
                    .map_err(map_err("NAT_VIPS"))?;
                self.nat_written.vips.insert(id, *cfg);
            }
        }
        for (&id, port) in &plan.backend_ports {
            if self.nat_written.backend_ports.get(&id) != Some(port) {
                self.maps
                    .nat
                    .backend_ports
                    .set(id, port, 0)
                    .map_err(map_err("NAT_BACKEND_PORTS"))?;
                self.nat_written.backend_ports.insert(id, *port);
            }
        }
        Ok(())
    }

    /// Zeroes the settings and ports `plan` no longer has; called by
    /// `apply` after the VIP keys that used them are gone.
    pub(super) fn clear_nat(&mut self, plan: &Plan) -> Result<()> {
        let gone: Vec<u32> = self
            .nat_written
            .vips
            .keys()
            .filter(|id| !plan.nat_vips.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.maps
                .nat
                .vips
                .set(id, NatVip::default(), 0)
                .map_err(map_err("NAT_VIPS"))?;
            self.nat_written.vips.remove(&id);
        }
        let gone: Vec<u32> = self
            .nat_written
            .backend_ports
            .keys()
            .filter(|id| !plan.backend_ports.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.maps
                .nat
                .backend_ports
                .set(id, 0, 0)
                .map_err(map_err("NAT_BACKEND_PORTS"))?;
            self.nat_written.backend_ports.remove(&id);
        }
        Ok(())
    }

    /// Every NAT state entry (client 5-tuple -> state).
    pub fn nat_flows(&self) -> Result<Vec<(FlowKey, NatFlow)>> {
        self.maps
            .nat
            .flows
            .iter()
            .map(|e| e.map_err(map_err("NAT_FLOWS")))
            .collect()
    }

    /// Every NAT reverse entry (reply 5-tuple -> client flow).
    pub fn nat_reverse(&self) -> Result<Vec<(FlowKey, NatReverse)>> {
        self.maps
            .nat
            .reverse
            .iter()
            .map(|e| e.map_err(map_err("NAT_REVERSE")))
            .collect()
    }

    /// One NAT garbage collection at `now_ns` (CLOCK_MONOTONIC) on this
    /// thread: see `NatCollector::collect`. The daemon runs its own
    /// collector on a blocking thread instead.
    pub fn nat_gc(&self, now_ns: u64) -> Result<NatGcReport> {
        self.nat_collector()?.collect(now_ns)
    }
}

/// Nanoseconds per second (the NAT timeouts are in seconds).
const NS_PER_S: u64 = 1_000_000_000;
/// How far past its end a state must be before the collector removes it:
/// the datapath stamps states with CLOCK_MONOTONIC_COARSE (behind the
/// collector's CLOCK_MONOTONIC by up to a tick), so a state is removed only
/// once the datapath surely sees it ended too.
pub const NAT_GC_SLACK_NS: u64 = NS_PER_S;

/// Whether the datapath would find `state` ended at `now_ns` (the rule of
/// foobar-ebpf's `nat::state::ended`): `linger_s` after its close, or
/// `idle_s` after its latest packet.
pub fn nat_state_ended(state: &NatFlow, now_ns: u64) -> bool {
    if state.flags & foobar_common::NAT_CLOSED != 0 {
        return now_ns.saturating_sub(state.closed_ns) > u64::from(state.linger_s) * NS_PER_S;
    }
    now_ns.saturating_sub(state.last_seen_ns) > u64::from(state.idle_s) * NS_PER_S
}

/// The reverse-table key of a state: the backend's reply 5-tuple.
fn reverse_key(client: &FlowKey, state: &NatFlow) -> FlowKey {
    FlowKey {
        src_be: state.backend_addr_be,
        dst_be: state.snat_addr_be,
        sport_be: state.backend_port_be,
        dport_be: state.snat_port_be,
        proto: client.proto,
        family: client.family,
        _pad: [0; 2],
    }
}

/// What one NAT garbage collection found and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatGcReport {
    /// NAT states seen, and those removed (ended: idle or closed and
    /// lingered).
    pub states: usize,
    pub states_removed: usize,
    /// Reverse entries left after the states' own were removed, and those
    /// removed then because their state was gone or was another one.
    pub reverse: usize,
    pub reverse_removed: usize,
}

impl NatGcReport {
    /// Entries removed from both tables.
    pub fn removed(&self) -> usize {
        self.states_removed + self.reverse_removed
    }
}

/// Removes ended NAT state and stale reverse entries, on handles of its own
/// (`Send`: the daemon runs it on a blocking thread, off the owner's loop).
/// The datapath never deletes state itself: it treats an ended state as
/// absent and replaces it at the flow's next packet, so without this an
/// LRU full of ended states would evict live ones first only by age.
pub struct NatCollector {
    flows: HashMap<MapData, FlowKey, NatFlow>,
    reverse: HashMap<MapData, FlowKey, NatReverse>,
    capacity: u32,
}

impl NatCollector {
    /// One collection at `now_ns` (CLOCK_MONOTONIC; see NAT_GC_SLACK_NS).
    /// Bounded: reads at most capacity + 1/8 keys of each table, however
    /// the tables churn meanwhile. A state is re-read just before its
    /// removal and kept if a packet revived or replaced it since the walk;
    /// a packet in the microseconds between that read and the removal
    /// finds no state and gets new state (usually the same port, whose
    /// reverse entry it reclaims), as after an LRU eviction.
    pub fn collect(&mut self, now_ns: u64) -> Result<NatGcReport> {
        let limit = self.capacity as usize + self.capacity as usize / 8;
        let judge = now_ns.saturating_sub(NAT_GC_SLACK_NS);
        let mut report = NatGcReport::default();
        let keys: Vec<FlowKey> = self
            .flows
            .keys()
            .take(limit)
            .filter_map(|k| k.ok())
            .collect();
        report.states = keys.len();
        for key in keys {
            let Ok(state) = self.flows.get(&key, 0) else {
                continue; // evicted or replaced meanwhile
            };
            if !nat_state_ended(&state, judge) {
                continue;
            }
            match self.flows.get(&key, 0) {
                Ok(again) if again == state => {}
                _ => continue,
            }
            if self.flows.remove(&key).is_err() {
                continue;
            }
            report.states_removed += 1;
            let rk = reverse_key(&key, &state);
            if self
                .reverse
                .get(&rk, 0)
                .is_ok_and(|r| r.flow == key && r.nonce == state.nonce)
            {
                let _ = self.reverse.remove(&rk);
            }
        }
        let reverse: Vec<(FlowKey, NatReverse)> = self
            .reverse
            .iter()
            .take(limit)
            .filter_map(|e| e.ok())
            .collect();
        report.reverse = reverse.len();
        for (key, rev) in reverse {
            let live = self
                .flows
                .get(&rev.flow, 0)
                .is_ok_and(|s| s.nonce == rev.nonce);
            // Gone already (a racing reclaim) is fine.
            if !live && self.reverse.remove(&key).is_ok() {
                report.reverse_removed += 1;
            }
        }
        report.reverse -= report.reverse_removed;
        report.states -= report.states_removed;
        Ok(report)
    }
}

impl Datapath {
    /// A NAT garbage collector with handles of its own on the NAT tables.
    pub fn nat_collector(&self) -> Result<NatCollector> {
        let dup = |data: &MapData, map: &'static str| {
            std::os::fd::AsFd::as_fd(data.fd())
                .try_clone_to_owned()
                .map_err(|io_error| DatapathError::Map {
                    map,
                    source: aya::sys::SyscallError {
                        call: "dup",
                        io_error,
                    }
                    .into(),
                })
                .and_then(|fd| MapData::from_fd(fd).map_err(map_err(map)))
        };
        let flows = dup(self.maps.nat.flows_data(), "NAT_FLOWS")?;
        let reverse = dup(self.maps.nat.reverse_data(), "NAT_REVERSE")?;
        Ok(NatCollector {
            flows: HashMap::try_from(Map::HashMap(flows)).map_err(map_err("NAT_FLOWS"))?,
            reverse: HashMap::try_from(Map::HashMap(reverse)).map_err(map_err("NAT_REVERSE"))?,
            capacity: self.flow_table_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_S;

    #[test]
    fn a_state_ends_by_idle_or_after_its_linger_as_the_datapath_says() {
        let open = NatFlow {
            idle_s: 30,
            linger_s: 2,
            last_seen_ns: 100 * S,
            ..Default::default()
        };
        assert!(!nat_state_ended(&open, 130 * S), "exactly idle_s: not yet");
        assert!(nat_state_ended(&open, 130 * S + 1));
        // A clock behind the stamp (never ended).
        assert!(!nat_state_ended(&open, 50 * S));
        let closed = NatFlow {
            flags: foobar_common::NAT_CLOSED,
            closed_ns: 110 * S,
            ..open
        };
        assert!(!nat_state_ended(&closed, 112 * S));
        assert!(nat_state_ended(&closed, 112 * S + 1), "linger, not idle");
    }

    #[test]
    fn the_reverse_key_is_the_backends_reply() {
        let client = FlowKey {
            src_be: 1,
            dst_be: 2,
            sport_be: 3,
            dport_be: 4,
            proto: 6,
            family: foobar_common::AF_INET,
            _pad: [0; 2],
        };
        let state = NatFlow {
            backend_addr_be: 10,
            snat_addr_be: 20,
            backend_port_be: 30,
            snat_port_be: 40,
            ..Default::default()
        };
        let k = reverse_key(&client, &state);
        assert_eq!(
            (k.src_be, k.dst_be, k.sport_be, k.dport_be),
            (10, 20, 30, 40)
        );
        assert_eq!((k.proto, k.family), (6, foobar_common::AF_INET));
    }
}
