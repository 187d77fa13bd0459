//! What the failover tests and the bench share: a two-LB lab's configs
//! (`[[vrrp]]` on both nodes, or none when keepalived moves the VIP), who
//! holds the VIP, and the client's view of a failover: a stream of new
//! connections to the VIP, each tagged with the LB node whose MAC the
//! client's neighbour entry for the VIP held while it ran (in DSR only
//! the LB node sees the client's packets; the backend answers directly, so
//! the neighbour entry is what says which node carried a request).
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsFd as _,
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::lab::{Lab, Node, LB_IFACE, VIP};

/// The VRID of the lab's VIP.
pub const VRID: u8 = 51;
/// The Maglev seed both nodes share.
pub const HASH_SEED: u32 = 7;

/// One node's VRRP instance.
#[derive(Clone, Copy, Debug)]
pub struct Vrrp {
    pub priority: u8,
    pub advert_ms: u64,
    pub preempt: bool,
}

/// LB node `node`'s config: the lab's VIP with `scheduler` over every
/// backend, `hash_seed = HASH_SEED`, and `vrrp` as `[[vrrp]]` (None: no
/// instance, for a node whose VIP keepalived moves).
pub fn config(lab: &Lab, node: Node, scheduler: &str, vrrp: Option<Vrrp>) -> String {
    let mut text = lab
        .config_on(node)
        .replacen(
            "xdp_mode = \"native\"\n",
            &format!("xdp_mode = \"native\"\nhash_seed = {HASH_SEED}\n"),
            1,
        )
        .replacen(
            "scheduler = \"rr\"",
            &format!("scheduler = \"{scheduler}\""),
            1,
        );
    if let Some(v) = vrrp {
        text.push_str(&format!(
            "\n[[vrrp]]\nvrid = {VRID}\npriority = {}\nadvert_interval_ms = {}\npreempt = {}\n\
             vips = [\"web\"]\n",
            v.priority, v.advert_ms, v.preempt
        ));
    }
    text
}

/// RFC 5798 Master_Down_Interval of a backup of `priority` whose master
/// advertises every `advert_ms`: 3 × advert + Skew_Time.
pub fn master_down(priority: u8, advert_ms: u64) -> Duration {
    let skew_us = (256 - u64::from(priority)) * advert_ms * 1000 / 256;
    Duration::from_micros(3 * advert_ms * 1000 + skew_us)
}

/// Skew_Time: how long a backup waits after its master resigned.
pub fn skew(priority: u8, advert_ms: u64) -> Duration {
    Duration::from_micros((256 - u64::from(priority)) * advert_ms * 1000 / 256)
}

/// Whether namespace `ns` holds the VIP on its LB interface.
pub fn holds_vip(lab: &Lab, ns: &str) -> bool {
    lab.exec(ns, &["ip", "-4", "-o", "addr", "show", "dev", LB_IFACE])
        .map(|out| out.contains(&format!(" {VIP}/32")))
        .unwrap_or(false)
}

/// Which LB nodes hold the VIP: (lb, lb2).
pub fn holders(lab: &Lab) -> Result<(bool, bool)> {
    let lb2 = lab.node(Node::Lb2)?;
    Ok((holds_vip(lab, &lab.lb.ns), holds_vip(lab, &lb2.ns)))
}

/// Polls every 5 ms until `done` holds; how long that took, or None after
/// `limit`.
pub fn time_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// A request of the probe stream.
#[derive(Clone, Debug)]
pub struct Probe {
    /// When it was answered (or gave up), since the stream began.
    pub done: Duration,
    pub ok: bool,
    /// The MAC the client's neighbour entry for the VIP held before and
    /// after the request (None: no complete entry).
    pub mac: Option<[u8; 6]>,
    pub mac_after: Option<[u8; 6]>,
}

impl Probe {
    /// Answered, and the neighbour entry held `mac` all along.
    pub fn through(&self, mac: [u8; 6]) -> bool {
        self.ok && self.mac == Some(mac) && self.mac_after == Some(mac)
    }
}

/// A stream of new connections (`GET /`, every `every`) to the VIP from the
/// client's namespace, until `stop()`; bounded to 10 minutes.
pub struct ProbeStream {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Probe>>>>,
}

impl ProbeStream {
    /// A probe that connects within `connect` is a success if answered
    /// within 0.5 s; a shorter `connect` resolves a gap more finely (a SYN
    /// lost to a dead node is not retransmitted for 1 s).
    pub fn start(lab: &Lab, every: Duration, connect: Duration) -> ProbeStream {
        let path = format!("/var/run/netns/{}", lab.client.ns);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || -> Result<Vec<Probe>> {
            let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            let to = SocketAddr::from((VIP, 80));
            let mut probes = Vec::new();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                let at = Instant::now();
                let mac = vip_mac();
                let ok = get(to, connect).unwrap_or(false);
                probes.push(Probe {
                    done: started.elapsed(),
                    ok,
                    mac,
                    mac_after: vip_mac(),
                });
                if let Some(rest) = every.checked_sub(at.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            Ok(probes)
        });
        ProbeStream {
            started,
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Result<Vec<Probe>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("the probe stream was stopped already")?
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    }
}

impl Drop for ProbeStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `GET /` on a new connection: did a backend answer it?
fn get(to: SocketAddr, connect: Duration) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&to, connect)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer.windows(6).any(|w| w == b"\r\n\r\nbe"))
}

/// The MAC of the calling thread's namespace's complete neighbour entry
/// for the VIP (`/proc/thread-self/net/arp`: the thread's namespace, not
/// the process's).
fn vip_mac() -> Option<[u8; 6]> {
    let table = fs::read_to_string("/proc/thread-self/net/arp").ok()?;
    let vip = VIP.to_string();
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(vip.as_str()))?;
    let mut fields = line.split_whitespace();
    let flags = fields.nth(2)?;
    // ATF_COM: the entry is complete.
    if u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()? & 0x2 == 0 {
        return None;
    }
    parse_mac(fields.next()?)
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// The client's view of one failover from `old` to `new` (MACs), in the
/// probes answered after `from` (since the stream began).
#[derive(Clone, Debug, PartialEq)]
pub struct Gap {
    /// From the last answer through the old node to the first through the
    /// new one; None if either never came.
    pub gap: Option<Duration>,
    /// Probes from `from` on that no backend answered.
    pub lost: usize,
    /// When the first answer through the new node came, since `from`.
    pub moved_after: Option<Duration>,
}

pub fn gap(probes: &[Probe], from: Duration, old: [u8; 6], new: [u8; 6]) -> Gap {
    let first_new = probes
        .iter()
        .filter(|p| p.done >= from)
        .find(|p| p.through(new))
        .map(|p| p.done);
    let last_old = probes
        .iter()
        .filter(|p| first_new.is_none_or(|f| p.done <= f))
        .rfind(|p| p.through(old))
        .map(|p| p.done);
    Gap {
        gap: first_new.zip(last_old).map(|(n, o)| n.saturating_sub(o)),
        lost: probes.iter().filter(|p| p.done >= from && !p.ok).count(),
        moved_after: first_new.map(|n| n.saturating_sub(from)),
    }
}

/// `n` downloads of `www/FILE` through the VIP from the client, sent by
/// the backends at lab::SLOW_PATH_RATE (`/slow/FILE`), so they span a
/// failover. (A rate limit on the client's side would not do: the kernel
/// takes the whole file into the socket buffer at once and curl only
/// drains it slowly.)
pub fn start_slow_downloads(lab: &Lab, file: &str, n: usize) -> Result<Vec<Child>> {
    (0..n)
        .map(|_| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &lab.client.ns, "curl", "-sS"])
                .args(["--max-time", "60", "-o", "/dev/null"])
                .args(["-w", "result %{http_code} %{size_download}\n"])
                .arg(format!("http://{VIP}/slow/{file}"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("starting curl")
        })
        .collect()
}

/// Waits for the downloads; the ones that did not get a 200 and all
/// `bytes` (reset, cut or timed out), with what curl said.
pub fn incomplete_downloads(downloads: Vec<Child>, bytes: usize) -> Result<Vec<String>> {
    let mut failed = Vec::new();
    for d in downloads {
        let out = d.wait_with_output().context("waiting for curl")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !text.contains(&format!("result 200 {bytes}")) {
            failed.push(format!("{}: {}", out.status, text.trim()));
        }
    }
    Ok(failed)
}

/// keepalived's config for the lab's VIP on LB node `priority`, VRRPv3,
/// `advert_ms` (keepalived takes fractions of a second with version 3).
pub fn keepalived_conf(priority: u8, advert_ms: u64) -> String {
    format!(
        "global_defs {{\n    router_id foobarlab\n    vrrp_version 3\n    enable_script_security\n}}\n\
         vrrp_instance VI_{VRID} {{\n    state BACKUP\n    interface {LB_IFACE}\n    \
         virtual_router_id {VRID}\n    priority {priority}\n    advert_int {}\n    \
         virtual_ipaddress {{\n        {VIP}/32\n    }}\n}}\n",
        advert_ms as f64 / 1000.0
    )
}

fn keepalived_name(node: Node) -> &'static str {
    match node {
        Node::Lb1 => "keepalived-lb",
        Node::Lb2 => "keepalived-lb2",
    }
}

/// Starts keepalived (Debian's; its own config and pid files in the lab
/// directory) in LB node `node`'s namespace; its log is
/// `keepalived-lb[2].log`.
pub fn start_keepalived(lab: &mut Lab, node: Node, priority: u8, advert_ms: u64) -> Result<()> {
    let name = keepalived_name(node);
    let conf = lab.dir.join(format!("{name}.conf"));
    fs::write(&conf, keepalived_conf(priority, advert_ms))?;
    let file = |suffix: &str| lab.dir.join(format!("{name}{suffix}"));
    let (main_pid, vrrp_pid) = (file(".pid"), file("-vrrp.pid"));
    let ns = lab.node(node)?.ns.clone();
    let args = [
        "keepalived".to_owned(),
        "--vrrp".to_owned(),
        "--dont-fork".to_owned(),
        "--log-console".to_owned(),
        "--log-detail".to_owned(),
        "--use-file".to_owned(),
        conf.to_string_lossy().into_owned(),
        "--pid".to_owned(),
        main_pid.to_string_lossy().into_owned(),
        "--vrrp_pid".to_owned(),
        vrrp_pid.to_string_lossy().into_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.start_server(&ns, name, &args)
        .context("starting keepalived (apt-get install keepalived)")
}

/// SIGTERM to LB node `node`'s keepalived (it resigns with priority 0 and
/// removes the VIP); `Lab::stop_server` reaps it.
pub fn signal_keepalived(lab: &Lab, node: Node) -> Result<()> {
    let path = lab.dir.join(format!("{}.pid", keepalived_name(node)));
    let pid: i32 = fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", path.display()))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .with_context(|| format!("SIGTERM to keepalived {pid}"))
}

/// Stops (SIGTERM) and reaps LB node `node`'s keepalived.
pub fn stop_keepalived(lab: &mut Lab, node: Node) -> Result<()> {
    lab.stop_server(keepalived_name(node))
}

/// LB node `node`'s keepalived log.
pub fn keepalived_log(lab: &Lab, node: Node) -> String {
    fs::read_to_string(lab.dir.join(format!("{}.log", keepalived_name(node)))).unwrap_or_default()
}

/// Whether the calling thread's namespace has the VIP as a local address
/// (its local route in `/proc/thread-self/net/fib_trie`: read without
/// spawning a process, so a loaded machine does not blur the instant).
fn vip_is_local() -> bool {
    let Ok(trie) = fs::read_to_string("/proc/thread-self/net/fib_trie") else {
        return false;
    };
    let leaf = format!("|-- {VIP}");
    let mut lines = trie.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == leaf
            && lines
                .next()
                .is_some_and(|l| l.starts_with("/32 host LOCAL"))
        {
            return true;
        }
    }
    false
}

/// Watches namespace `ns` from a thread of its own every 2 ms until the
/// VIP is local there (`hold`) or not (`!hold`): the instant it first saw
/// that, or None after `limit`. Start it before the event it times.
pub fn watch_vip(ns: &str, hold: bool, limit: Duration) -> JoinHandle<Option<Instant>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).ok()?;
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if vip_is_local() == hold {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    })
}

/// How long after `since` the watch saw what it waited for.
pub fn watched(watch: JoinHandle<Option<Instant>>, since: Instant) -> Option<Duration> {
    watch
        .join()
        .ok()
        .flatten()
        .map(|t| t.saturating_duration_since(since))
}
