//! The `failover` section: how long the VIP is away when the master LB
//! node fails, with foobar's VRRP and with keepalived.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use foobar_tests::lab::{self, Lab, LabOptions, Node, VIP};

use crate::common::{mac_text, median};

/// Who moves the VIP between the two LB nodes of the failover section.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Vrrpd {
    /// The daemons' own `[[vrrp]]` instances.
    Foobar,
    /// keepalived in both LB namespaces; the daemons only forward.
    Keepalived,
}

impl Vrrpd {
    fn name(self) -> &'static str {
        match self {
            Vrrpd::Foobar => "foobar ↔ foobar",
            Vrrpd::Keepalived => "keepalived ↔ keepalived",
        }
    }
}

/// What takes the master away in a failover round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// The master's link goes down (`ip link set eth0 down` in its
    /// namespace): no adverts, no forwarding, as a dead node or cable.
    Node,
    /// SIGTERM to the master's VRRP speaker: priority 0, VIP removed.
    Graceful,
}

pub const FAILOVER_MASTER: u8 = 200;
pub const FAILOVER_BACKUP: u8 = 100;

/// Starts the pair with lb master: `[[vrrp]]` in both daemons' configs,
/// or keepalived beside daemons without one.
pub fn failover_pair_start(lab: &mut Lab, vrrpd: Vrrpd, advert_ms: u64) -> Result<()> {
    use foobar_tests::failover::{self as fo, Vrrp};
    let foobar = lab::foobar_bin()?;
    let vrrp = |priority| {
        (vrrpd == Vrrpd::Foobar).then_some(Vrrp {
            priority,
            advert_ms,
            preempt: true,
        })
    };
    let conf = fo::config(lab, Node::Lb1, "maglev", vrrp(FAILOVER_MASTER));
    lab.start_foobar_on(Node::Lb1, &foobar, &conf)?;
    if vrrpd == Vrrpd::Keepalived {
        fo::start_keepalived(lab, Node::Lb1, FAILOVER_MASTER, advert_ms)?;
    }
    let alone = fo::master_down(FAILOVER_MASTER, advert_ms) * 2 + Duration::from_secs(3);
    fo::time_until(alone, || fo::holds_vip(lab, &lab.lb.ns))
        .context("lb did not become master alone")?;
    let conf = fo::config(lab, Node::Lb2, "maglev", vrrp(FAILOVER_BACKUP));
    lab.start_foobar_on(Node::Lb2, &foobar, &conf)?;
    if vrrpd == Vrrpd::Keepalived {
        fo::start_keepalived(lab, Node::Lb2, FAILOVER_BACKUP, advert_ms)?;
    }
    failover_settle(lab, advert_ms)
}

/// Stops both nodes' VRRP speakers and daemons (detached: the next pair
/// starts clean) and removes the VIP wherever it was left.
pub fn failover_pair_stop(lab: &mut Lab, vrrpd: Vrrpd) -> Result<()> {
    use foobar_tests::failover as fo;
    for node in [Node::Lb1, Node::Lb2] {
        if vrrpd == Vrrpd::Keepalived {
            fo::stop_keepalived(lab, node)?;
        }
        if lab.foobar_pid_on(node).is_some() {
            lab.stop_and_detach_foobar_on(node)?;
        }
        let ns = lab.node(node)?.ns.clone();
        let _ = lab.exec(
            &ns,
            &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "eth0"],
        );
    }
    Ok(())
}

/// Waits until lb alone holds the VIP for 3 advert intervals, then points
/// the client's neighbour entry at it afresh (after a round the entry may
/// still name lb2, whose XDP program forwards whether or not it holds the
/// VIP) and checks that it does.
pub fn failover_settle(lab: &mut Lab, advert_ms: u64) -> Result<()> {
    use foobar_tests::failover as fo;
    let limit = Duration::from_secs(15);
    let start = Instant::now();
    let mut since: Option<Instant> = None;
    while since.is_none_or(|s| s.elapsed() < Duration::from_millis(3 * advert_ms)) {
        ensure!(
            start.elapsed() < limit,
            "lb did not settle as the only master: {:?}",
            fo::holders(lab)?
        );
        if fo::holders(lab)? == (true, false) {
            since.get_or_insert_with(Instant::now);
        } else {
            since = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let vip = VIP.to_string();
    let lb_mac = mac_text(lab.mac(&lab.lb, "eth0")?);
    let mut tries = Vec::new();
    for _ in 0..10 {
        lab.exec(&lab.client.ns, &["ip", "neigh", "flush", "to", &vip])?;
        lab.curl(&format!("http://{VIP}/"))?;
        let neigh = lab.exec(&lab.client.ns, &["ip", "neigh", "show", &vip])?;
        if neigh.contains(&lb_mac) {
            return Ok(());
        }
        tries.push(format!("{} {neigh}", start.elapsed().as_millis()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let lb2 = lab.node(Node::Lb2)?.ns.clone();
    anyhow::bail!(
        "the client's entry for the VIP is not lb's ({lb_mac}): {tries:#?}\nholders {:?}\nlb2: {}",
        fo::holders(lab)?,
        lab.exec(&lb2, &["ip", "-o", "addr"])?
    )
}

/// One failover round under a probe stream: (takeover, client gap, probes
/// lost), in ms; lb is master again afterwards.
pub fn failover_round(
    lab: &mut Lab,
    vrrpd: Vrrpd,
    loss: Loss,
    advert_ms: u64,
    spurious: &mut usize,
) -> Result<(f64, Option<f64>, usize)> {
    use foobar_tests::failover::{self as fo, ProbeStream};
    let (old, new) = (
        lab.mac(&lab.lb, "eth0")?,
        lab.mac(lab.node(Node::Lb2)?, "eth0")?,
    );
    let lb2 = lab.node(Node::Lb2)?.ns.clone();
    let probes = ProbeStream::start(lab, Duration::from_millis(10), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    // A master stalled for Master_Down_Interval (0.36 s at 100 ms adverts
    // on a loaded machine) loses the VIP for a moment: counted, and the
    // round waits for the pair to settle again.
    if fo::holders(lab)? != (true, false) {
        *spurious += 1;
        failover_settle(lab, advert_ms)?;
    }
    let watch = fo::watch_vip(&lb2, true, Duration::from_secs(10));
    let at = probes.started.elapsed();
    let lost_at = Instant::now();
    match (loss, vrrpd) {
        (Loss::Node, _) => {
            lab.exec(&lab.lb.ns, &["ip", "link", "set", "eth0", "down"])?;
        }
        (Loss::Graceful, Vrrpd::Foobar) => {
            let pid = lab.foobar_pid_on(Node::Lb1).context("foobar runs on lb")?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        (Loss::Graceful, Vrrpd::Keepalived) => fo::signal_keepalived(lab, Node::Lb1)?,
    }
    let took = fo::watched(watch, lost_at).context("lb2 never took the VIP")?;
    std::thread::sleep(Duration::from_millis(500));
    let probes = probes.stop()?;
    let gap = fo::gap(&probes, at, old, new);
    // lb back as master.
    match (loss, vrrpd) {
        (Loss::Node, _) => {
            lab.exec(&lab.lb.ns, &["ip", "link", "set", "eth0", "up"])?;
        }
        (Loss::Graceful, Vrrpd::Foobar) => {
            lab.stop_foobar_on(Node::Lb1)?;
            let conf = fo::config(
                lab,
                Node::Lb1,
                "maglev",
                Some(fo::Vrrp {
                    priority: FAILOVER_MASTER,
                    advert_ms,
                    preempt: true,
                }),
            );
            lab.start_foobar_on(Node::Lb1, &lab::foobar_bin()?, &conf)?;
        }
        (Loss::Graceful, Vrrpd::Keepalived) => {
            fo::stop_keepalived(lab, Node::Lb1)?;
            fo::start_keepalived(lab, Node::Lb1, FAILOVER_MASTER, advert_ms)?;
        }
    }
    failover_settle(lab, advert_ms)?;
    Ok((
        took.as_secs_f64() * 1e3,
        gap.gap.map(|g| g.as_secs_f64() * 1e3),
        gap.lost,
    ))
}

/// Failover between two LB nodes (native XDP, maglev, DSR, same seed):
/// the takeover (until the new master holds the VIP, watched every 2 ms)
/// and the client's gap (last answer through the old node to the first
/// through the new one) for a node loss and a graceful stop, with foobar's
/// VRRP on both nodes and with keepalived on both, at 1 s and 100 ms
/// adverts, in one run.
pub fn failover(quick: bool) -> Result<String> {
    use foobar_tests::failover as fo;
    let (rounds, adverts): (usize, &[u64]) = if quick {
        (1, &[100])
    } else {
        (3, &[1000, 100])
    };
    let mut lab = Lab::start(&LabOptions {
        second_lb: true,
        ..LabOptions::default()
    })?;
    let mut rows = Vec::new();
    let mut spurious = 0;
    for &advert_ms in adverts {
        for vrrpd in [Vrrpd::Foobar, Vrrpd::Keepalived] {
            failover_pair_start(&mut lab, vrrpd, advert_ms).with_context(|| {
                format!(
                    "starting {} at {advert_ms} ms\n{}\n{}",
                    vrrpd.name(),
                    fo::keepalived_log(&lab, Node::Lb1),
                    fo::keepalived_log(&lab, Node::Lb2)
                )
            })?;
            for loss in [Loss::Node, Loss::Graceful] {
                let mut samples = Vec::new();
                for _ in 0..rounds {
                    samples.push(
                        failover_round(&mut lab, vrrpd, loss, advert_ms, &mut spurious)
                            .with_context(|| {
                                format!("{} {loss:?} at {advert_ms} ms", vrrpd.name())
                            })?,
                    );
                }
                rows.push((vrrpd, advert_ms, loss, samples));
            }
            failover_pair_stop(&mut lab, vrrpd)?;
        }
    }

    let mut out = String::new();
    writeln!(out, "\n## Failover (netns lab, two LB nodes)\n")?;
    writeln!(
        out,
        "Two LB nodes running foobar (native XDP, maglev, DSR, the same `hash_seed`, 3 nginx \
         backends); lb (priority {FAILOVER_MASTER}) is master, lb2 ({FAILOVER_BACKUP}) backup. \
         The VIP is moved either by foobar's own `[[vrrp]]` on both nodes or by keepalived \
         2.2.7 in both namespaces (`vrrp_version 3`, the daemons then only forward). Node loss: \
         the master's link goes down (no adverts, no forwarding). Graceful: SIGTERM to the \
         master's VRRP speaker (priority 0). Takeover: from the loss until lb2 holds the VIP \
         (watched every 2 ms). Client gap: from the last answer through lb to the first \
         through lb2 in a stream of new connections from the client (one `GET /` every 10 ms, \
         50 ms connect limit). Median of {rounds} round(s); lost: probes unanswered in all \
         rounds. RFC 5798 bounds for the backup: Master_Down_Interval (3 × advert + Skew_Time) \
         after a node loss, Skew_Time after a resignation.\n"
    )?;
    writeln!(
        out,
        "| VRRP | advert | loss | takeover (ms) | client gap (ms) | probes lost | RFC bound (ms) |\n\
         |---|---:|---|---:|---:|---:|---:|"
    )?;
    for (vrrpd, advert_ms, loss, samples) in rows {
        let took = median(samples.iter().map(|s| s.0).collect());
        let gaps: Vec<f64> = samples.iter().filter_map(|s| s.1).collect();
        ensure!(
            !gaps.is_empty(),
            "{} {loss:?} at {advert_ms} ms: the client never got an answer through lb2",
            vrrpd.name()
        );
        let lost: usize = samples.iter().map(|s| s.2).sum();
        let bound = match loss {
            Loss::Node => fo::master_down(FAILOVER_BACKUP, advert_ms),
            Loss::Graceful => fo::skew(FAILOVER_BACKUP, advert_ms),
        };
        writeln!(
            out,
            "| {} | {advert_ms} ms | {} | {took:.0} | {:.0} | {lost} | {:.0} |",
            vrrpd.name(),
            match loss {
                Loss::Node => "node loss",
                Loss::Graceful => "graceful stop",
            },
            median(gaps),
            bound.as_secs_f64() * 1e3
        )?;
    }
    writeln!(
        out,
        "\nRounds that found lb2 holding the VIP at their start (a master stalled past \
         Master_Down_Interval while the pair settled; the round waited for it to settle \
         again): {spurious}."
    )?;
    Ok(out)
}
