//! The datapath's per-CPU counters, summed: per verdict reason, event, VIP
//! and backend. Read-only.
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use foobar_common::{Counter, Event, Reason};

use super::{DatapathError, Result};

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
    /// Flows scheduled to each backend, indexed by backend id.
    pub new_flows: Vec<u64>,
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

    /// Flows scheduled to backend id `id` (zero if it was not read).
    pub fn new_flows(&self, id: u32) -> u64 {
        self.new_flows.get(id as usize).copied().unwrap_or_default()
    }
}

/// The counter arrays, taken from the object once at load.
pub(super) struct CounterMaps {
    pub(super) reasons: PerCpuArray<MapData, Counter>,
    pub(super) events: PerCpuArray<MapData, Counter>,
    pub(super) vips: PerCpuArray<MapData, Counter>,
    pub(super) backends: PerCpuArray<MapData, Counter>,
    pub(super) new_flows: PerCpuArray<MapData, u64>,
}

impl CounterMaps {
    /// Reads and sums every per-CPU counter of VIP ids below `vip_count`
    /// and backend ids below `backend_count`.
    pub(super) fn read(&self, vip_count: usize, backend_count: usize) -> Result<Stats> {
        let reasons = Reason::ALL
            .iter()
            .map(|r| Ok((r.name(), sum(&self.reasons, "REASONS", *r as u32)?)))
            .collect::<Result<_>>()?;
        let events = Event::ALL
            .iter()
            .map(|e| Ok((e.name(), sum(&self.events, "EVENTS", *e as u32)?.packets)))
            .collect::<Result<_>>()?;
        let vips = (0..vip_count as u32)
            .map(|id| sum(&self.vips, "VIP_STATS", id))
            .collect::<Result<_>>()?;
        let backends = (0..backend_count as u32)
            .map(|id| sum(&self.backends, "BACKEND_STATS", id))
            .collect::<Result<_>>()?;
        let new_flows = (0..backend_count as u32)
            .map(|id| sum_u64(&self.new_flows, "BACKEND_NEW_FLOWS", id))
            .collect::<Result<_>>()?;
        Ok(Stats {
            reasons,
            events,
            vips,
            backends,
            new_flows,
        })
    }
}

impl CounterMaps {
    /// Zeroes the counters of a backend id that was freed.
    pub(super) fn clear_backend(&mut self, id: u32) -> Result<()> {
        clear(&mut self.backends, "BACKEND_STATS", id)?;
        clear(&mut self.new_flows, "BACKEND_NEW_FLOWS", id)
    }

    /// Zeroes the counters of a VIP id that was freed.
    pub(super) fn clear_vip(&mut self, id: u32) -> Result<()> {
        clear(&mut self.vips, "VIP_STATS", id)
    }
}

fn clear<T: aya::Pod + Default>(
    array: &mut PerCpuArray<MapData, T>,
    map: &'static str,
    index: u32,
) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
        map,
        source: aya::maps::MapError::IoError(e),
    })?;
    let zeros =
        PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| DatapathError::Map {
            map,
            source: aya::maps::MapError::IoError(e),
        })?;
    array
        .set(index, zeros, 0)
        .map_err(|source| DatapathError::Map { map, source })
}

fn sum(array: &PerCpuArray<MapData, Counter>, map: &'static str, index: u32) -> Result<Counters> {
    let per_cpu = array
        .get(&index, 0)
        .map_err(|source| DatapathError::Map { map, source })?;
    Ok(per_cpu.iter().fold(Counters::default(), |acc, c| Counters {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    }))
}

fn sum_u64(array: &PerCpuArray<MapData, u64>, map: &'static str, index: u32) -> Result<u64> {
    let per_cpu = array
        .get(&index, 0)
        .map_err(|source| DatapathError::Map { map, source })?;
    Ok(per_cpu.iter().sum())
}
