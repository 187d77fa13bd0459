//! One VRRP instance, driven: the clock, the socket and the interface
//! around the pure state machine. It publishes its status (state,
//! priority, master, last transition, counters) on a watch channel; it
//! never touches the datapath or the daemon's state.
use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

pub use super::status::Status;
use super::{
    codec::{self, Advert, DropReason, Instance, Received, MULTICAST_V4},
    garp,
    machine::{self, Action, Event, Machine, State},
    net::{self, Addresses, AdvertSocket, Interface, NetError},
    track::{self, Conditions, Weights},
    vmac::{self, FrameSocket, Macvlan},
};

/// One instance as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub iface: String,
    pub vrid: u8,
    pub priority: u8,
    pub advert_interval_cs: u16,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub vips: Vec<Ipv4Addr>,
    /// The `[[vip]]` names behind `vips` (what tracking looks at).
    pub vip_names: Vec<String>,
    /// What tracking takes off `priority`.
    pub track: Weights,
    /// Unicast mode when non-empty: adverts go to each of these, and only
    /// theirs are accepted.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// The address adverts are sent from (default: the interface's first
    /// address that is not a VIP).
    pub unicast_source: Option<Ipv4Addr>,
    /// When the master repeats its gratuitous ARPs.
    pub garp: garp::Config,
    /// Hold the addresses under the virtual MAC 00:00:5e:00:01:VRID (see
    /// `vmac`); multicast only.
    pub use_vmac: bool,
}

impl Spec {
    /// Where adverts go: each unicast peer, or the VRRP group.
    pub fn destinations(&self) -> Vec<Ipv4Addr> {
        if self.unicast_peers.is_empty() {
            vec![MULTICAST_V4]
        } else {
            self.unicast_peers.clone()
        }
    }
}

/// Run the instance until `stop` says true (or its sender goes away),
/// then resign: priority 0 advert, VIPs removed. `conditions` drives
/// tracking (a sender that goes away leaves the last conditions in force).
pub async fn run(
    spec: Spec,
    mut stop: watch::Receiver<bool>,
    mut conditions: watch::Receiver<Conditions>,
    status: watch::Sender<Status>,
) -> Result<(), NetError> {
    let addresses = Addresses::new(&spec.iface)?;
    let iface = addresses.interface(&spec.vips, spec.unicast_source).await?;
    let socket = AdvertSocket::open(&iface, !spec.unicast_peers.is_empty())?;
    let vmac = match spec.use_vmac {
        false => None,
        true => {
            // An earlier run without use_vmac may have left them here.
            addresses.remove(iface.index, &spec.vips).await?;
            let link = Macvlan::create(&addresses, &iface, spec.vrid).await?;
            // While the macvlan is up, a peer's advert (multicast from the
            // same virtual MAC) is handed to the macvlan only: the macvlan
            // driver takes a multicast frame whose source is one of its
            // MACs for its own, looped back. Listen there too.
            let rx = AdvertSocket::open(
                &Interface {
                    name: link.name.clone(),
                    index: link.index,
                    mac: link.mac,
                    primary: iface.primary,
                },
                false,
            )?;
            Some(Vmac {
                link,
                frames: FrameSocket::open(&iface)?,
                rx,
            })
        }
    };
    let mut machine = Machine::new(machine::Config {
        vrid: spec.vrid,
        priority: spec.priority,
        advert_interval_cs: spec.advert_interval_cs,
        preempt: spec.preempt,
        preempt_delay: spec.preempt_delay,
        primary: iface.primary,
    })?;
    let mut driver = Driver {
        spec: &spec,
        iface: &iface,
        addresses: &addresses,
        socket: &socket,
        vmac: vmac.as_ref(),
        status: Status {
            primary: Some(iface.primary),
            ..Status::new(&spec)
        },
        logged: BTreeSet::new(),
        garp: garp::Schedule::new(spec.garp),
        origin: Instant::now(),
    };
    let origin = driver.origin;
    let now = || Instant::now().duration_since(origin);
    // Tracking applies from the start: a node that cannot serve does not
    // preempt a peer that can.
    let initial = conditions.borrow_and_update().clone();
    driver.track(&mut machine, now(), &initial).await;
    let actions = machine.handle(now(), Event::Startup);
    driver.apply(&machine, actions).await;
    status.send_replace(driver.snapshot(&machine));
    let mut buf = vec![0u8; 2048];
    let mut vbuf = vec![0u8; 2048];
    // A receive error ends the instance, but like a stop: a master that
    // can no longer hear its peers resigns rather than hold on silently.
    let mut failed = None;
    let mut conditions_gone = false;
    loop {
        let next = match (machine.next_deadline(), driver.garp.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = next
            .map(|d| origin + d)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            changed = conditions.changed(), if !conditions_gone => {
                if changed.is_err() {
                    conditions_gone = true;
                } else {
                    let c = conditions.borrow_and_update().clone();
                    driver.track(&mut machine, now(), &c).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                driver.repeat_garp(now());
                // Early for the machine when the wake-up was for a burst:
                // it then does nothing.
                let actions = machine.handle(now(), Event::Timer);
                driver.apply(&machine, actions).await;
            }
            got = socket.recv(&mut buf) => {
                let n = match got {
                    Ok(n) => n,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                if let Some(event) = driver.receive(&machine, &buf[..n]) {
                    let actions = machine.handle(now(), event);
                    driver.apply(&machine, actions).await;
                }
            }
            got = async {
                match &vmac {
                    Some(v) => v.rx.recv(&mut vbuf).await,
                    None => std::future::pending().await,
                }
            } => {
                let n = match got {
                    Ok(n) => n,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                if let Some(event) = driver.receive(&machine, &vbuf[..n]) {
                    let actions = machine.handle(now(), event);
                    driver.apply(&machine, actions).await;
                }
            }
        }
        status.send_replace(driver.snapshot(&machine));
    }
    let actions = machine.handle(now(), Event::Shutdown);
    driver.apply(&machine, actions).await;
    // Whatever the state was, leave no VIP behind.
    if let Err(e) = addresses.remove(iface.index, &spec.vips).await {
        warn!(vrid = spec.vrid, %e, "removing the VIPs on shutdown failed");
    }
    if let Some(v) = &vmac {
        v.link.delete(&addresses).await;
    }
    status.send_replace(driver.snapshot(&machine));
    failed.map_or(Ok(()), Err)
}

/// `use_vmac`: the macvlan holding the VIPs, the socket adverts leave by
/// (from the virtual MAC), and the one peers' adverts arrive on while the
/// macvlan is up.
struct Vmac {
    link: Macvlan,
    frames: FrameSocket,
    rx: AdvertSocket,
}

struct Driver<'a> {
    spec: &'a Spec,
    iface: &'a Interface,
    addresses: &'a Addresses,
    socket: &'a AdvertSocket,
    vmac: Option<&'a Vmac>,
    status: Status,
    /// (sender, reason) pairs already logged: a misconfigured peer is
    /// logged once, then only counted.
    logged: BTreeSet<(Ipv4Addr, DropReason)>,
    garp: garp::Schedule,
    /// The instance's clock starts here.
    origin: Instant,
}

impl Driver<'_> {
    /// The source MAC of gratuitous ARPs: the virtual MAC with `use_vmac`.
    fn mac(&self) -> [u8; 6] {
        self.vmac.map_or(self.iface.mac, |v| v.link.mac)
    }

    /// A later gratuitous ARP burst, if one is due.
    fn repeat_garp(&mut self, now: Duration) {
        let count = self.garp.due(now);
        if count > 0 {
            if let Err(e) = net::announce(self.iface, self.mac(), &self.spec.vips, count) {
                warn!(vrid = self.spec.vrid, %e, "repeating gratuitous ARP failed");
            }
        }
    }

    /// Recompute the effective priority; a change is logged with its
    /// cause and handed to the machine (a master advertises it at once).
    async fn track(&mut self, machine: &mut Machine, now: Duration, conditions: &Conditions) {
        let (priority, why) = track::effective(
            self.spec.priority,
            self.spec.track,
            &self.spec.vip_names,
            conditions,
        );
        if priority == machine.priority() {
            self.status.tracking = why;
            return;
        }
        let vrid = self.spec.vrid;
        if priority < machine.priority() {
            warn!(
                vrid,
                iface = %self.iface.name,
                from = machine.priority(),
                to = priority,
                cause = %why.join("; "),
                "VRRP priority lowered by tracking"
            );
        } else {
            info!(
                vrid,
                iface = %self.iface.name,
                from = machine.priority(),
                to = priority,
                cause = if why.is_empty() { "every tracked condition cleared".to_owned() } else { why.join("; ") },
                "VRRP priority raised by tracking"
            );
        }
        self.status.tracking = why;
        let actions = machine.handle(now, Event::Priority(priority));
        self.apply(machine, actions).await;
    }

    fn snapshot(&self, machine: &Machine) -> Status {
        Status {
            state: machine.state(),
            priority: machine.priority(),
            master: machine.master(),
            last_transition: machine.last_transition(),
            ..self.status.clone()
        }
    }

    fn count_drop(&mut self, src: Option<Ipv4Addr>, reason: DropReason, detail: &str) {
        *self.status.drops.entry(reason).or_default() += 1;
        let src = src.unwrap_or(Ipv4Addr::UNSPECIFIED);
        if reason != DropReason::OtherVrid && self.logged.insert((src, reason)) {
            warn!(
                vrid = self.spec.vrid,
                iface = %self.iface.name,
                %src,
                reason = reason.as_str(),
                "dropping VRRP adverts: {detail} (logged once per sender and reason)"
            );
        }
    }

    /// A received packet, checked; the event it makes, if it passes.
    fn receive(&mut self, machine: &Machine, packet: &[u8]) -> Option<Event> {
        let ip = match net::parse_ipv4(packet) {
            Ok(ip) => ip,
            Err(e) => {
                self.count_drop(None, DropReason::Length, &e.to_string());
                return None;
            }
        };
        let advert = match Advert::decode(ip.payload, ip.src, ip.dst) {
            Ok(a) => a,
            Err(e) => {
                self.count_drop(Some(ip.src), e.reason(), &e.to_string());
                return None;
            }
        };
        let received = Received {
            src: ip.src,
            ttl: ip.ttl,
            advert,
        };
        let ours = Instance {
            vrid: self.spec.vrid,
            priority: machine.config().priority,
            primary: self.iface.primary,
            addrs: &self.spec.vips,
            unicast_peers: &self.spec.unicast_peers,
        };
        if let Err(reason) = codec::validate(&received, &ours) {
            let detail = format!(
                "ttl {}, vrid {}, addresses {:?} (ours: vrid {}, {:?})",
                received.ttl,
                received.advert.vrid,
                received.advert.addrs,
                self.spec.vrid,
                self.spec.vips
            );
            self.count_drop(Some(ip.src), reason, &detail);
            return None;
        }
        self.status.adverts_received += 1;
        Some(Event::Advert {
            src: received.src,
            priority: received.advert.priority,
            interval_cs: received.advert.interval_cs,
        })
    }

    async fn apply(&mut self, machine: &Machine, actions: Vec<Action>) {
        let vrid = self.spec.vrid;
        for action in actions {
            let result = match action {
                Action::Transition { from, to, cause } => {
                    // The peer went silent, or this node lost the
                    // addresses: worth a look. Startup, preemption,
                    // resignation and shutdown are the plan working.
                    let alarming = matches!(cause, machine::Cause::MasterDown)
                        || (from == State::Master && to == State::Backup);
                    if alarming {
                        warn!(
                            vrid,
                            iface = %self.iface.name,
                            from = from.as_str(),
                            to = to.as_str(),
                            %cause,
                            priority = machine.priority(),
                            "VRRP transition"
                        );
                    } else {
                        info!(
                            vrid,
                            iface = %self.iface.name,
                            from = from.as_str(),
                            to = to.as_str(),
                            %cause,
                            priority = machine.priority(),
                            "VRRP transition"
                        );
                    }
                    self.status.last_transition_time = Some(std::time::SystemTime::now());
                    self.status.transitions += 1;
                    if to != State::Master {
                        self.garp.stop();
                    }
                    Ok(())
                }
                Action::SendAdvert { priority } => {
                    let advert = Advert {
                        vrid,
                        priority,
                        interval_cs: self.spec.advert_interval_cs,
                        addrs: self.spec.vips.clone(),
                    };
                    // One per destination: the checksum covers it.
                    self.spec.destinations().into_iter().try_for_each(|dst| {
                        advert
                            .encode(self.iface.primary, dst)
                            .map_err(NetError::from)
                            .and_then(|bytes| match self.vmac {
                                // Multicast only (validation): a frame from
                                // the virtual MAC to the group.
                                Some(v) => v.frames.send(&vmac::advert_frame(
                                    v.link.mac,
                                    self.iface.primary,
                                    &bytes,
                                )),
                                None => self.socket.send(&bytes, dst),
                            })
                            .map(|()| self.status.adverts_sent += 1)
                    })
                }
                Action::AddVips => match self.vmac {
                    Some(v) => v.link.hold(self.addresses, &self.spec.vips).await,
                    None => self.addresses.add(self.iface.index, &self.spec.vips).await,
                },
                Action::RemoveVips => match self.vmac {
                    Some(v) => v.link.release(self.addresses, &self.spec.vips).await,
                    None => {
                        self.addresses
                            .remove(self.iface.index, &self.spec.vips)
                            .await
                    }
                },
                Action::GratuitousArp => {
                    let count = self.garp.master(self.origin.elapsed());
                    net::announce(self.iface, self.mac(), &self.spec.vips, count)
                }
            };
            if let Err(e) = result {
                warn!(vrid, %e, ?action, "VRRP action failed");
            }
        }
    }
}

/// The daemon's running instances.
pub struct Running {
    instances: Vec<RunningInstance>,
}

struct RunningInstance {
    vrid: u8,
    stop: watch::Sender<bool>,
    status: watch::Receiver<Status>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Spawn one task per instance. A task that cannot start (no such
    /// interface, no address on it, no CAP_NET_RAW) logs why and ends:
    /// this node then never takes those addresses, which is the safe side.
    /// Every instance follows `conditions` (tracking).
    pub fn spawn(specs: Vec<Spec>, conditions: &watch::Receiver<Conditions>) -> Running {
        let instances = specs
            .into_iter()
            .map(|spec| {
                let vrid = spec.vrid;
                let (stop, stop_rx) = watch::channel(false);
                let (status_tx, status) = watch::channel(Status::new(&spec));
                let iface = spec.iface.clone();
                let conditions = conditions.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = run(spec, stop_rx, conditions, status_tx).await {
                        tracing::error!(vrid, %iface, %e, "VRRP instance stopped; this node will not hold its addresses");
                    }
                });
                RunningInstance {
                    vrid,
                    stop,
                    status,
                    task,
                }
            })
            .collect();
        Running { instances }
    }

    pub fn statuses(&self) -> Vec<Status> {
        self.instances
            .iter()
            .map(|i| i.status.borrow().clone())
            .collect()
    }

    /// Resign every instance (priority 0 advert, VIPs removed), waiting at
    /// most `limit` for all of them.
    pub async fn stop(self, limit: Duration) {
        for i in &self.instances {
            let _ = i.stop.send(true);
        }
        for mut i in self.instances {
            if tokio::time::timeout(limit, &mut i.task).await.is_err() {
                warn!(vrid = i.vrid, "VRRP instance did not stop in time; aborted");
                i.task.abort();
            }
        }
    }
}
