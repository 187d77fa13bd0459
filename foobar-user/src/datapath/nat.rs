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

    /// Removes reverse entries whose state is gone or holds another nonce
    /// (the datapath also reclaims them as it meets them); returns how many.
    /// Ended-but-present states are left to the datapath, which knows the
    /// clock they were stamped with.
    pub fn nat_gc(&mut self) -> Result<usize> {
        let stale: Vec<FlowKey> = self
            .nat_reverse()?
            .into_iter()
            .filter(|(_, rev)| {
                self.maps
                    .nat
                    .flows
                    .get(&rev.flow, 0)
                    .map_or(true, |s| s.nonce != rev.nonce)
            })
            .map(|(k, _)| k)
            .collect();
        let n = stale.len();
        for key in stale {
            // Gone already (a racing reclaim) is fine.
            let _ = self.maps.nat.reverse.remove(&key);
        }
        Ok(n)
    }
}
