//! When a master repeats its gratuitous ARPs, as keepalived does: a burst
//! on becoming master, a second burst `master_delay` later (switches and
//! hosts that missed the first, or learned the old master's MAC again from
//! a late frame, correct themselves), and optionally a smaller burst every
//! `master_refresh` while master. Pure: the task asks what is due and
//! sends it.
use std::time::Duration;

/// keepalived's defaults: `garp_master_delay 5`, `garp_master_repeat 5`,
/// no refresh, `garp_master_refresh_repeat 1`.
pub const MASTER_DELAY_DEFAULT: Duration = Duration::from_secs(5);
pub const MASTER_REPEAT_DEFAULT: u32 = 5;
pub const MASTER_REFRESH_REPEAT_DEFAULT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Gratuitous ARPs per VIP in the burst on becoming master and in
    /// the second burst.
    pub master_repeat: u32,
    /// When the second burst follows the first (zero: no second burst).
    pub master_delay: Duration,
    /// Period of the refresh bursts while master (zero: none).
    pub master_refresh: Duration,
    /// Gratuitous ARPs per VIP in each refresh burst.
    pub master_refresh_repeat: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            master_repeat: MASTER_REPEAT_DEFAULT,
            master_delay: MASTER_DELAY_DEFAULT,
            master_refresh: Duration::ZERO,
            master_refresh_repeat: MASTER_REFRESH_REPEAT_DEFAULT,
        }
    }
}

/// The bursts still to come, on the caller's clock.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    config: Config,
    second: Option<Duration>,
    refresh: Option<Duration>,
}

impl Schedule {
    pub fn new(config: Config) -> Schedule {
        Schedule {
            config,
            second: None,
            refresh: None,
        }
    }

    /// Became master at `now`: the first burst's size (sent at once by the
    /// caller); the later ones are scheduled.
    pub fn master(&mut self, now: Duration) -> u32 {
        self.second = (!self.config.master_delay.is_zero()).then(|| now + self.config.master_delay);
        self.refresh =
            (!self.config.master_refresh.is_zero()).then(|| now + self.config.master_refresh);
        self.config.master_repeat
    }

    /// No longer master: nothing more is sent.
    pub fn stop(&mut self) {
        self.second = None;
        self.refresh = None;
    }

    /// When `due` has something next.
    pub fn next(&self) -> Option<Duration> {
        match (self.second, self.refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many gratuitous ARPs per VIP to send now (0: none due). A
    /// second burst and a refresh due together make one burst, the larger.
    pub fn due(&mut self, now: Duration) -> u32 {
        let mut count = 0;
        if self.second.is_some_and(|at| now >= at) {
            self.second = None;
            count = self.config.master_repeat;
        }
        if let Some(at) = self.refresh.filter(|at| now >= *at) {
            // The next one a period after this one was due, not after it
            // ran: a late loop does not drift the refresh.
            let period = self.config.master_refresh;
            let mut next = at + period;
            while next <= now {
                next += period;
            }
            self.refresh = Some(next);
            count = count.max(self.config.master_refresh_repeat);
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every burst from `from` to `until`, polled the way the task does
    /// (sleep until `next`, then `due`).
    fn bursts(s: &mut Schedule, until: Duration) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            let Some(at) = s.next().filter(|at| *at <= until) else {
                break;
            };
            let n = s.due(at);
            if n > 0 {
                out.push((at.as_millis() as u64, n));
            }
        }
        out
    }

    #[test]
    fn keepalived_defaults_send_a_second_burst_five_seconds_later_and_no_refresh() {
        let mut s = Schedule::new(Config::default());
        assert_eq!(s.master(ms(1000)), 5);
        assert_eq!(s.due(ms(5999)), 0, "not before the delay");
        assert_eq!(bursts(&mut s, ms(60_000)), vec![(6000, 5)]);
        assert_eq!(s.next(), None);
    }

    #[test]
    fn refresh_repeats_while_master_and_stops_with_it() {
        let mut s = Schedule::new(Config {
            master_repeat: 3,
            master_delay: ms(1000),
            master_refresh: ms(1500),
            master_refresh_repeat: 2,
        });
        assert_eq!(s.master(ms(0)), 3);
        assert_eq!(
            bursts(&mut s, ms(4600)),
            vec![(1000, 3), (1500, 2), (3000, 2), (4500, 2)]
        );
        // A late poll sends one burst, not the missed ones, and keeps the
        // period's phase.
        assert_eq!(s.due(ms(9100)), 2);
        assert_eq!(s.next(), Some(ms(10_500)));
        s.stop();
        assert_eq!(s.next(), None);
        assert_eq!(s.due(ms(20_000)), 0);
        // Master again: the schedule starts over.
        assert_eq!(s.master(ms(30_000)), 3);
        assert_eq!(s.next(), Some(ms(31_000)));
    }

    #[test]
    fn no_delay_and_no_refresh_means_one_burst() {
        let mut s = Schedule::new(Config {
            master_delay: Duration::ZERO,
            ..Config::default()
        });
        assert_eq!(s.master(ms(0)), 5);
        assert_eq!(s.next(), None);
    }

    #[test]
    fn a_second_burst_and_a_refresh_together_make_one_burst() {
        let mut s = Schedule::new(Config {
            master_repeat: 5,
            master_delay: ms(1000),
            master_refresh: ms(1000),
            master_refresh_repeat: 1,
        });
        s.master(ms(0));
        assert_eq!(bursts(&mut s, ms(2000)), vec![(1000, 5), (2000, 1)]);
    }
}
