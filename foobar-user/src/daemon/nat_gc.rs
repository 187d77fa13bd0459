//! NAT garbage collection, run off the owner's loop: every NAT_GC_PERIOD a
//! blocking thread removes ended NAT state and stale reverse entries with
//! its own map handles (`datapath::NatCollector`); the owner only counts
//! what it removed. Never touches a live flow's state.
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{monotonic_ns, Owner};
use crate::datapath::{DatapathError, NatCollector, NatGcReport};

/// How often the daemon collects NAT garbage. An ended state lives at most
/// this long (plus a second of clock slack) after its end before it is
/// removed; until then the datapath treats it as absent already.
pub const NAT_GC_PERIOD: Duration = Duration::from_secs(5);

/// A collection's result, back from its blocking thread.
pub(super) struct NatGcDone {
    collector: NatCollector,
    report: Result<NatGcReport, DatapathError>,
    took: Duration,
}

/// What the collections found and removed, for the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct NatGcTotals {
    /// NAT states and reverse entries at the latest collection.
    pub states: u64,
    pub reverse: u64,
    /// Removed since the daemon started.
    pub states_removed: u64,
    pub reverse_removed: u64,
    pub runs: u64,
}

impl Owner {
    /// Starts a NAT collection on a blocking thread (unless one runs).
    pub(super) fn start_nat_gc(&mut self) {
        if self.nat_gc.running {
            return;
        }
        let collector = match self.nat_gc.collector.take() {
            Some(c) => c,
            None => match self.datapath.nat_collector() {
                Ok(c) => c,
                Err(err) => {
                    warn!(%err, "cannot open the NAT tables for garbage collection");
                    return;
                }
            },
        };
        let tx = self.nat_gc.tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut collector = collector;
            let started = Instant::now();
            let report = collector.collect(monotonic_ns());
            let _ = tx.blocking_send(NatGcDone {
                collector,
                report,
                took: started.elapsed(),
            });
        });
        self.nat_gc.running = true;
    }

    pub(super) fn on_nat_gc(&mut self, done: NatGcDone) {
        self.nat_gc.running = false;
        self.nat_gc.collector = Some(done.collector);
        let report = match done.report {
            Ok(r) => r,
            Err(err) => {
                warn!(%err, "NAT garbage collection failed");
                return;
            }
        };
        if done.took > NAT_GC_PERIOD {
            warn!(
                took_ms = done.took.as_millis() as u64,
                states = report.states,
                "NAT garbage collection took longer than its period"
            );
        }
        let t = &mut self.nat_gc.totals;
        t.states = report.states as u64;
        t.reverse = report.reverse as u64;
        t.states_removed += report.states_removed as u64;
        t.reverse_removed += report.reverse_removed as u64;
        t.runs += 1;
        if report.removed() > 0 {
            debug!(
                states_removed = report.states_removed,
                reverse_removed = report.reverse_removed,
                states_left = report.states,
                "NAT garbage collected"
            );
        }
    }
}

/// The owner's NAT collection bookkeeping.
pub(super) struct NatGc {
    /// The collector's handles, while no collection runs.
    collector: Option<NatCollector>,
    running: bool,
    tx: tokio::sync::mpsc::Sender<NatGcDone>,
    pub(super) rx: tokio::sync::mpsc::Receiver<NatGcDone>,
    pub(super) totals: NatGcTotals,
}

impl NatGc {
    pub(super) fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        NatGc {
            collector: None,
            running: false,
            tx,
            rx,
            totals: NatGcTotals::default(),
        }
    }
}
