//! Backend health: a pure rise/fall tracker (HAProxy's semantics) and the
//! probes (TCP connect, HTTP GET) that feed it. A checker task per backend
//! reports transitions to the daemon's state owner and writes every
//! result on the [`Board`]; it never touches maps.
//! Checks go to the backend's own address, never to a VIP, so they never
//! take the XDP program's VIP path.
mod board;
mod probe;

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

pub use board::{Board, CheckResult, LastCheck, Record, DURATION_BUCKETS_S};
pub use probe::{classify_connect_error, probe, Outcome};

use crate::config::HealthSpec;

/// Counts consecutive results: an up backend goes down after `fall`
/// failures in a row, a down one comes up after `rise` successes in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    up: bool,
    streak: u32,
}

impl Tracker {
    /// A tracker settled in state `up`: `fall` failures (or `rise`
    /// successes) in a row change it.
    pub fn new(spec: &HealthSpec, up: bool) -> Self {
        Tracker {
            rise: spec.rise.max(1),
            fall: spec.fall.max(1),
            up,
            streak: 0,
        }
    }

    /// A backend that has just appeared (daemon start or restart, `backend
    /// add`), in HAProxy's way: up, but at the edge, as if `fall - 1`
    /// failures had already been seen. Its first failed check takes it down;
    /// its first successful one settles it (then it takes `fall` failures).
    pub fn starting(spec: &HealthSpec) -> Self {
        let mut t = Tracker::new(spec, true);
        t.streak = t.fall - 1;
        t
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check result; returns the new state if it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            // A result that agrees with the state breaks any opposite streak.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

/// What a checker reports to the state owner.
#[derive(Debug)]
pub struct Transition {
    pub backend_id: u32,
    /// Which checker sent it: a report from a checker that has since been
    /// replaced (backend removed, id reused) is ignored.
    pub epoch: u64,
    pub up: bool,
    /// The last check's result, e.g. "connect: Connection refused".
    pub reason: String,
}

/// Checks that could not run for a local reason (the daemon out of file
/// descriptors, memory or socket buffers), since start, all backends.
/// They count for nothing in a backend's health.
static CHECKS_NOT_RUN: AtomicU64 = AtomicU64::new(0);

pub fn checks_not_run() -> u64 {
    CHECKS_NOT_RUN.load(Ordering::Relaxed)
}

/// Runs checks of one backend forever (the owner aborts the task when the
/// backend goes away); sends a `Transition` on every change of state and
/// writes every result on `board`.
/// A backend that starts up starts at the edge (`Tracker::starting`); one
/// that was down when the daemon stopped (`up` false) needs `rise` good
/// checks.
pub async fn run_checker(
    backend_id: u32,
    epoch: u64,
    target: SocketAddr,
    spec: HealthSpec,
    up: bool,
    tx: mpsc::Sender<Transition>,
    board: Board,
) {
    board.open(backend_id, epoch, up);
    let (address, port) = (target.ip(), target.port());
    let mut tracker = if up {
        Tracker::starting(&spec)
    } else {
        Tracker::new(&spec, false)
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(spec.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Checks not run in the current burst of local errors (logged once
    // when it starts and once when it ends).
    let mut not_run = 0u64;
    let mut first = true;
    loop {
        ticker.tick().await;
        let began = std::time::Instant::now();
        let outcome = probe(
            &spec.check,
            address,
            port,
            Duration::from_millis(spec.timeout_ms),
        )
        .await;
        let took = began.elapsed();
        let (ok, reason) = match outcome {
            Outcome::NotRun(why) => {
                CHECKS_NOT_RUN.fetch_add(1, Ordering::Relaxed);
                let up = tracker.is_up();
                board.record(
                    backend_id,
                    epoch,
                    CheckResult::NotRun,
                    &why,
                    took,
                    up,
                    false,
                );
                if not_run == 0 {
                    warn!(backend = %address, reason = %why, "health check could not run (a local problem, not the backend's); the backend keeps its state");
                }
                not_run += 1;
                continue;
            }
            Outcome::Passed(what) => (true, what),
            Outcome::Failed(why) => (false, why),
        };
        if not_run > 0 {
            info!(backend = %address, checks = not_run, "health checks run again");
            not_run = 0;
        }
        // A change of state, or the first result: a starting backend's
        // first success settles it without a change, and the owner shows
        // that result instead of "not checked yet".
        let changed = tracker.record(ok);
        let result = if ok {
            CheckResult::Passed
        } else {
            CheckResult::Failed
        };
        let up = tracker.is_up();
        board.record(
            backend_id,
            epoch,
            result,
            &reason,
            took,
            up,
            changed.is_some(),
        );
        let report = changed.or(first.then(|| tracker.is_up()));
        first = false;
        if let Some(up) = report {
            let sent = tx
                .send(Transition {
                    backend_id,
                    epoch,
                    up,
                    reason,
                })
                .await;
            if sent.is_err() {
                return; // the daemon is shutting down
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rise: u32, fall: u32) -> HealthSpec {
        HealthSpec {
            rise,
            fall,
            ..HealthSpec::default()
        }
    }

    #[test]
    fn an_up_backend_goes_down_on_the_fall_th_failure_in_a_row() {
        let mut t = Tracker::new(&spec(2, 3), true);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert!(!t.is_up());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut t = Tracker::new(&spec(2, 3), true);
        for _ in 0..10 {
            assert_eq!(t.record(false), None);
            assert_eq!(t.record(false), None);
            assert_eq!(t.record(true), None);
        }
        assert!(t.is_up());
    }

    #[test]
    fn a_starting_backend_is_up_and_one_failure_takes_it_down() {
        for (rise, fall) in [(2, 3), (1, 1), (5, 10)] {
            let mut t = Tracker::starting(&spec(rise, fall));
            assert!(t.is_up(), "starts up");
            assert_eq!(t.record(false), Some(false), "rise {rise} fall {fall}");
            assert!(!t.is_up());
            for _ in 1..rise {
                assert_eq!(t.record(true), None);
            }
            assert_eq!(t.record(true), Some(true), "back after rise successes");
        }
    }

    #[test]
    fn a_starting_backend_settles_on_its_first_success() {
        let mut t = Tracker::starting(&spec(2, 3));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false), "fall failures once settled");
    }

    #[test]
    fn a_down_backend_comes_up_after_rise_successes() {
        let mut t = Tracker::new(&spec(2, 1), true);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert!(t.is_up());
    }
}
