//! The checkers' notice board: every check's result lands here, written by
//! the checker task itself under a short lock, so `foobar status` and the
//! metrics show the latest check (not only the last transition) without a
//! message per check through the state owner's loop. Only transitions go to
//! the owner (they change the datapath); this board changes nothing.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Upper bounds (seconds) of the check-duration histogram's buckets; the
/// last bucket is +Inf.
pub const DURATION_BUCKETS_S: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What one check found, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckResult {
    Passed,
    Failed,
    /// Not run for a local reason (the daemon's shortage, not the backend's).
    NotRun,
}

impl CheckResult {
    pub const ALL: [CheckResult; 3] = [
        CheckResult::Passed,
        CheckResult::Failed,
        CheckResult::NotRun,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CheckResult::Passed => "passed",
            CheckResult::Failed => "failed",
            CheckResult::NotRun => "not_run",
        }
    }
}

/// The latest check of a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct LastCheck {
    pub result: CheckResult,
    /// E.g. "connect to 10.0.0.11:80: Connection refused".
    pub text: String,
    pub duration: Duration,
    pub at: Instant,
}

/// Everything the board knows of one backend's checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The checker that wrote it (a replaced checker's writes are ignored).
    pub epoch: u64,
    pub last: Option<LastCheck>,
    /// The checker's view of the backend's health, and since when (the
    /// checker's start if it never changed).
    pub up: bool,
    pub since: Instant,
    pub consecutive_failures: u32,
    /// Checks by result (index: `CheckResult as usize`), since the backend
    /// appeared; they survive a checker's replacement.
    pub results: [u64; 3],
    /// Changes of health (up→down, down→up) the checks decided.
    pub transitions: u64,
    /// Check durations of run checks: count per bucket of
    /// [`DURATION_BUCKETS_S`] (+Inf last, not cumulative) and their sum.
    pub duration_buckets: [u64; DURATION_BUCKETS_S.len() + 1],
    pub duration_sum_s: f64,
}

impl Record {
    fn new(epoch: u64, up: bool, now: Instant) -> Self {
        Record {
            epoch,
            last: None,
            up,
            since: now,
            consecutive_failures: 0,
            results: [0; 3],
            transitions: 0,
            duration_buckets: [0; DURATION_BUCKETS_S.len() + 1],
            duration_sum_s: 0.0,
        }
    }

    /// A record with nothing counted (a backend without a checker yet).
    pub fn empty() -> Self {
        Record::new(0, true, Instant::now())
    }

    /// Adds one check's result; `changed` when it changed the health.
    pub fn add(&mut self, result: CheckResult, text: String, took: Duration, at: Instant) {
        self.results[result as usize] += 1;
        match result {
            CheckResult::Passed => self.consecutive_failures = 0,
            CheckResult::Failed => self.consecutive_failures += 1,
            CheckResult::NotRun => {}
        }
        if result != CheckResult::NotRun {
            let s = took.as_secs_f64();
            let bucket = DURATION_BUCKETS_S
                .iter()
                .position(|le| s <= *le)
                .unwrap_or(DURATION_BUCKETS_S.len());
            self.duration_buckets[bucket] += 1;
            self.duration_sum_s += s;
        }
        self.last = Some(LastCheck {
            result,
            text,
            duration: took,
            at,
        });
    }
}

/// Shared between the owner (who opens and closes records) and the
/// checkers (who write results). Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Board(Arc<Mutex<HashMap<u32, Record>>>);

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Record>> {
        // A checker that panicked mid-write leaves plain numbers behind.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A checker `epoch` starts for backend `id`, its health `up`; counts
    /// of an earlier checker of the same backend are kept.
    pub fn open(&self, id: u32, epoch: u64, up: bool) {
        let now = Instant::now();
        let mut map = self.lock();
        let r = map.entry(id).or_insert_with(|| Record::new(epoch, up, now));
        r.epoch = epoch;
        if r.up != up {
            r.up = up;
            r.since = now;
        }
    }

    /// Backend `id` is gone: its record goes (its id may be reused).
    pub fn close(&self, id: u32) {
        self.lock().remove(&id);
    }

    /// Checker `epoch` of backend `id` ran a check; `now_up` is its view of
    /// the health after it, `changed` whether that check changed it.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        id: u32,
        epoch: u64,
        result: CheckResult,
        text: &str,
        took: Duration,
        now_up: bool,
        changed: bool,
    ) {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(r) = map.get_mut(&id).filter(|r| r.epoch == epoch) else {
            return;
        };
        r.add(result, text.to_owned(), took, now);
        if changed {
            r.transitions += 1;
            r.up = now_up;
            r.since = now;
        }
    }

    /// A copy of backend `id`'s record.
    pub fn get(&self, id: u32) -> Option<Record> {
        self.lock().get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_is_counted_and_the_latest_is_kept() {
        let board = Board::default();
        board.open(7, 1, true);
        let ms = Duration::from_millis;
        board.record(7, 1, CheckResult::Failed, "refused", ms(2), true, false);
        board.record(7, 1, CheckResult::Failed, "refused", ms(3), false, true);
        board.record(7, 1, CheckResult::NotRun, "EMFILE", ms(0), false, false);
        let r = board.get(7).unwrap();
        assert_eq!(r.results, [0, 2, 1]);
        assert_eq!(
            r.consecutive_failures, 2,
            "a check not run breaks no streak"
        );
        assert_eq!(r.transitions, 1);
        assert!(!r.up);
        assert_eq!(r.last.as_ref().unwrap().result, CheckResult::NotRun);
        // 2 ms and 3 ms: buckets le 0.0025 and le 0.005; not-run not timed.
        assert_eq!(r.duration_buckets[1], 1);
        assert_eq!(r.duration_buckets[2], 1);
        assert_eq!(r.duration_buckets.iter().sum::<u64>(), 2);
        assert!((r.duration_sum_s - 0.005).abs() < 1e-9);

        board.record(7, 1, CheckResult::Passed, "ok", ms(5000), false, false);
        let r = board.get(7).unwrap();
        assert_eq!(r.consecutive_failures, 0);
        assert_eq!(*r.duration_buckets.last().unwrap(), 1, "5 s lands in +Inf");
        assert_eq!(r.last.unwrap().text, "ok");
    }

    #[test]
    fn a_replaced_checker_writes_nothing_and_counts_survive_a_replacement() {
        let board = Board::default();
        board.open(1, 1, true);
        board.record(1, 1, CheckResult::Passed, "ok", Duration::ZERO, true, false);
        board.open(1, 2, true);
        board.record(
            1,
            1,
            CheckResult::Failed,
            "old",
            Duration::ZERO,
            false,
            true,
        );
        let r = board.get(1).unwrap();
        assert_eq!(r.results, [1, 0, 0]);
        assert_eq!(r.transitions, 0);
        assert!(r.up);
        board.close(1);
        assert!(board.get(1).is_none());
    }
}
