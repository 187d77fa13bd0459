//! Counters, rates and the flow-table walk (run off the owner's loop).
use std::time::Instant;

use tracing::{info, warn};

use super::{monotonic_ns, Owner, WalkDone, FLOW_TABLE_WARN, GC_PERIOD};
use crate::{config::Scheduler, datapath::Stats};

impl Owner {
    pub fn read_stats(&self) -> Result<Stats, String> {
        let (vips, backends) = self.max_ids();
        self.datapath
            .stats(vips, backends)
            .map_err(|e| format!("reading counters: {e}"))
    }

    pub(super) fn sample_rates(&mut self) {
        let Ok(now_stats) = self.read_stats() else {
            return;
        };
        let now = Instant::now();
        if let Some((then, prev)) = &self.rates.last {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            let rate = |new: &crate::datapath::Counters,
                        old: Option<&crate::datapath::Counters>| {
                let old = old.cloned().unwrap_or_default();
                (
                    new.packets.saturating_sub(old.packets) as f64 / dt,
                    new.bytes.saturating_sub(old.bytes) as f64 / dt,
                )
            };
            self.rates.vips = now_stats
                .vips
                .iter()
                .enumerate()
                .map(|(i, c)| (i as u32, rate(c, prev.vips.get(i))))
                .collect();
            self.rates.backends = now_stats
                .backends
                .iter()
                .enumerate()
                .map(|(i, c)| (i as u32, rate(c, prev.backends.get(i))))
                .collect();
            self.rates.new_flows = now_stats
                .new_flows
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let old = prev.new_flows.get(i).copied().unwrap_or_default();
                    (i as u32, n.saturating_sub(old) as f64 / dt)
                })
                .collect();
        }
        self.rates.last = Some((now, now_stats));
    }

    /// Starts a walk of the flow table on a blocking thread (if none runs):
    /// its result re-weights "wlc" VIPs from the active flows (every tick
    /// while one exists), frees retired backends no recent flow uses, and
    /// refreshes the occupancy figure (every GC_PERIOD). See `on_walk`.
    pub(super) fn scan_flows(&mut self) {
        let has_wlc = self
            .state
            .vips()
            .iter()
            .any(|v| v.spec.scheduler == Scheduler::LeastConn);
        let due = self.last_scan.is_none_or(|t| t.elapsed() >= GC_PERIOD);
        if !has_wlc && !due {
            return;
        }
        if self.walking {
            return; // the previous walk is still running
        }
        let walker = match self.walker.take() {
            Some(w) => w,
            None => match self.datapath.flow_walker() {
                Ok(w) => w,
                Err(err) => {
                    warn!(%err, "cannot open the flow table for a walk");
                    return;
                }
            },
        };
        self.last_scan = Some(Instant::now());
        let since = monotonic_ns().saturating_sub(self.retire_idle.as_nanos() as u64);
        let retired_before = self.state.retired().iter().map(|r| r.id).collect();
        let tx = self.walk_tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let usage = walker.usage(since);
            let _ = tx.blocking_send(WalkDone {
                walker,
                usage,
                took: started.elapsed(),
                retired_before,
                gc_due: due,
            });
        });
        self.walking = true;
    }

    /// Records the flow tables' occupancy and logs once each time the
    /// fullest table crosses FLOW_TABLE_WARN of its capacity (and once when
    /// it is back under): a full LRU evicts live flows, which rr/wlc
    /// reschedule. With per-CPU tables each CPU's table evicts on its own,
    /// so the fullest one decides, not the sum.
    pub(super) fn note_occupancy(&mut self, entries: usize, fullest: usize) {
        self.flow_entries = entries;
        let capacity = self.datapath.flow_table_size_each() as usize;
        let near_full = fullest as f64 >= capacity as f64 * FLOW_TABLE_WARN;
        if near_full && !self.flow_table_near_full {
            warn!(
                entries,
                fullest,
                capacity_per_table = capacity,
                "the flow table is nearly full: new flows evict the least recently used ones, \
                 and evicted connections of rr/wlc VIPs are reset; raise datapath.flow_table_size \
                 (see midflow_miss in foobar stats)"
            );
        } else if !near_full && self.flow_table_near_full {
            info!(
                entries,
                fullest,
                capacity_per_table = capacity,
                "the flow table has room again"
            );
        }
        self.flow_table_near_full = near_full;
    }

    pub(super) fn on_walk(&mut self, done: WalkDone) {
        self.walking = false;
        self.walker = Some(done.walker);
        self.last_walk = done.took;
        let usage = match done.usage {
            Ok(u) => u,
            Err(err) => {
                warn!(%err, "reading the flow table failed");
                return;
            }
        };
        if done.took > GC_PERIOD {
            warn!(
                took_ms = done.took.as_millis() as u64,
                entries = usage.entries,
                "walking the flow table took longer than its period"
            );
        }
        self.note_occupancy(usage.entries, usage.fullest);
        let before = self.state.clone();
        let reweighted = self.state.set_active(usage.active);
        let freed = if done.gc_due {
            // Backends retired after the walk started keep their entry
            // until a walk that saw the whole of their flows.
            let mut in_use = usage.in_use;
            in_use.extend(
                self.state
                    .retired()
                    .iter()
                    .map(|r| r.id)
                    .filter(|id| !done.retired_before.contains(id)),
            );
            self.state.free_retired(&in_use)
        } else {
            Vec::new()
        };
        if !reweighted && freed.is_empty() {
            return;
        }
        match self.datapath.apply(&self.state.plan()) {
            Ok(()) => {
                for r in freed {
                    info!(vip = %r.vip, backend = %r.address, id = r.id, "removed backend has no active flow left; entry freed");
                }
            }
            Err(err) => {
                warn!(%err, "applying the flow-table scan failed");
                self.roll_back(before, false);
            }
        }
    }
}
