//! The daemon: one task owns the desired state and the datapath; the API
//! server, the metrics server, the health checkers, the neighbour watcher,
//! the flow-table walker and the NAT garbage collector send it events. Every change goes through
//! `transact`: the new state is saved to the state file, then written to the
//! maps; if either fails, the old state is restored in both and the request
//! is refused, so a refused request changes nothing. Nothing slow runs on
//! the owner's loop: the flow-table walk runs on a blocking thread with its
//! own map handle, MACs are resolved by the watcher task.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::warn;

use crate::{
    api,
    config::Config,
    datapath::{Datapath, FlowUsage, FlowWalker, Stats},
    health::Transition,
    metrics, neigh,
    state::{SavedVip, State},
};

mod events;
mod flows;
mod nat_gc;
mod reconfig;
mod report;
mod requests;
#[cfg(test)]
mod tests;
mod vrrp;

use events::wanted;
pub use nat_gc::{NatGcTotals, NAT_GC_PERIOD};

/// How long a removed backend's flows may stay idle before its entry is
/// freed (a flow idle longer than this is rescheduled if it sends again);
/// also how recently an open flow must have been seen to count as an
/// active connection for "wlc". The default of `datapath.retire_idle`.
pub const RETIRE_IDLE: Duration = Duration::from_secs(60);
/// How long `foobar run` waits for backends' MACs before it starts (those
/// still unresolved then start down and are retried in the background).
pub const NEIGH_TIMEOUT: Duration = Duration::from_secs(3);
const RATE_PERIOD: Duration = Duration::from_secs(1);
const GC_PERIOD: Duration = Duration::from_secs(5);
/// Share of the flow table's capacity at which the daemon warns.
const FLOW_TABLE_WARN: f64 = 0.9;

/// The state file: runtime changes, tied to the config text they apply to.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateFile {
    /// SHA-256 of the config file the changes were made on top of.
    pub config_sha256: String,
    pub vips: Vec<SavedVip>,
}

/// The state file of `config` in `state_dir`: `/etc/foobar/foobar.toml`
/// keeps its runtime changes in `/var/lib/foobar/foobar.state.json` (named
/// after the config, so daemons with different configs never share one).
pub fn state_file_for(state_dir: &Path, config: &Path) -> PathBuf {
    let stem = config.file_stem().unwrap_or(std::ffi::OsStr::new("foobar"));
    let mut name = stem.to_os_string();
    name.push(".state.json");
    state_dir.join(name)
}

pub fn config_digest(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the state file atomically (see `state_file::write`: exclusive,
/// never-followed temporary file, fsync, rename; refused in a directory
/// others can write).
pub fn save_state_file(path: &Path, file: &StateFile) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(file)?;
    text.push('\n');
    crate::state_file::write(path, text.as_bytes())
}

pub struct Owner {
    pub state: State,
    pub datapath: Datapath,
    pub iface: String,
    pub ifindex: u32,
    /// Two-arm: the backend-side interface (index, name); None: one-arm.
    pub arm: Option<(u32, String)>,
    pub state_file: PathBuf,
    pub config_sha256: String,
    checkers: HashMap<u32, (u64, JoinHandle<()>)>,
    next_epoch: u64,
    health_tx: mpsc::Sender<Transition>,
    health_rx: mpsc::Receiver<Transition>,
    /// Every check's latest result, written by the checkers.
    health_board: crate::health::Board,
    rates: Rates,
    flow_entries: usize,
    /// The last walk found the table at FLOW_TABLE_WARN of its capacity.
    flow_table_near_full: bool,
    wlc_period: Duration,
    /// `datapath.retire_idle` (RETIRE_IDLE unless configured).
    retire_idle: Duration,
    last_scan: Option<Instant>,
    /// The flow-table walker's own map handle, while no walk runs.
    walker: Option<FlowWalker>,
    walking: bool,
    walk_tx: mpsc::Sender<WalkDone>,
    walk_rx: mpsc::Receiver<WalkDone>,
    /// How long the latest walk took (for `foobar status`).
    last_walk: Duration,
    /// Backend addresses (with their VLANs) whose MACs the neighbour
    /// watcher follows.
    wanted: watch::Sender<Vec<neigh::Wanted>>,
    /// The VLAN each address was last followed on: a removed backend's
    /// entry keeps its VLAN after its VIP is gone.
    segments: HashMap<std::net::IpAddr, Option<u16>>,
    /// The datapath interface's VLAN subinterfaces, as last seen (the
    /// start's resolve, then the watcher).
    pub vlan_interfaces: neigh::VlanInterfaces,
    /// The VRRP instances (started after the attach; stopped before exit).
    pub vrrp: Option<crate::vrrp::task::Running>,
    /// What the instances track (None: no instance runs).
    vrrp_conditions: Option<std::sync::Arc<watch::Sender<crate::vrrp::track::Conditions>>>,
    /// Publishes whether the XDP program is attached (track_detached).
    attach_watch: Option<JoinHandle<()>>,
    neigh_rx: mpsc::Receiver<neigh::Report>,
    neigh_tx: mpsc::Sender<neigh::Report>,
    neigh_task: Option<JoinHandle<()>>,
    /// Why the latest state could not be saved (None: saved): changes
    /// still apply, but do not survive a restart.
    unsaved: Option<String>,
    /// The config file `foobar reload` and SIGHUP re-read, and the VIPs it
    /// described when last loaded (what a reload compares the new one to).
    config_path: Option<PathBuf>,
    base: Option<Config>,
    /// The datapath was loaded with a source-affinity table (a reload may
    /// add a VIP with `persistence` only then).
    affinity_table: bool,
    /// NAT garbage collection (see `nat_gc`).
    nat_gc: nat_gc::NatGc,
}

/// A flow-table walk's result, back from its blocking thread.
struct WalkDone {
    walker: FlowWalker,
    usage: Result<FlowUsage, crate::datapath::DatapathError>,
    took: Duration,
    /// Retired backend ids when the walk started: only these may be freed
    /// on its result (one retired later may have flows it did not see).
    retired_before: std::collections::HashSet<u32>,
    gc_due: bool,
}

#[derive(Default)]
struct Rates {
    last: Option<(Instant, Stats)>,
    /// (packets/s, bytes/s) by VIP id and by backend id.
    vips: HashMap<u32, (f64, f64)>,
    backends: HashMap<u32, (f64, f64)>,
    /// New flows/s by backend id.
    new_flows: HashMap<u32, f64>,
}

impl Owner {
    /// The interface SNAT addresses must be on: where backends' replies
    /// come in (the backend-side one, two-arm).
    pub fn snat_iface(&self) -> (u32, &str) {
        match &self.arm {
            Some((i, name)) => (*i, name),
            None => (self.ifindex, &self.iface),
        }
    }

    pub fn new(
        state: State,
        datapath: Datapath,
        iface: String,
        ifindex: u32,
        state_file: PathBuf,
        config_sha256: String,
        wlc_period: Duration,
    ) -> Self {
        let (health_tx, health_rx) = mpsc::channel(256);
        let (walk_tx, walk_rx) = mpsc::channel(1);
        let (neigh_tx, neigh_rx) = mpsc::channel(4);
        Owner {
            state,
            datapath,
            iface,
            ifindex,
            arm: None,
            state_file,
            config_sha256,
            checkers: HashMap::new(),
            next_epoch: 0,
            health_tx,
            health_rx,
            health_board: Default::default(),
            rates: Rates::default(),
            flow_entries: 0,
            flow_table_near_full: false,
            wlc_period,
            retire_idle: RETIRE_IDLE,
            last_scan: None,
            walker: None,
            walking: false,
            walk_tx,
            walk_rx,
            last_walk: Duration::ZERO,
            wanted: watch::Sender::new(Vec::new()),
            segments: HashMap::new(),
            vlan_interfaces: neigh::VlanInterfaces::new(),
            vrrp: None,
            vrrp_conditions: None,
            attach_watch: None,
            neigh_rx,
            neigh_tx,
            neigh_task: None,
            unsaved: None,
            config_path: None,
            base: None,
            affinity_table: false,
            nat_gc: nat_gc::NatGc::new(),
        }
    }

    /// The config file a reload re-reads and what it held at start;
    /// whether the datapath has a source-affinity table.
    pub fn set_config(&mut self, path: PathBuf, config: &Config, affinity_table: bool) {
        self.config_path = Some(path);
        self.base = Some(config.clone());
        self.affinity_table = affinity_table;
    }

    /// Sets how long a removed backend's flows may stay idle before its
    /// entry is freed (`datapath.retire_idle`).
    pub fn set_retire_idle(&mut self, idle: Duration) {
        self.retire_idle = idle;
    }

    /// Writes the state to the maps and the state file, starts a health
    /// checker per backend and the neighbour watcher. Called once, before
    /// attaching. Adopted (pinned) maps are read back and only what
    /// differs is rewritten (`Datapath::resync`), in an order that keeps
    /// every packet served.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let plan = self.state.plan();
        if self.datapath.adopted() {
            self.datapath
                .resync(&plan)
                .context("reconciling the adopted BPF maps with the state")?;
        } else {
            self.datapath
                .apply(&plan)
                .context("programming the BPF maps")?;
        }
        if let Err(e) = self.save() {
            // Forwarding matters more than remembering: start, and say at
            // every change that it is not kept.
            tracing::error!(
                file = %self.state_file.display(),
                err = %e,
                "CANNOT WRITE THE STATE FILE: foobar serves, but runtime changes will NOT \
                 survive a restart until it can be written (read-only or full disk? \
                 unsafe directory?)"
            );
            self.unsaved = Some(e.to_string());
        }
        let ids: Vec<u32> = self
            .state
            .vips()
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        for id in ids {
            self.start_checker(id);
        }
        for v in self.state.vips() {
            for b in v.backends.iter().filter(|b| b.mac.is_none()) {
                warn!(vip = %v.spec.name, backend = %b.spec.address, reason = %self.no_mac_reason(v.spec.vlan, &v.spec.name, b.spec.address), "backend starts down");
            }
        }
        let wanted = wanted(&self.state, &mut self.segments);
        self.wanted.send_replace(wanted);
        self.neigh_task = Some(tokio::spawn(neigh::watch(
            self.ifindex,
            self.arm.as_ref().map(|(i, _)| *i),
            self.wanted.subscribe(),
            self.neigh_tx.clone(),
            neigh::WATCH_PERIOD,
        )));
        Ok(())
    }

    fn save(&self) -> std::io::Result<()> {
        save_state_file(
            &self.state_file,
            &StateFile {
                config_sha256: self.config_sha256.clone(),
                vips: self.state.saved(),
            },
        )
    }

    /// Serves events until `shutdown` resolves.
    pub async fn run(
        &mut self,
        mut api_rx: mpsc::Receiver<api::Call>,
        mut metrics_rx: mpsc::Receiver<oneshot::Sender<String>>,
        shutdown: impl std::future::Future<Output = &'static str>,
    ) -> &'static str {
        tokio::pin!(shutdown);
        let mut rate_tick = tokio::time::interval(RATE_PERIOD);
        let mut scan_tick = tokio::time::interval(self.wlc_period.min(GC_PERIOD));
        let mut nat_gc_tick = tokio::time::interval(NAT_GC_PERIOD);
        loop {
            tokio::select! {
                signal = &mut shutdown => return signal,
                Some((request, caller, reply)) = api_rx.recv() => {
                    let response = self.handle(request, caller).await;
                    let _ = reply.send(response);
                }
                Some(t) = self.health_rx.recv() => self.on_health(t),
                Some(reply) = metrics_rx.recv() => {
                    let _ = reply.send(metrics::render(&self.metrics_snapshot()));
                }
                Some(table) = self.neigh_rx.recv() => self.on_neighbours(table),
                Some(done) = self.walk_rx.recv() => self.on_walk(done),
                _ = rate_tick.tick() => self.sample_rates(),
                _ = scan_tick.tick() => self.scan_flows(),
                _ = nat_gc_tick.tick() => self.start_nat_gc(),
                Some(done) = self.nat_gc.rx.recv() => self.on_nat_gc(done),
            }
            let segments = &mut self.segments;
            let state = &self.state;
            self.wanted.send_if_modified(|w| {
                let now = wanted(state, segments);
                let changed = *w != now;
                *w = now;
                changed
            });
            self.publish_tracking();
        }
    }

    /// Stops the checkers and the neighbour watcher (they hold nothing but
    /// channels and sockets).
    pub fn stop(&mut self) {
        for (_, (_, task)) in self.checkers.drain() {
            task.abort();
        }
        if let Some(task) = self.neigh_task.take() {
            task.abort();
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the datapath's last-seen
/// times (bpf_ktime_get_coarse_ns, which lags it by at most one tick).
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
