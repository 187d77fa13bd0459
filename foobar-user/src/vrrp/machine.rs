//! The VRRP state machine of RFC 5798 §6.4 for one virtual router, over a
//! clock the caller passes in (`now`: time since any fixed origin). It
//! decides and returns actions; it never sends, sleeps or touches an
//! interface, so every transition is testable with a fake clock.
//!
//! Beyond the RFC, as keepalived does it: a preempt delay (a lower-priority
//! master is preempted only `preempt_delay` after the first of its adverts
//! we saw; an advert of our priority or higher resets that), and a priority
//! that tracking may change at run time (the "effective" priority).
use std::{net::Ipv4Addr, time::Duration};

use super::codec::{MAX_ADVERT_INTERVAL_CS, PRIORITY_OWNER, PRIORITY_RESIGN};

/// One centisecond, the unit of advert intervals on the wire.
const CENTISECOND: Duration = Duration::from_millis(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub vrid: u8,
    /// 1..=255; 255 means we own the addresses.
    pub priority: u8,
    /// Advertisement_Interval, in centiseconds (1..=4095).
    pub advert_interval_cs: u16,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// Our primary address on the interface: ties between equal
    /// priorities go to the higher one.
    pub primary: Ipv4Addr,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("VRRP instance {vrid}: priority 0 is reserved for a master giving up; use 1..=255")]
    Priority { vrid: u8 },
    #[error(
        "VRRP instance {vrid}: advert interval {interval_cs} cs is outside 1..=4095 cs \
         (10 ms to 40.95 s)"
    )]
    Interval { vrid: u8, interval_cs: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Initialize,
    Backup,
    Master,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
        }
    }
}

/// What happened, as the vrrp task saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Startup,
    Shutdown,
    /// A valid advert for our VRID (the codec's `validate` passed).
    Advert {
        src: Ipv4Addr,
        priority: u8,
        interval_cs: u16,
    },
    /// `now` reached `next_deadline()` (early calls do nothing).
    Timer,
    /// Tracking changed our effective priority (clamped to 1..=255).
    Priority(u8),
}

/// Why a transition happened, for the log line and `foobar status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Initialize → Backup.
    Startup,
    /// Initialize → Master: priority 255.
    AddressOwner,
    /// Backup → Master: no advert within Master_Down_Interval.
    MasterDown,
    /// Backup → Master: the master sent priority 0 (it stopped).
    MasterResigned { master: Ipv4Addr },
    /// Backup → Master: we ignored a lower-priority master's adverts.
    Preempted { master: Ipv4Addr, priority: u8 },
    /// Master → Backup: a higher priority (or equal and higher address).
    HigherPriority { master: Ipv4Addr, priority: u8 },
    /// Backup or Master → Initialize.
    Shutdown,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Startup => write!(f, "startup"),
            Cause::AddressOwner => write!(f, "startup as the address owner (priority 255)"),
            Cause::MasterDown => write!(f, "no advert within Master_Down_Interval"),
            Cause::MasterResigned { master } => write!(f, "master {master} resigned (priority 0)"),
            Cause::Preempted { master, priority } => {
                write!(f, "preempted master {master} of lower priority {priority}")
            }
            Cause::HigherPriority { master, priority } => {
                write!(f, "advert from {master} with priority {priority} wins")
            }
            Cause::Shutdown => write!(f, "shutdown"),
        }
    }
}

/// What the caller must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Log it, count it, show it.
    Transition {
        from: State,
        to: State,
        cause: Cause,
    },
    /// Send one advert with this priority (0 when resigning).
    SendAdvert { priority: u8 },
    /// Add the virtual addresses to the interface.
    AddVips,
    /// Announce them (gratuitous ARP; the caller repeats it as configured).
    GratuitousArp,
    /// Remove them from the interface (idempotent).
    RemoveVips,
}

/// The last transition, with when it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub at: Duration,
    pub from: State,
    pub to: State,
    pub cause: Cause,
}

#[derive(Clone, Debug)]
pub struct Machine {
    config: Config,
    state: State,
    /// Effective priority: configured, then changed by tracking.
    priority: u8,
    /// Master_Adver_Interval: ours at start, learned from the master in
    /// Backup.
    master_interval_cs: u16,
    /// Master_Down_Timer (Backup) or Adver_Timer (Master).
    deadline: Option<Duration>,
    /// The master as far as we know: the last advert's sender in Backup,
    /// ourselves in Master.
    master: Option<Ipv4Addr>,
    /// Why we will become master if the down timer fires.
    pending: Option<Cause>,
    /// When a lower-priority master may be preempted (preempt delay).
    preempt_at: Option<Duration>,
    last_transition: Option<Transition>,
}

impl Machine {
    pub fn new(config: Config) -> Result<Machine, ConfigError> {
        if config.priority == PRIORITY_RESIGN {
            return Err(ConfigError::Priority { vrid: config.vrid });
        }
        if config.advert_interval_cs == 0 || config.advert_interval_cs > MAX_ADVERT_INTERVAL_CS {
            return Err(ConfigError::Interval {
                vrid: config.vrid,
                interval_cs: config.advert_interval_cs,
            });
        }
        Ok(Machine {
            priority: config.priority,
            master_interval_cs: config.advert_interval_cs,
            config,
            state: State::Initialize,
            deadline: None,
            master: None,
            pending: None,
            preempt_at: None,
            last_transition: None,
        })
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Effective priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    pub fn master(&self) -> Option<Ipv4Addr> {
        self.master
    }

    /// Master_Adver_Interval, in centiseconds.
    pub fn master_interval_cs(&self) -> u16 {
        self.master_interval_cs
    }

    pub fn last_transition(&self) -> Option<Transition> {
        self.last_transition
    }

    /// When the caller must deliver `Event::Timer` next.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Skew_Time = ((256 − Priority) × Master_Adver_Interval) / 256.
    pub fn skew(&self) -> Duration {
        cs(self.master_interval_cs) * (256 - u32::from(self.priority)) / 256
    }

    /// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        cs(self.master_interval_cs) * 3 + self.skew()
    }

    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        match (self.state, event) {
            (State::Initialize, Event::Startup) => {
                if self.priority == PRIORITY_OWNER {
                    self.become_master(now, Cause::AddressOwner)
                } else {
                    self.master_interval_cs = self.config.advert_interval_cs;
                    self.become_backup(now, Cause::Startup)
                }
            }
            (State::Backup | State::Master, Event::Shutdown) => {
                let from = self.state;
                let mut actions = vec![self.transition(now, State::Initialize, Cause::Shutdown)];
                if from == State::Master {
                    actions.push(Action::SendAdvert {
                        priority: PRIORITY_RESIGN,
                    });
                    actions.push(Action::RemoveVips);
                }
                self.deadline = None;
                self.master = None;
                self.pending = None;
                self.preempt_at = None;
                actions
            }
            (State::Backup, Event::Timer) if self.due(now) => {
                let cause = self.pending.unwrap_or(Cause::MasterDown);
                self.become_master(now, cause)
            }
            (
                State::Backup,
                Event::Advert {
                    src,
                    priority,
                    interval_cs,
                },
            ) => self.backup_advert(now, src, priority, interval_cs),
            (State::Master, Event::Timer) if self.due(now) => self.send_advert(now),
            (
                State::Master,
                Event::Advert {
                    src,
                    priority,
                    interval_cs,
                },
            ) => {
                if priority == PRIORITY_RESIGN {
                    // Another master gave up: assert ourselves at once.
                    self.send_advert(now)
                } else if priority > self.priority
                    || (priority == self.priority && src > self.config.primary)
                {
                    self.master_interval_cs = interval_cs;
                    self.master = Some(src);
                    self.become_backup(
                        now,
                        Cause::HigherPriority {
                            master: src,
                            priority,
                        },
                    )
                } else {
                    // RFC 5798 discards it; like keepalived, assert
                    // ourselves at once (an advert, and gratuitous ARP so
                    // clients that followed the other master come back):
                    // after a split brain heals, the loser steps down on
                    // this advert and the clients follow the winner.
                    let mut actions = self.send_advert(now);
                    actions.push(Action::GratuitousArp);
                    actions
                }
            }
            (_, Event::Priority(priority)) => {
                self.priority = priority.max(1);
                // The master says so at once rather than at the next tick,
                // so a backup with preemption starts counting down now.
                if self.state == State::Master {
                    self.send_advert(now)
                } else {
                    Vec::new()
                }
            }
            // Startup twice, shutdown before startup, adverts while
            // initializing, early or stray timers: nothing to do.
            _ => Vec::new(),
        }
    }

    fn backup_advert(
        &mut self,
        now: Duration,
        src: Ipv4Addr,
        priority: u8,
        interval_cs: u16,
    ) -> Vec<Action> {
        if priority == PRIORITY_RESIGN {
            self.deadline = Some(now + self.skew());
            self.pending = Some(Cause::MasterResigned { master: src });
            return Vec::new();
        }
        let delay_running =
            !self.config.preempt_delay.is_zero() && self.preempt_at.is_none_or(|at| at > now);
        let accept = !self.config.preempt || priority >= self.priority || delay_running;
        self.master = Some(src);
        if accept {
            self.master_interval_cs = interval_cs;
            self.deadline = Some(now + self.master_down_interval());
            self.pending = None;
            if priority >= self.priority {
                self.preempt_at = None;
            } else if self.config.preempt && self.preempt_at.is_none() {
                self.preempt_at = Some(now + self.config.preempt_delay);
            }
        } else {
            // Discarded: the down timer runs out and we take over.
            self.pending = Some(Cause::Preempted {
                master: src,
                priority,
            });
        }
        Vec::new()
    }

    fn due(&self, now: Duration) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    fn become_master(&mut self, now: Duration, cause: Cause) -> Vec<Action> {
        let mut actions = vec![self.transition(now, State::Master, cause)];
        self.master = Some(self.config.primary);
        self.pending = None;
        self.preempt_at = None;
        actions.extend(self.send_advert(now));
        actions.push(Action::AddVips);
        actions.push(Action::GratuitousArp);
        actions
    }

    fn become_backup(&mut self, now: Duration, cause: Cause) -> Vec<Action> {
        let actions = vec![
            self.transition(now, State::Backup, cause),
            // Also on startup: a daemon that died as master left them.
            Action::RemoveVips,
        ];
        self.pending = None;
        self.preempt_at = None;
        self.deadline = Some(now + self.master_down_interval());
        actions
    }

    fn send_advert(&mut self, now: Duration) -> Vec<Action> {
        self.deadline = Some(now + cs(self.config.advert_interval_cs));
        vec![Action::SendAdvert {
            priority: self.priority,
        }]
    }

    fn transition(&mut self, now: Duration, to: State, cause: Cause) -> Action {
        let from = self.state;
        self.state = to;
        self.last_transition = Some(Transition {
            at: now,
            from,
            to,
            cause,
        });
        Action::Transition { from, to, cause }
    }
}

fn cs(centiseconds: u16) -> Duration {
    CENTISECOND * u32::from(centiseconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::codec::{self, Advert, Instance, Received, MULTICAST_V4};

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);
    const HI: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 12);
    const LO: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    fn config() -> Config {
        Config {
            vrid: 51,
            priority: 100,
            advert_interval_cs: 100,
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary: ME,
        }
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn adv(src: Ipv4Addr, priority: u8, interval_cs: u16) -> Event {
        Event::Advert {
            src,
            priority,
            interval_cs,
        }
    }

    fn to(from: State, to: State, cause: Cause) -> Action {
        Action::Transition { from, to, cause }
    }

    use Action::{AddVips, GratuitousArp, RemoveVips, SendAdvert};
    use State::{Backup, Initialize, Master};

    // Priority 100, 1 s: Skew_Time = 156/256 s = 609.375 ms, so
    // Master_Down_Interval = 3.609375 s. Priority 200: 218.75 ms skew.
    // Learned 2 s interval at priority 100: 7.21875 s.
    const DOWN_100: u64 = 3_609_375;
    const SKEW_100: u64 = 609_375;

    /// Startup at 0, then the down timer fires: master since DOWN_100,
    /// next advert at DOWN_100 + 1 s.
    fn as_master() -> Vec<(u64, Event)> {
        vec![(0, Event::Startup), (DOWN_100, Event::Timer)]
    }

    struct Case {
        name: &'static str,
        config: Config,
        given: Vec<(u64, Event)>,
        when: (u64, Event),
        state: State,
        actions: Vec<Action>,
        deadline_us: Option<u64>,
        master: Option<Ipv4Addr>,
    }

    fn cases() -> Vec<Case> {
        let owner = Config {
            priority: 255,
            ..config()
        };
        let no_preempt = Config {
            preempt: false,
            ..config()
        };
        let delayed = Config {
            preempt_delay: Duration::from_secs(5),
            ..config()
        };
        let lo = |t| (t, adv(LO, 50, 100));
        vec![
            // --- Initialize (§6.4.1)
            Case {
                name: "initialize: the address owner starts as master",
                config: owner,
                given: vec![],
                when: (0, Event::Startup),
                state: Master,
                actions: vec![
                    to(Initialize, Master, Cause::AddressOwner),
                    SendAdvert { priority: 255 },
                    AddVips,
                    GratuitousArp,
                ],
                deadline_us: Some(1_000_000),
                master: Some(ME),
            },
            Case {
                name: "initialize: others start as backup, removing stale VIPs",
                config: config(),
                given: vec![],
                when: (0, Event::Startup),
                state: Backup,
                actions: vec![to(Initialize, Backup, Cause::Startup), RemoveVips],
                deadline_us: Some(DOWN_100),
                master: None,
            },
            Case {
                name: "initialize: adverts before startup are ignored",
                config: config(),
                given: vec![],
                when: (0, adv(HI, 200, 100)),
                state: Initialize,
                actions: vec![],
                deadline_us: None,
                master: None,
            },
            Case {
                name: "initialize: shutdown before startup does nothing",
                config: config(),
                given: vec![],
                when: (0, Event::Shutdown),
                state: Initialize,
                actions: vec![],
                deadline_us: None,
                master: None,
            },
            // --- Backup (§6.4.2)
            Case {
                name: "backup: shutdown goes back to initialize",
                config: config(),
                given: vec![(0, Event::Startup)],
                when: (100_000, Event::Shutdown),
                state: Initialize,
                actions: vec![to(Backup, Initialize, Cause::Shutdown)],
                deadline_us: None,
                master: None,
            },
            Case {
                name: "backup: master down timer expires, becomes master",
                config: config(),
                given: vec![(0, Event::Startup)],
                when: (DOWN_100, Event::Timer),
                state: Master,
                actions: vec![
                    to(Backup, Master, Cause::MasterDown),
                    SendAdvert { priority: 100 },
                    AddVips,
                    GratuitousArp,
                ],
                deadline_us: Some(DOWN_100 + 1_000_000),
                master: Some(ME),
            },
            Case {
                name: "backup: an early timer does nothing",
                config: config(),
                given: vec![(0, Event::Startup)],
                when: (DOWN_100 - 1, Event::Timer),
                state: Backup,
                actions: vec![],
                deadline_us: Some(DOWN_100),
                master: None,
            },
            Case {
                name: "backup: a higher-priority advert resets the down timer",
                config: config(),
                given: vec![(0, Event::Startup)],
                when: (1_000_000, adv(HI, 200, 100)),
                state: Backup,
                actions: vec![],
                deadline_us: Some(1_000_000 + DOWN_100),
                master: Some(HI),
            },
            Case {
                name: "backup: learns the master's advert interval",
                config: config(),
                given: vec![(0, Event::Startup)],
                when: (1_000_000, adv(HI, 200, 200)),
                state: Backup,
                actions: vec![],
                deadline_us: Some(1_000_000 + 7_218_750),
                master: Some(HI),
            },
            Case {
                name: "backup: without preempt a lower priority is accepted",
                config: no_preempt.clone(),
                given: vec![(0, Event::Startup)],
                when: lo(1_000_000),
                state: Backup,
                actions: vec![],
                deadline_us: Some(1_000_000 + DOWN_100),
                master: Some(LO),
            },
            Case {
                name: "backup: with preempt a lower priority is discarded",
                config: config(),
                given: vec![(0, Event::Startup)],
                when: lo(1_000_000),
                state: Backup,
                actions: vec![],
                deadline_us: Some(DOWN_100),
                master: Some(LO),
            },
            Case {
                name: "backup: equal priority is accepted with preempt",
                config: config(),
                given: vec![(0, Event::Startup)],
                when: (1_000_000, adv(LO, 100, 100)),
                state: Backup,
                actions: vec![],
                deadline_us: Some(1_000_000 + DOWN_100),
                master: Some(LO),
            },
            Case {
                name: "backup: preempts a lower-priority master when the timer runs out",
                config: config(),
                given: vec![(0, Event::Startup), lo(1_000_000)],
                when: (DOWN_100, Event::Timer),
                state: Master,
                actions: vec![
                    to(
                        Backup,
                        Master,
                        Cause::Preempted {
                            master: LO,
                            priority: 50,
                        },
                    ),
                    SendAdvert { priority: 100 },
                    AddVips,
                    GratuitousArp,
                ],
                deadline_us: Some(DOWN_100 + 1_000_000),
                master: Some(ME),
            },
            Case {
                name: "backup: priority 0 cuts the down timer to Skew_Time",
                config: config(),
                given: vec![(0, Event::Startup), (1_000_000, adv(HI, 200, 100))],
                when: (2_000_000, adv(HI, 0, 100)),
                state: Backup,
                actions: vec![],
                deadline_us: Some(2_000_000 + SKEW_100),
                master: Some(HI),
            },
            Case {
                name: "backup: takes over Skew_Time after the master resigned",
                config: config(),
                given: vec![
                    (0, Event::Startup),
                    (1_000_000, adv(HI, 200, 100)),
                    (2_000_000, adv(HI, 0, 100)),
                ],
                when: (2_000_000 + SKEW_100, Event::Timer),
                state: Master,
                actions: vec![
                    to(Backup, Master, Cause::MasterResigned { master: HI }),
                    SendAdvert { priority: 100 },
                    AddVips,
                    GratuitousArp,
                ],
                deadline_us: Some(3_000_000 + SKEW_100),
                master: Some(ME),
            },
            Case {
                name: "backup: an advert after a resignation restores the full wait",
                config: config(),
                given: vec![
                    (0, Event::Startup),
                    (2_000_000, adv(HI, 0, 100)),
                    (2_100_000, adv(LO, 150, 100)),
                ],
                when: (2_000_000 + SKEW_100, Event::Timer),
                state: Backup,
                actions: vec![],
                deadline_us: Some(2_100_000 + DOWN_100),
                master: Some(LO),
            },
            Case {
                name: "backup: preempt delay accepts a lower master until it runs out",
                config: delayed.clone(),
                given: vec![(0, Event::Startup), lo(1_000_000)],
                when: lo(5_999_999),
                state: Backup,
                actions: vec![],
                deadline_us: Some(5_999_999 + DOWN_100),
                master: Some(LO),
            },
            Case {
                name: "backup: preempt delay over, the lower master's adverts are discarded",
                config: delayed.clone(),
                given: vec![
                    (0, Event::Startup),
                    lo(1_000_000),
                    lo(2_000_000),
                    lo(3_000_000),
                    lo(4_000_000),
                    lo(5_000_000),
                ],
                when: lo(6_000_000),
                state: Backup,
                actions: vec![],
                deadline_us: Some(5_000_000 + DOWN_100),
                master: Some(LO),
            },
            Case {
                name: "backup: a higher advert restarts the preempt delay",
                config: delayed,
                given: vec![
                    (0, Event::Startup),
                    lo(1_000_000),
                    (2_000_000, adv(HI, 200, 100)),
                    lo(3_000_000),
                ],
                when: lo(7_000_000),
                state: Backup,
                actions: vec![],
                deadline_us: Some(7_000_000 + DOWN_100),
                master: Some(LO),
            },
            Case {
                name: "backup: a raised priority shortens the next wait",
                config: config(),
                given: vec![(0, Event::Startup), (500_000, Event::Priority(200))],
                when: (1_000_000, adv(HI, 250, 100)),
                state: Backup,
                actions: vec![],
                deadline_us: Some(1_000_000 + 3_218_750),
                master: Some(HI),
            },
            // --- Master (§6.4.3)
            Case {
                name: "master: the advert timer sends an advert",
                config: config(),
                given: as_master(),
                when: (DOWN_100 + 1_000_000, Event::Timer),
                state: Master,
                actions: vec![SendAdvert { priority: 100 }],
                deadline_us: Some(DOWN_100 + 2_000_000),
                master: Some(ME),
            },
            Case {
                name: "master: an early timer does nothing",
                config: config(),
                given: as_master(),
                when: (DOWN_100 + 999_999, Event::Timer),
                state: Master,
                actions: vec![],
                deadline_us: Some(DOWN_100 + 1_000_000),
                master: Some(ME),
            },
            Case {
                name: "master: shutdown sends priority 0 and removes the VIPs",
                config: config(),
                given: as_master(),
                when: (4_000_000, Event::Shutdown),
                state: Initialize,
                actions: vec![
                    to(Master, Initialize, Cause::Shutdown),
                    SendAdvert { priority: 0 },
                    RemoveVips,
                ],
                deadline_us: None,
                master: None,
            },
            Case {
                name: "master: a priority 0 advert is answered at once",
                config: config(),
                given: as_master(),
                when: (4_000_000, adv(HI, 0, 100)),
                state: Master,
                actions: vec![SendAdvert { priority: 100 }],
                deadline_us: Some(5_000_000),
                master: Some(ME),
            },
            Case {
                name: "master: a higher priority wins whatever its address",
                config: config(),
                given: as_master(),
                when: (4_000_000, adv(LO, 200, 200)),
                state: Backup,
                actions: vec![
                    to(
                        Master,
                        Backup,
                        Cause::HigherPriority {
                            master: LO,
                            priority: 200,
                        },
                    ),
                    RemoveVips,
                ],
                deadline_us: Some(4_000_000 + 7_218_750),
                master: Some(LO),
            },
            Case {
                name: "master: equal priority and a higher address wins",
                config: config(),
                given: as_master(),
                when: (4_000_000, adv(HI, 100, 100)),
                state: Backup,
                actions: vec![
                    to(
                        Master,
                        Backup,
                        Cause::HigherPriority {
                            master: HI,
                            priority: 100,
                        },
                    ),
                    RemoveVips,
                ],
                deadline_us: Some(4_000_000 + DOWN_100),
                master: Some(HI),
            },
            Case {
                name: "master: equal priority and a lower address is answered with an advert and gratuitous ARP",
                config: config(),
                given: as_master(),
                when: (4_000_000, adv(LO, 100, 100)),
                state: Master,
                actions: vec![SendAdvert { priority: 100 }, GratuitousArp],
                deadline_us: Some(4_000_000 + 1_000_000),
                master: Some(ME),
            },
            Case {
                name: "master: a lower priority is answered with an advert and gratuitous ARP",
                config: config(),
                given: as_master(),
                when: (4_000_000, adv(HI, 50, 100)),
                state: Master,
                actions: vec![SendAdvert { priority: 100 }, GratuitousArp],
                deadline_us: Some(4_000_000 + 1_000_000),
                master: Some(ME),
            },
            Case {
                name: "master: yields to a higher priority even without preempt",
                config: no_preempt,
                given: as_master(),
                when: (4_000_000, adv(HI, 200, 100)),
                state: Backup,
                actions: vec![
                    to(
                        Master,
                        Backup,
                        Cause::HigherPriority {
                            master: HI,
                            priority: 200,
                        },
                    ),
                    RemoveVips,
                ],
                deadline_us: Some(4_000_000 + DOWN_100),
                master: Some(HI),
            },
            Case {
                name: "master: tracking lowers the priority, advertised at once",
                config: config(),
                given: as_master(),
                when: (4_000_000, Event::Priority(50)),
                state: Master,
                actions: vec![SendAdvert { priority: 50 }],
                deadline_us: Some(5_000_000),
                master: Some(ME),
            },
            Case {
                name: "master: startup again does nothing",
                config: config(),
                given: as_master(),
                when: (4_000_000, Event::Startup),
                state: Master,
                actions: vec![],
                deadline_us: Some(DOWN_100 + 1_000_000),
                master: Some(ME),
            },
        ]
    }

    #[test]
    fn every_transition_of_rfc5798_section_6_4() {
        for case in cases() {
            let mut m = Machine::new(case.config).unwrap();
            for (t, event) in case.given {
                m.handle(us(t), event);
            }
            let actions = m.handle(us(case.when.0), case.when.1);
            assert_eq!(actions, case.actions, "{}: actions", case.name);
            assert_eq!(m.state(), case.state, "{}: state", case.name);
            assert_eq!(
                m.next_deadline(),
                case.deadline_us.map(us),
                "{}: deadline",
                case.name
            );
            assert_eq!(m.master(), case.master, "{}: master", case.name);
        }
    }

    #[test]
    fn timers_follow_the_rfc_formulas() {
        // (priority, interval cs, Skew_Time µs, Master_Down_Interval µs)
        let rows = [
            (100, 100, 609_375, 3_609_375),
            (255, 100, 3_906, 3_003_906),
            (1, 100, 996_093, 3_996_093),
            (200, 10, 21_875, 321_875),
            (150, 4095, 16_955_859, 139_805_859),
        ];
        for (priority, interval_cs, skew_us, down_us) in rows {
            let m = Machine::new(Config {
                priority,
                advert_interval_cs: interval_cs,
                ..config()
            })
            .unwrap();
            // Truncated to whole microseconds, as keepalived's timers are.
            assert_eq!(
                m.skew().as_micros() as u64,
                skew_us,
                "skew p{priority} {interval_cs}cs"
            );
            assert_eq!(
                m.master_down_interval().as_micros() as u64,
                down_us,
                "down p{priority} {interval_cs}cs"
            );
        }
    }

    #[test]
    fn config_errors_are_refused() {
        assert_eq!(
            Machine::new(Config {
                priority: 0,
                ..config()
            })
            .unwrap_err(),
            ConfigError::Priority { vrid: 51 }
        );
        for interval_cs in [0, 4096] {
            assert_eq!(
                Machine::new(Config {
                    advert_interval_cs: interval_cs,
                    ..config()
                })
                .unwrap_err(),
                ConfigError::Interval {
                    vrid: 51,
                    interval_cs
                }
            );
        }
    }

    #[test]
    fn tracking_cannot_make_the_priority_zero() {
        let mut m = Machine::new(config()).unwrap();
        m.handle(us(0), Event::Startup);
        m.handle(us(1), Event::Priority(0));
        assert_eq!(m.priority(), 1);
    }

    #[test]
    fn causes_read_as_sentences() {
        let rows = [
            (Cause::Startup, "startup"),
            (
                Cause::AddressOwner,
                "startup as the address owner (priority 255)",
            ),
            (Cause::MasterDown, "no advert within Master_Down_Interval"),
            (
                Cause::MasterResigned { master: HI },
                "master 192.168.1.12 resigned (priority 0)",
            ),
            (
                Cause::Preempted {
                    master: LO,
                    priority: 50,
                },
                "preempted master 192.168.1.10 of lower priority 50",
            ),
            (
                Cause::HigherPriority {
                    master: HI,
                    priority: 200,
                },
                "advert from 192.168.1.12 with priority 200 wins",
            ),
            (Cause::Shutdown, "shutdown"),
        ];
        for (cause, text) in rows {
            assert_eq!(cause.to_string(), text);
        }
    }

    #[test]
    fn the_last_transition_is_kept_for_status() {
        let mut m = Machine::new(config()).unwrap();
        assert_eq!(m.last_transition(), None);
        m.handle(us(0), Event::Startup);
        m.handle(us(DOWN_100), Event::Timer);
        m.handle(us(4_000_000), adv(HI, 200, 100));
        assert_eq!(
            m.last_transition(),
            Some(Transition {
                at: us(4_000_000),
                from: Master,
                to: Backup,
                cause: Cause::HigherPriority {
                    master: HI,
                    priority: 200
                },
            })
        );
    }

    /// Two or more routers on one simulated segment, adverts going through
    /// the codec (encode, decode, validate) like on the wire.
    struct Segment {
        nodes: Vec<Node>,
        now: Duration,
        link_up: bool,
        vips: Vec<Ipv4Addr>,
    }

    struct Node {
        machine: Machine,
        alive: bool,
        owns_vips: bool,
    }

    impl Segment {
        fn new(configs: Vec<Config>) -> Segment {
            Segment {
                nodes: configs
                    .into_iter()
                    .map(|c| Node {
                        machine: Machine::new(c).unwrap(),
                        alive: false,
                        owns_vips: false,
                    })
                    .collect(),
                now: Duration::ZERO,
                link_up: true,
                vips: vec![Ipv4Addr::new(10, 0, 0, 100)],
            }
        }

        fn event(&mut self, i: usize, event: Event) {
            let mut queue = std::collections::VecDeque::from([(i, event)]);
            while let Some((i, event)) = queue.pop_front() {
                if !self.nodes[i].alive && event != Event::Startup {
                    continue;
                }
                self.nodes[i].alive = true;
                for action in self.nodes[i].machine.handle(self.now, event) {
                    match action {
                        Action::SendAdvert { priority } if self.link_up => {
                            let cfg = self.nodes[i].machine.config().clone();
                            let advert = Advert {
                                vrid: cfg.vrid,
                                priority,
                                interval_cs: cfg.advert_interval_cs,
                                addrs: self.vips.clone(),
                            };
                            let bytes = advert.encode(cfg.primary, MULTICAST_V4).unwrap();
                            for j in (0..self.nodes.len()).filter(|&j| j != i) {
                                let decoded =
                                    Advert::decode(&bytes, cfg.primary, MULTICAST_V4).unwrap();
                                let theirs = self.nodes[j].machine.config();
                                let instance = Instance {
                                    vrid: theirs.vrid,
                                    priority: theirs.priority,
                                    primary: theirs.primary,
                                    addrs: &self.vips,
                                    unicast_peers: &[],
                                };
                                let received = Received {
                                    src: cfg.primary,
                                    ttl: 255,
                                    advert: decoded,
                                };
                                if codec::validate(&received, &instance).is_ok() {
                                    queue.push_back((
                                        j,
                                        Event::Advert {
                                            src: received.src,
                                            priority: received.advert.priority,
                                            interval_cs: received.advert.interval_cs,
                                        },
                                    ));
                                }
                            }
                        }
                        Action::AddVips => self.nodes[i].owns_vips = true,
                        Action::RemoveVips => self.nodes[i].owns_vips = false,
                        _ => {}
                    }
                }
            }
        }

        fn crash(&mut self, i: usize) {
            // kill -9: no shutdown, no advert, the machine's state is lost.
            let config = self.nodes[i].machine.config().clone();
            self.nodes[i] = Node {
                machine: Machine::new(config).unwrap(),
                alive: false,
                owns_vips: false,
            };
        }

        /// Advance the clock to `until`, firing timers in order.
        fn run_until(&mut self, until: Duration) {
            loop {
                let next = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].alive)
                    .filter_map(|i| self.nodes[i].machine.next_deadline().map(|d| (d, i)))
                    .min();
                match next {
                    Some((d, i)) if d <= until => {
                        self.now = self.now.max(d);
                        self.event(i, Event::Timer);
                    }
                    _ => break,
                }
            }
            self.now = until;
        }

        fn owners(&self) -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|&i| self.nodes[i].owns_vips)
                .collect()
        }

        fn masters(&self) -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|&i| self.nodes[i].alive && self.nodes[i].machine.state() == Master)
                .collect()
        }

        /// Step in 1 ms increments until `cond` holds; the time it took.
        fn time_until(&mut self, limit: Duration, cond: impl Fn(&Segment) -> bool) -> Duration {
            let start = self.now;
            while !cond(self) {
                assert!(self.now - start <= limit, "not within {limit:?}");
                let next = self.now + Duration::from_millis(1);
                self.run_until(next);
            }
            self.now - start
        }
    }

    fn node(last_octet: u8, priority: u8) -> Config {
        Config {
            priority,
            primary: Ipv4Addr::new(192, 168, 1, last_octet),
            ..config()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn pair_elects_the_higher_priority() {
        // (a, b, winner): b starts 300 ms after a. With equal priorities
        // the first one up stays master: a backup accepts an advert of
        // its own priority (RFC 5798 §6.4.2), so addresses only break
        // ties between two masters (next test).
        for (a, b, winner) in [
            (node(10, 200), node(11, 100), 0),
            (node(10, 100), node(11, 200), 1),
            (node(10, 100), node(11, 100), 0),
            (node(20, 100), node(11, 100), 0),
            (node(10, 255), node(11, 254), 0),
            (node(10, 254), node(11, 255), 1),
        ] {
            let mut seg = Segment::new(vec![a, b]);
            seg.event(0, Event::Startup);
            seg.run_until(Duration::from_millis(300));
            seg.event(1, Event::Startup);
            seg.run_until(secs(20));
            assert_eq!(seg.masters(), vec![winner]);
            assert_eq!(seg.owners(), vec![winner]);
            let loser = 1 - winner;
            assert_eq!(seg.nodes[loser].machine.state(), Backup);
            assert_eq!(
                seg.nodes[loser].machine.master(),
                Some(seg.nodes[winner].machine.config().primary)
            );
        }
    }

    #[test]
    fn pair_fails_over_on_crash_and_on_graceful_stop() {
        // Master 200, backup 100: Master_Down_Interval of the backup is
        // 3.609375 s; after a priority 0 advert it waits Skew_Time only.
        let mut seg = Segment::new(vec![node(10, 200), node(11, 100)]);
        seg.event(0, Event::Startup);
        seg.event(1, Event::Startup);
        seg.run_until(secs(10));
        assert_eq!(seg.owners(), vec![0]);

        seg.crash(0);
        let gap = seg.time_until(secs(10), |s| s.owners() == vec![1]);
        // The last advert came at most 1 s before the crash.
        assert!(gap <= us(DOWN_100), "crash takeover after {gap:?}");
        assert!(
            gap >= us(DOWN_100 - 1_000_000),
            "crash takeover too early: {gap:?}"
        );

        // The old master returns and, preempting, takes the VIPs back.
        seg.event(0, Event::Startup);
        seg.time_until(secs(10), |s| s.owners() == vec![0]);
        assert_eq!(seg.masters(), vec![0]);

        seg.run_until(seg.now + Duration::from_millis(500));
        seg.event(0, Event::Shutdown);
        assert_eq!(seg.owners(), Vec::<usize>::new());
        let gap = seg.time_until(secs(5), |s| s.owners() == vec![1]);
        assert!(
            gap <= us(SKEW_100) + Duration::from_millis(1),
            "graceful takeover after {gap:?}"
        );
        assert!(
            gap < secs(1),
            "graceful takeover must be within one advert interval"
        );
    }

    #[test]
    fn a_returning_master_without_preempt_stays_backup() {
        let mut seg = Segment::new(vec![
            Config {
                preempt: false,
                ..node(10, 200)
            },
            node(11, 100),
        ]);
        seg.event(1, Event::Startup);
        seg.run_until(secs(10));
        assert_eq!(seg.owners(), vec![1]);
        seg.event(0, Event::Startup);
        seg.run_until(secs(60));
        assert_eq!(seg.owners(), vec![1]);
        assert_eq!(seg.nodes[0].machine.state(), Backup);
    }

    #[test]
    fn a_returning_master_with_preempt_delay_waits_for_it() {
        let mut seg = Segment::new(vec![
            Config {
                preempt_delay: secs(10),
                ..node(10, 200)
            },
            node(11, 100),
        ]);
        seg.event(1, Event::Startup);
        seg.run_until(secs(10));
        seg.event(0, Event::Startup);
        let took = seg.time_until(secs(30), |s| s.owners() == vec![0]);
        // The first advert seen starts the 10 s delay; then the ignored
        // adverts let the down timer (3.21875 s at priority 200) expire.
        assert!(took >= secs(10), "preempted after only {took:?}");
        assert!(
            took <= secs(10) + secs(1) + us(3_218_750),
            "preempted after {took:?}"
        );
    }

    #[test]
    fn split_brain_heals_within_one_advert_interval() {
        // Equal priorities, started while the link is cut: both become
        // master; when it heals the higher address wins.
        let mut seg = Segment::new(vec![node(10, 100), node(11, 100)]);
        seg.link_up = false;
        seg.event(0, Event::Startup);
        seg.event(1, Event::Startup);
        seg.run_until(secs(10));
        assert_eq!(seg.masters(), vec![0, 1]);
        seg.link_up = true;
        let healed = seg.time_until(secs(5), |s| s.masters().len() == 1);
        assert!(
            healed <= secs(1),
            "two masters for {healed:?} after the link healed"
        );
        assert_eq!(seg.masters(), vec![1]);
        // Cut again, heal again: the same outcome.
        seg.run_until(seg.now + secs(5));
        seg.link_up = false;
        seg.run_until(secs(20));
        assert_eq!(seg.masters(), vec![0, 1], "a cut link makes two masters");
        seg.link_up = true;
        let healed = seg.time_until(secs(5), |s| s.masters().len() == 1);
        assert!(
            healed <= secs(1),
            "two masters for {healed:?} after the link healed"
        );
        assert_eq!(seg.masters(), vec![1]);
        assert_eq!(seg.owners(), vec![1]);
    }

    #[test]
    fn tracking_hands_the_vips_to_the_peer() {
        let mut seg = Segment::new(vec![node(10, 200), node(11, 150)]);
        seg.event(0, Event::Startup);
        seg.event(1, Event::Startup);
        seg.run_until(secs(10));
        assert_eq!(seg.owners(), vec![0]);
        // The datapath detached: tracking drops the master to 100.
        seg.event(0, Event::Priority(100));
        let took = seg.time_until(secs(10), |s| s.owners() == vec![1]);
        // The backup (150, preempt) ignores the 100 adverts from now on.
        assert!(
            took <= us(3_000_000 + 414_062) + Duration::from_millis(1),
            "{took:?}"
        );
        assert_eq!(seg.masters(), vec![1]);
    }
}
