//! Backend health: a pure rise/fall tracker (HAProxy's semantics) and the
//! probes (TCP connect, HTTP GET) that feed it. A checker task per backend
//! reports transitions to the daemon's state owner; it never touches maps.
//! Checks go to the backend's own address, never to a VIP, so they never
//! take the XDP program's VIP path.
mod probe;

use std::{net::Ipv4Addr, time::Duration};

use tokio::sync::mpsc;

pub use probe::probe;

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
    pub fn new(spec: &HealthSpec, up: bool) -> Self {
        Tracker {
            rise: spec.rise.max(1),
            fall: spec.fall.max(1),
            up,
            streak: 0,
        }
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

/// Runs checks of one backend forever (the owner aborts the task when the
/// backend goes away); sends a `Transition` on every change of state.
pub async fn run_checker(
    backend_id: u32,
    epoch: u64,
    address: Ipv4Addr,
    port: u16,
    spec: HealthSpec,
    tx: mpsc::Sender<Transition>,
) {
    let mut tracker = Tracker::new(&spec, true);
    let mut ticker = tokio::time::interval(Duration::from_millis(spec.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(
            &spec.check,
            address,
            port,
            Duration::from_millis(spec.timeout_ms),
        )
        .await;
        let ok = result.is_ok();
        if let Some(up) = tracker.record(ok) {
            let reason = match result {
                Ok(what) => what,
                Err(why) => why,
            };
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
