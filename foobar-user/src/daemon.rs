//! The daemon: one task owns the desired state and the datapath; the API
//! server, the metrics server, the health checkers, the neighbour watcher
//! and the flow-table walker send it events. Every change goes through
//! `transact`: the new state is saved to the state file, then written to the
//! maps; if either fails, the old state is restored in both and the request
//! is refused, so a refused request changes nothing. Nothing slow runs on
//! the owner's loop: the flow-table walk runs on a blocking thread with its
//! own map handle, MACs are resolved by the watcher task.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest as _;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    api::{self, Request, Response},
    config::{Config, Forwarding, Protocol, Scheduler},
    datapath::{Datapath, FlowUsage, FlowWalker, Stats},
    health::{self, Transition},
    metrics,
    neigh::{self, Neighbour},
    state::{Admin, BackendSpec, SavedVip, State, StateError, VipSpec},
};

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
    pub state_file: PathBuf,
    pub config_sha256: String,
    checkers: HashMap<u32, (u64, JoinHandle<()>)>,
    next_epoch: u64,
    health_tx: mpsc::Sender<Transition>,
    health_rx: mpsc::Receiver<Transition>,
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
    segments: HashMap<Ipv4Addr, Option<u16>>,
    /// The datapath interface's VLAN subinterfaces, as last seen (the
    /// start's resolve, then the watcher).
    pub vlan_interfaces: neigh::VlanInterfaces,
    /// The VRRP instances (started after the attach; stopped before exit).
    pub vrrp: Option<crate::vrrp::task::Running>,
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
}

impl Owner {
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
            state_file,
            config_sha256,
            checkers: HashMap::new(),
            next_epoch: 0,
            health_tx,
            health_rx,
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
            neigh_rx,
            neigh_tx,
            neigh_task: None,
            unsaved: None,
            config_path: None,
            base: None,
            affinity_table: false,
        }
    }

    /// The config file a reload re-reads and what it held at start;
    /// whether the datapath has a source-affinity table.
    pub fn set_config(&mut self, path: PathBuf, config: &Config, affinity_table: bool) {
        self.config_path = Some(path);
        self.base = Some(config.clone());
        self.affinity_table = affinity_table;
    }

    /// `foobar reload` / SIGHUP: re-reads the config, validates it whole
    /// (a problem refuses it, naming FILE: KEY), and applies what the edit
    /// changed in one transaction, as the CLI's operations do
    /// (`reload::diff` says what is kept of the run-time changes; each kept
    /// one is logged and listed in the answer). Settings that need a new
    /// datapath (`[datapath]`, `[api]`, `[metrics]`) take effect at the
    /// next restart, which the answer says.
    fn reload(&mut self) -> Result<serde_json::Value, String> {
        let path = self
            .config_path
            .clone()
            .ok_or("this daemon was started without a config file; nothing to reload")?;
        let (config, text) = crate::config::load_with_text(&path).map_err(|e| e.to_string())?;
        let digest = config_digest(&text);
        let base = self
            .base
            .as_ref()
            .map(crate::state::saved_from_config)
            .unwrap_or_default();
        let new = crate::state::saved_from_config(&config);
        let diff = crate::reload::diff(&base, &self.state.saved(), &new);
        if !self.affinity_table {
            let wants = diff.ops.iter().find_map(|op| match op {
                crate::reload::Op::AddVip(v) if v.affinity_timeout_s.is_some() => {
                    Some(v.name.clone())
                }
                _ => None,
            });
            if let Some(name) = wants {
                return Err(format!(
                    "{}: VIP {name}: persistence needs the source-affinity table, which this \
                     daemon started without (no VIP had persistence); nothing was applied: \
                     restart foobar to serve it, or set datapath.affinity_table_size before \
                     the next start",
                    path.display()
                ));
            }
        }
        let restart = self
            .base
            .as_ref()
            .map(|b| restart_only_changes(b, &config))
            .unwrap_or_default();
        let before = self.state.clone();
        let old_digest = std::mem::replace(&mut self.config_sha256, digest);
        let ops = diff.ops.clone();
        let applied = self.transact(|s| {
            for op in &ops {
                apply_op(s, op)?;
            }
            Ok(())
        });
        if let Err(e) = applied {
            // A rollback re-saved the old state under the new digest: save
            // it again under the old one, or a restart would take the old
            // runtime state for the new config's.
            self.config_sha256 = old_digest;
            if let Err(save) = self.save() {
                warn!(err = %save, "re-saving the state after a refused reload failed");
            }
            return Err(format!("{}: {e}", path.display()));
        }
        self.base = Some(config);
        self.follow_checkers(&before);
        for k in &diff.kept {
            warn!(kept = %k, "reload keeps a run-time change");
        }
        for r in &restart {
            warn!(setting = %r, "reload: takes effect at the next restart");
        }
        let ops: Vec<String> = diff.ops.iter().map(op_text).collect();
        for op in &ops {
            info!(op = %op, "reload applied");
        }
        Ok(json!({
            "config": path,
            "applied": ops,
            "kept_runtime_changes": diff.kept,
            "at_next_restart": restart,
        }))
    }

    /// Starts, stops or restarts health checkers after a change: a checker
    /// per current backend, with its current spec.
    fn follow_checkers(&mut self, before: &State) {
        let spec_of = |s: &State, id: u32| {
            s.backend(id).map(|(v, b)| {
                (
                    b.spec.address,
                    b.spec.health.port_for(v.spec.port),
                    b.spec.health.clone(),
                )
            })
        };
        let now: Vec<u32> = self
            .state
            .vips()
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        let gone: Vec<u32> = self
            .checkers
            .keys()
            .copied()
            .filter(|id| !now.contains(id))
            .collect();
        for id in gone {
            self.stop_checker(id);
        }
        for id in now {
            if !self.checkers.contains_key(&id) || spec_of(before, id) != spec_of(&self.state, id) {
                self.start_checker(id);
            }
        }
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
        loop {
            tokio::select! {
                signal = &mut shutdown => return signal,
                Some((request, reply)) = api_rx.recv() => {
                    let response = self.handle(request).await;
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
            }
            let segments = &mut self.segments;
            let state = &self.state;
            self.wanted.send_if_modified(|w| {
                let now = wanted(state, segments);
                let changed = *w != now;
                *w = now;
                changed
            });
        }
    }

    fn start_checker(&mut self, id: u32) {
        let Some((vip, b)) = self.state.backend(id) else {
            return;
        };
        let port = b.spec.health.port_for(vip.spec.port);
        self.next_epoch += 1;
        let task = tokio::spawn(health::run_checker(
            id,
            self.next_epoch,
            b.spec.address,
            port,
            b.spec.health.clone(),
            b.up,
            self.health_tx.clone(),
        ));
        if let Some((_, old)) = self.checkers.insert(id, (self.next_epoch, task)) {
            old.abort();
        }
    }

    fn stop_checker(&mut self, id: u32) {
        if let Some((_, task)) = self.checkers.remove(&id) {
            task.abort();
        }
    }

    fn on_health(&mut self, t: Transition) {
        if self.checkers.get(&t.backend_id).map(|(e, _)| *e) != Some(t.epoch) {
            return; // from a checker that has been replaced
        }
        let (vip, address) = match self.state.backend(t.backend_id) {
            Some((v, b)) => (v.spec.name.clone(), b.spec.address),
            None => return,
        };
        let before = self.state.clone();
        if !self.state.set_health(t.backend_id, t.up, &t.reason) {
            return;
        }
        let to = if t.up { "up" } else { "down" };
        match self.datapath.apply(&self.state.plan()) {
            Ok(()) => {
                info!(vip = %vip, backend = %address, state = to, reason = %t.reason, "health changed");
                // Saved so that a restart starts the backend in this state.
                if let Err(e) = self.save() {
                    warn!(vip = %vip, backend = %address, file = %self.state_file.display(), %e, "health change not saved: a restart starts the backend in its earlier state");
                }
            }
            Err(err) => {
                warn!(vip = %vip, backend = %address, %err, "health change not applied to the datapath");
                self.roll_back(before, false);
            }
        }
    }

    /// Why the backend at `address` of VIP `vip` (on `vlan`) has no MAC:
    /// its VLAN has no interface here, or nothing answered ARP there.
    fn no_mac_reason(&self, vlan: Option<u16>, vip: &str, address: Ipv4Addr) -> String {
        match vlan {
            None => neigh::no_mac_reason(address, &self.iface),
            Some(v) => match self.vlan_interfaces.get(&v) {
                Some(i) => neigh::no_mac_reason(address, &i.name),
                None => neigh::no_vlan_interface_reason(vip, v, &self.iface),
            },
        }
    }

    /// The neighbour watcher's latest view of the backends' next hops:
    /// a changed MAC is written to the backend's entry, a failed one (or
    /// one whose VLAN has no interface) takes the backend out until it
    /// resolves again.
    fn on_neighbours(&mut self, report: neigh::Report) {
        for (vlan, i) in &report.vlan_interfaces {
            if self.vlan_interfaces.get(vlan) != Some(i) {
                info!(vlan, interface = %i.name, parent = %self.iface, "VLAN interface found");
            }
        }
        for (vlan, i) in &self.vlan_interfaces {
            if !report.vlan_interfaces.contains_key(vlan) {
                warn!(vlan, interface = %i.name, parent = %self.iface, "VLAN interface gone");
            }
        }
        self.vlan_interfaces = report.vlan_interfaces;
        let before = self.state.clone();
        let mut changes = Vec::new();
        for (address, n) in report.neighbours {
            let mac = match n {
                Neighbour::Known(mac) => Some(mac),
                Neighbour::Failed | Neighbour::NoVlanInterface => None,
            };
            let old = before
                .vips()
                .iter()
                .flat_map(|v| &v.backends)
                .find(|b| b.spec.address == address)
                .map(|b| b.mac);
            if !self.state.set_mac(address, mac).is_empty() {
                changes.push((address, old.flatten(), mac));
            }
        }
        if changes.is_empty() {
            return;
        }
        match self.datapath.apply(&self.state.plan()) {
            Ok(()) => {
                for (address, old, new) in changes {
                    match new {
                        Some(mac) => {
                            info!(backend = %address, old = %mac_text(old), new = %mac_text(Some(mac)), "next-hop MAC changed")
                        }
                        None => {
                            let (vlan, vip) = self
                                .state
                                .vips()
                                .iter()
                                .find(|v| v.backends.iter().any(|b| b.spec.address == address))
                                .map(|v| (v.spec.vlan, v.spec.name.clone()))
                                .unwrap_or_default();
                            warn!(backend = %address, old = %mac_text(old), reason = %self.no_mac_reason(vlan, &vip, address), "backend has no MAC; out until it resolves")
                        }
                    }
                }
            }
            Err(err) => {
                warn!(%err, "a next-hop MAC change was not applied to the datapath");
                self.roll_back(before, false);
            }
        }
    }

    /// Puts `before` back in the state, the maps and (if `saved`) the state
    /// file after a change failed half-way; returns what could not be
    /// restored (also logged), so the caller can report it. The maps are
    /// read back and rewritten (`Datapath::resync`), not patched from what
    /// the failed write believed it had done.
    fn roll_back(&mut self, before: State, saved: bool) -> Option<String> {
        self.state = before;
        let mut failures = Vec::new();
        if saved {
            if let Err(e) = self.save() {
                failures.push(format!(
                    "the state file {} still holds the refused change ({e})",
                    self.state_file.display()
                ));
            }
        }
        if let Err(e) = self.datapath.resync(&self.state.plan()) {
            failures.push(format!(
                "the BPF maps may hold part of the refused change ({e}); \
                 restart foobar to rewrite them from the state"
            ));
        }
        if failures.is_empty() {
            return None;
        }
        let text = failures.join("; ");
        tracing::error!(problem = %text, "rolling back a refused change failed");
        Some(text)
    }

    /// Applies `change` to a copy of the state, saves it, writes the maps;
    /// if the maps cannot be written, puts everything back and returns the
    /// error. A state file that cannot be written (read-only or full disk)
    /// does not stop the change: an emergency drain must reach the
    /// datapath. It is then applied unsaved, logged loudly, and the answer
    /// carries a warning (see `handle`).
    fn transact<T>(
        &mut self,
        change: impl FnOnce(&mut State) -> Result<T, StateError>,
    ) -> Result<T, String> {
        let before = self.state.clone();
        let result = change(&mut self.state).map_err(|e| e.to_string())?;
        let saved = match self.save() {
            Ok(()) => {
                if self.unsaved.take().is_some() {
                    info!(file = %self.state_file.display(), "the state file is written again");
                }
                true
            }
            Err(e) => {
                self.unsaved = Some(format!(
                    "the state file {} cannot be written ({e}): this change is applied but \
                     will NOT survive a restart; fix the disk or directory, then repeat any \
                     change to save the whole state",
                    self.state_file.display()
                ));
                false
            }
        };
        if let Err(e) = self.datapath.apply(&self.state.plan()) {
            let mut message = format!("not applied: writing the BPF maps failed: {e}");
            if let Some(problem) = self.roll_back(before, saved) {
                message.push_str(&format!("; and undoing it failed: {problem}"));
            }
            return Err(message);
        }
        if let Some(warning) = &self.unsaved {
            tracing::error!(warning = %warning, "CHANGE NOT SAVED");
        }
        Ok(result)
    }

    async fn handle(&mut self, request: Request) -> Response {
        let op = request_name(&request);
        let changes = !matches!(request, Request::Status | Request::Stats);
        let result = self.dispatch(request).await;
        match result {
            Ok(mut value) => {
                if changes {
                    info!(op, result = %value, "control request applied");
                    // A change applied but not saved says so in its answer.
                    if let (Some(warning), Some(map)) = (&self.unsaved, value.as_object_mut()) {
                        map.insert("warning".into(), json!(warning));
                    }
                }
                Response::ok(value)
            }
            Err(message) => {
                if changes {
                    warn!(op, error = %message, "control request refused");
                }
                Response::error(message)
            }
        }
    }

    async fn dispatch(&mut self, request: Request) -> Result<serde_json::Value, String> {
        match request {
            Request::Status => Ok(self.status()),
            Request::Reload => self.reload(),
            Request::Stats => self.stats_json(),
            Request::VipAdd {
                name,
                address,
                port,
                protocol,
                scheduler,
                forwarding,
            } => {
                let spec = VipSpec {
                    name: name.clone(),
                    address: parse_ipv4(&address)?,
                    port,
                    protocol: Protocol::parse(protocol.as_deref().unwrap_or("tcp"))
                        .map_err(|e| format!("protocol: {e}"))?,
                    scheduler: Scheduler::parse(scheduler.as_deref().unwrap_or("rr"))
                        .map_err(|e| format!("scheduler: {e}"))?,
                    maglev_table_size: crate::maglev::DEFAULT_TABLE_SIZE,
                    affinity_timeout_s: None,
                    forwarding: Forwarding::parse(forwarding.as_deref().unwrap_or("dsr"))
                        .map_err(|e| format!("forwarding: {e}"))?,
                    vlan: None,
                    pass_closed_ports: false,
                    health: Default::default(),
                };
                let id = self.transact(|s| s.add_vip(spec))?;
                Ok(json!({ "vip": name, "id": id }))
            }
            Request::AffinityPurge { vip } => {
                let vip_id = match &vip {
                    Some(name) => Some(self.state.vip(name).map_err(|e| e.to_string())?.id),
                    None => None,
                };
                let purged = self
                    .datapath
                    .purge_affinity(vip_id)
                    .map_err(|e| format!("purging the affinity table: {e}"))?;
                info!(
                    vip = vip.as_deref().unwrap_or("*"),
                    purged, "source-affinity entries purged"
                );
                Ok(json!({ "vip": vip, "purged": purged }))
            }
            Request::VipRemove { name } => {
                let vip = self.transact(|s| s.remove_vip(&name))?;
                for b in &vip.backends {
                    self.stop_checker(b.id);
                }
                Ok(json!({ "vip": name, "removed_backends": vip.backends.len() }))
            }
            Request::BackendAdd {
                vip,
                address,
                weight,
            } => {
                let address = parse_ipv4(&address)?;
                let spec = BackendSpec {
                    address,
                    weight: weight.unwrap_or(1),
                    admin: Admin::Enabled,
                    health: self
                        .state
                        .vip(&vip)
                        .map_err(|e| e.to_string())?
                        .spec
                        .health
                        .clone(),
                };
                // The MAC, if another backend at this address has one; if
                // not, the neighbour watcher resolves it in the background
                // (the backend takes traffic once it has a MAC).
                let mac = self.state.mac_of(address);
                let id = self.transact(|s| s.add_backend(&vip, spec, mac))?;
                self.start_checker(id);
                Ok(json!({
                    "vip": vip,
                    "backend": address,
                    "id": id,
                    "mac": if mac.is_some() { "known" } else { "resolving" },
                }))
            }
            Request::BackendRemove {
                vip,
                address,
                force,
            } => {
                let address = parse_ipv4(&address)?;
                // The last backend taking new flows: without it the VIP
                // black-holes them, so only on purpose (--force).
                let serving = |b: &crate::state::BackendState| {
                    b.spec.admin == Admin::Enabled && b.spec.weight > 0
                };
                let v = self.state.vip(&vip).map_err(|e| e.to_string())?;
                let last = v
                    .backends
                    .iter()
                    .any(|b| b.spec.address == address && serving(b))
                    && !v
                        .backends
                        .iter()
                        .any(|b| b.spec.address != address && serving(b));
                if last && !force {
                    return Err(format!(
                        "{address} is the last backend of VIP {vip} that takes new flows: \
                         without it the VIP drops its new traffic. Add or enable another \
                         backend first, remove the VIP (foobar vip remove {vip}), or repeat \
                         with --force"
                    ));
                }
                let b = self.transact(|s| s.remove_backend(&vip, address))?;
                self.stop_checker(b.id);
                if last {
                    warn!(vip = %vip, backend = %address, "last backend removed (--force): the VIP drops its new traffic");
                }
                Ok(
                    json!({ "vip": vip, "backend": address, "state": "removed", "vip_drops_new_flows": last }),
                )
            }
            Request::BackendDrain { vip, address } => {
                let address = parse_ipv4(&address)?;
                self.transact(|s| s.set_admin(&vip, address, Admin::Drained))?;
                Ok(json!({ "vip": vip, "backend": address, "admin": "drained" }))
            }
            Request::BackendEnable { vip, address } => {
                let address = parse_ipv4(&address)?;
                self.transact(|s| s.set_admin(&vip, address, Admin::Enabled))?;
                Ok(json!({ "vip": vip, "backend": address, "admin": "enabled" }))
            }
            Request::BackendWeight {
                vip,
                address,
                weight,
            } => {
                let address = parse_ipv4(&address)?;
                self.transact(|s| s.set_weight(&vip, address, weight))?;
                Ok(json!({ "vip": vip, "backend": address, "weight": weight }))
            }
        }
    }

    fn max_ids(&self) -> (usize, usize) {
        let vips = self
            .state
            .vips()
            .iter()
            .map(|v| v.id + 1)
            .max()
            .unwrap_or(0);
        let backends = self
            .state
            .vips()
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id + 1))
            .max()
            .unwrap_or(0);
        (vips as usize, backends as usize)
    }

    pub fn read_stats(&self) -> Result<Stats, String> {
        let (vips, backends) = self.max_ids();
        self.datapath
            .stats(vips, backends)
            .map_err(|e| format!("reading counters: {e}"))
    }

    fn sample_rates(&mut self) {
        let Ok(now_stats) = self.read_stats() else {
            return;
        };
        let now = Instant::now();
        if let Some((then, prev)) = &self.rates.last {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            let rate = |new: &crate::datapath::Counters,
                        old: Option<&crate::datapath::Counters>| {
                let old = old.cloned().unwrap_or_default();
                (
                    new.packets.saturating_sub(old.packets) as f64 / dt,
                    new.bytes.saturating_sub(old.bytes) as f64 / dt,
                )
            };
            self.rates.vips = now_stats
                .vips
                .iter()
                .enumerate()
                .map(|(i, c)| (i as u32, rate(c, prev.vips.get(i))))
                .collect();
            self.rates.backends = now_stats
                .backends
                .iter()
                .enumerate()
                .map(|(i, c)| (i as u32, rate(c, prev.backends.get(i))))
                .collect();
        }
        self.rates.last = Some((now, now_stats));
    }

    /// Starts a walk of the flow table on a blocking thread (if none runs):
    /// its result re-weights "wlc" VIPs from the active flows (every tick
    /// while one exists), frees retired backends no recent flow uses, and
    /// refreshes the occupancy figure (every GC_PERIOD). See `on_walk`.
    fn scan_flows(&mut self) {
        let has_wlc = self
            .state
            .vips()
            .iter()
            .any(|v| v.spec.scheduler == Scheduler::LeastConn);
        let due = self.last_scan.is_none_or(|t| t.elapsed() >= GC_PERIOD);
        if !has_wlc && !due {
            return;
        }
        if self.walking {
            return; // the previous walk is still running
        }
        let walker = match self.walker.take() {
            Some(w) => w,
            None => match self.datapath.flow_walker() {
                Ok(w) => w,
                Err(err) => {
                    warn!(%err, "cannot open the flow table for a walk");
                    return;
                }
            },
        };
        self.last_scan = Some(Instant::now());
        let since = monotonic_ns().saturating_sub(self.retire_idle.as_nanos() as u64);
        let retired_before = self.state.retired().iter().map(|r| r.id).collect();
        let tx = self.walk_tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let usage = walker.usage(since);
            let _ = tx.blocking_send(WalkDone {
                walker,
                usage,
                took: started.elapsed(),
                retired_before,
                gc_due: due,
            });
        });
        self.walking = true;
    }

    /// Records the flow table's occupancy and logs once each time it
    /// crosses FLOW_TABLE_WARN of its capacity (and once when it is back
    /// under): a full LRU evicts live flows, which rr/wlc reschedule.
    fn note_occupancy(&mut self, entries: usize) {
        self.flow_entries = entries;
        let capacity = self.datapath.flow_table_size() as usize;
        let near_full = entries as f64 >= capacity as f64 * FLOW_TABLE_WARN;
        if near_full && !self.flow_table_near_full {
            warn!(
                entries,
                capacity,
                "the flow table is nearly full: new flows evict the least recently used ones, \
                 and evicted connections of rr/wlc VIPs are reset; raise datapath.flow_table_size \
                 (see midflow_miss in foobar stats)"
            );
        } else if !near_full && self.flow_table_near_full {
            info!(entries, capacity, "the flow table has room again");
        }
        self.flow_table_near_full = near_full;
    }

    fn on_walk(&mut self, done: WalkDone) {
        self.walking = false;
        self.walker = Some(done.walker);
        self.last_walk = done.took;
        let usage = match done.usage {
            Ok(u) => u,
            Err(err) => {
                warn!(%err, "reading the flow table failed");
                return;
            }
        };
        if done.took > GC_PERIOD {
            warn!(
                took_ms = done.took.as_millis() as u64,
                entries = usage.entries,
                "walking the flow table took longer than its period"
            );
        }
        self.note_occupancy(usage.entries);
        let before = self.state.clone();
        let reweighted = self.state.set_active(usage.active);
        let freed = if done.gc_due {
            // Backends retired after the walk started keep their entry
            // until a walk that saw the whole of their flows.
            let mut in_use = usage.in_use;
            in_use.extend(
                self.state
                    .retired()
                    .iter()
                    .map(|r| r.id)
                    .filter(|id| !done.retired_before.contains(id)),
            );
            self.state.free_retired(&in_use)
        } else {
            Vec::new()
        };
        if !reweighted && freed.is_empty() {
            return;
        }
        match self.datapath.apply(&self.state.plan()) {
            Ok(()) => {
                for r in freed {
                    info!(vip = %r.vip, backend = %r.address, id = r.id, "removed backend has no active flow left; entry freed");
                }
            }
            Err(err) => {
                warn!(%err, "applying the flow-table scan failed");
                self.roll_back(before, false);
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        let rate =
            |m: &HashMap<u32, (f64, f64)>, id: u32| m.get(&id).copied().unwrap_or((0.0, 0.0));
        let stats = self.read_stats().ok();
        let vips: Vec<_> = self
            .state
            .vips()
            .iter()
            .map(|v| {
                let (pps, bps) = rate(&self.rates.vips, v.id);
                let backends: Vec<_> = v
                    .backends
                    .iter()
                    .map(|b| {
                        let (bpps, bbps) = rate(&self.rates.backends, b.id);
                        let c = stats.as_ref().map(|s| s.backend(b.id)).unwrap_or_default();
                        json!({
                            "address": b.spec.address,
                            "id": b.id,
                            "active_flows": self.state.active(b.id),
                            "weight": b.spec.weight,
                            "admin": b.spec.admin.name(),
                            "health": if b.up && b.mac.is_some() { "up" } else { "down" },
                            "last_check": match b.mac {
                                Some(_) => b.last_check.clone(),
                                None => self.no_mac_reason(v.spec.vlan, &v.spec.name, b.spec.address),
                            },
                            "mac": mac_text(b.mac),
                            "packets": c.packets,
                            "bytes": c.bytes,
                            "packets_per_s": bpps,
                            "bytes_per_s": bbps,
                        })
                    })
                    .collect();
                json!({
                    "name": v.spec.name,
                    "address": v.spec.address,
                    "port": v.spec.port,
                    "protocol": v.spec.protocol.name(),
                    "scheduler": v.spec.scheduler.name(),
                    "forwarding": v.spec.forwarding.name(),
                    "vlan": v.spec.vlan,
                    "packets_per_s": pps,
                    "bytes_per_s": bps,
                    "backends": backends,
                })
            })
            .collect();
        let removed: Vec<_> = self
            .state
            .retired()
            .iter()
            .map(|r| json!({ "vip": r.vip, "address": r.address, "id": r.id }))
            .collect();
        json!({
            "interface": self.iface,
            "flow_table": {
                "entries": self.flow_entries,
                "capacity": self.datapath.flow_table_size(),
                "walk_ms": self.last_walk.as_secs_f64() * 1e3,
            },
            "health_checks_not_run": health::checks_not_run(),
            "state_file": {
                "path": self.state_file,
                "saved": self.unsaved.is_none(),
                "problem": self.unsaved,
            },
            "vips": vips,
            "removed_backends": removed,
            "vrrp": self
                .vrrp
                .as_ref()
                .map(|r| r.statuses().iter().map(|s| s.to_json()).collect::<Vec<_>>())
                .unwrap_or_default(),
        })
    }

    fn stats_json(&self) -> Result<serde_json::Value, String> {
        let stats = self.read_stats()?;
        let reasons: serde_json::Map<String, serde_json::Value> = stats
            .reasons
            .iter()
            .map(|(name, c)| {
                (
                    (*name).to_owned(),
                    json!({ "packets": c.packets, "bytes": c.bytes }),
                )
            })
            .collect();
        let vips: Vec<_> = self
            .state
            .vips()
            .iter()
            .map(|v| {
                let c = stats.vip(v.id);
                let backends: Vec<_> = v
                    .backends
                    .iter()
                    .map(|b| {
                        let c = stats.backend(b.id);
                        json!({ "address": b.spec.address, "packets": c.packets, "bytes": c.bytes })
                    })
                    .collect();
                json!({ "name": v.spec.name, "packets": c.packets, "bytes": c.bytes, "backends": backends })
            })
            .collect();
        let events: serde_json::Map<String, serde_json::Value> = stats
            .events
            .iter()
            .map(|(name, n)| ((*name).to_owned(), json!(n)))
            .collect();
        Ok(json!({ "reasons": reasons, "events": events, "vips": vips }))
    }

    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let stats = self.read_stats().unwrap_or_default();
        let mut s = metrics::Snapshot {
            reasons: stats
                .reasons
                .iter()
                .map(|(name, c)| (*name, c.packets, c.bytes))
                .collect(),
            events: stats.events.clone(),
            flow_entries: self.flow_entries as u64,
            health_checks_not_run: health::checks_not_run(),
            flow_capacity: u64::from(self.datapath.flow_table_size()),
            ..Default::default()
        };
        for v in self.state.vips() {
            let c = stats.vip(v.id);
            s.vips.push((v.spec.name.clone(), c.packets, c.bytes));
            for b in &v.backends {
                let c = stats.backend(b.id);
                s.backends.push(metrics::BackendSample {
                    vip: v.spec.name.clone(),
                    backend: b.spec.address.to_string(),
                    packets: c.packets,
                    bytes: c.bytes,
                    up: b.up && b.mac.is_some(),
                    enabled: b.spec.admin == Admin::Enabled,
                });
            }
        }
        s
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

/// Applies one reload operation as the matching CLI operation would.
fn apply_op(s: &mut State, op: &crate::reload::Op) -> Result<(), StateError> {
    use crate::reload::Op;
    match op {
        Op::RemoveVip(name) => s.remove_vip(name).map(drop),
        Op::AddVip(spec) => s.add_vip(spec.clone()).map(drop),
        Op::RemoveBackend { vip, address } => s.remove_backend(vip, *address).map(drop),
        Op::SetWeight {
            vip,
            address,
            weight,
        } => s.set_weight(vip, *address, *weight).map(drop),
        Op::SetHealth {
            vip,
            address,
            health,
        } => s.set_health_spec(vip, *address, health.clone()).map(drop),
        Op::AddBackend { vip, spec } => {
            // A MAC known from another backend at this address; if none,
            // the neighbour watcher resolves it (no traffic until then).
            let mac = s.mac_of(spec.address);
            s.add_backend(vip, spec.clone(), mac).map(drop)
        }
    }
}

/// An operation as the reload's answer and log show it.
fn op_text(op: &crate::reload::Op) -> String {
    use crate::reload::Op;
    match op {
        Op::RemoveVip(name) => format!("vip remove {name}"),
        Op::AddVip(v) => format!(
            "vip add {} {}:{}/{}",
            v.name,
            v.address,
            v.port,
            v.protocol.name()
        ),
        Op::RemoveBackend { vip, address } => format!("backend remove {vip} {address}"),
        Op::SetWeight {
            vip,
            address,
            weight,
        } => format!("backend weight {vip} {address} {weight}"),
        Op::SetHealth { vip, address, .. } => format!("backend health {vip} {address}"),
        Op::AddBackend { vip, spec } => format!(
            "backend add {vip} {} weight {}{}",
            spec.address,
            spec.weight,
            if spec.admin == Admin::Drained {
                " (drained)"
            } else {
                ""
            }
        ),
    }
}

/// Settings a running daemon cannot change (they shape the loaded
/// datapath or the bound sockets), as `KEY: OLD -> NEW`.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{key}: {a} -> {b}"));
        }
    };
    let (a, b) = (&old.datapath, &new.datapath);
    cmp(
        "datapath.interface",
        format!("{:?}", a.interface),
        format!("{:?}", b.interface),
    );
    cmp(
        "datapath.xdp_mode",
        a.xdp_mode.name().into(),
        b.xdp_mode.name().into(),
    );
    cmp(
        "datapath.flow_table_size",
        a.flow_table_size.to_string(),
        b.flow_table_size.to_string(),
    );
    cmp(
        "datapath.affinity_table_size",
        format!("{:?}", a.affinity_table_size),
        format!("{:?}", b.affinity_table_size),
    );
    cmp(
        "datapath.hash_seed",
        a.hash_seed.to_string(),
        b.hash_seed.to_string(),
    );
    cmp(
        "datapath.wlc_period_ms",
        a.wlc_period_ms.to_string(),
        b.wlc_period_ms.to_string(),
    );
    cmp(
        "api.socket",
        old.socket.display().to_string(),
        new.socket.display().to_string(),
    );
    cmp(
        "metrics.listen",
        format!("{:?}", old.metrics_listen),
        format!("{:?}", new.metrics_listen),
    );
    // The VRRP tasks run with the config they started with.
    let vrrp = |c: &Config| {
        c.vrrp
            .iter()
            .map(|v| {
                format!(
                    "vrid {} priority {} advert {}cs preempt {} delay {:?} iface {:?} {:?}",
                    v.vrid,
                    v.priority,
                    v.advert_interval_cs,
                    v.preempt,
                    v.preempt_delay,
                    v.interface,
                    v.addresses
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    cmp("vrrp", vrrp(old), vrrp(new));
    out
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Reload => "reload",
        Request::Status => "status",
        Request::Stats => "stats",
        Request::VipAdd { .. } => "vip add",
        Request::VipRemove { .. } => "vip remove",
        Request::AffinityPurge { .. } => "vip purge-affinity",
        Request::BackendAdd { .. } => "backend add",
        Request::BackendRemove { .. } => "backend remove",
        Request::BackendDrain { .. } => "backend drain",
        Request::BackendEnable { .. } => "backend enable",
        Request::BackendWeight { .. } => "backend weight",
    }
}

/// Every address whose MAC the daemon follows, current backends and
/// removed ones, each with the VLAN it is reached on: its VIP's; for a
/// removed backend whose VIP is gone, the VLAN it was last followed on
/// (`segments` remembers, and forgets addresses no longer wanted). One
/// address is one host: a backend address is on one VLAN only (config
/// validation and `backend add` refuse more), so the first VIP decides.
fn wanted(state: &State, segments: &mut HashMap<Ipv4Addr, Option<u16>>) -> Vec<neigh::Wanted> {
    let mut now: HashMap<Ipv4Addr, Option<u16>> = HashMap::new();
    for v in state.vips() {
        for b in &v.backends {
            now.entry(b.spec.address).or_insert(v.spec.vlan);
        }
    }
    for r in state.retired() {
        let vlan = match state.vip(&r.vip) {
            Ok(v) => v.spec.vlan,
            Err(_) => segments.get(&r.address).copied().flatten(),
        };
        now.entry(r.address).or_insert(vlan);
    }
    *segments = now;
    let mut all: Vec<neigh::Wanted> = segments.iter().map(|(a, v)| (*v, *a)).collect();
    all.sort_by_key(|(v, a)| (*a, *v));
    all
}

/// A MAC as `ip neigh` prints it, or "none".
fn mac_text(mac: Option<[u8; 6]>) -> String {
    match mac {
        Some(m) => m
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        None => "none".into(),
    }
}

/// An IPv4 address, or an error that says what was expected.
pub fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("\"{text}\" is not an IPv4 address (for example 10.0.0.11)"))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the datapath's last-seen
/// times (bpf_ktime_get_coarse_ns, which lags it by at most one tick).
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    //! Loads the XDP object (root, as every datapath test).
    use super::*;
    use crate::{config::HealthSpec, datapath::LoadOptions};

    fn vip(name: &str, last: u8, scheduler: Scheduler, table: u32) -> VipSpec {
        VipSpec {
            name: name.into(),
            address: Ipv4Addr::new(192, 0, 2, last),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler,
            maglev_table_size: table,
            affinity_timeout_s: None,
            forwarding: Forwarding::Dsr,
            health: HealthSpec::default(),
            vlan: None,
            pass_closed_ports: false,
        }
    }

    #[test]
    fn backends_are_followed_on_their_vip_vlan_and_removed_ones_keep_theirs() {
        let backend = |last: u8| BackendSpec {
            address: Ipv4Addr::new(10, 0, 0, last),
            weight: 1,
            admin: Admin::Enabled,
            health: HealthSpec::default(),
        };
        let mut state = State::default();
        state
            .add_vip(VipSpec {
                vlan: Some(100),
                ..vip("web100", 10, Scheduler::RoundRobin, 65537)
            })
            .unwrap();
        state
            .add_vip(vip("web", 11, Scheduler::RoundRobin, 65537))
            .unwrap();
        for (v, last) in [("web100", 1), ("web100", 2), ("web", 3)] {
            state.add_backend(v, backend(last), None).unwrap();
        }
        let mut segments = HashMap::new();
        let ip = |last| Ipv4Addr::new(10, 0, 0, last);
        assert_eq!(
            wanted(&state, &mut segments),
            vec![(Some(100), ip(1)), (Some(100), ip(2)), (None, ip(3))]
        );
        // Its VIP removed, 10.0.0.1 is retired (its flows still go to it):
        // still followed on VLAN 100.
        state.remove_vip("web100").unwrap();
        assert_eq!(
            wanted(&state, &mut segments),
            vec![(Some(100), ip(1)), (Some(100), ip(2)), (None, ip(3))]
        );
        state.free_retired(&Default::default());
        assert_eq!(wanted(&state, &mut segments), vec![(None, ip(3))]);
        assert_eq!(segments.len(), 1, "forgotten once no longer wanted");
    }

    #[tokio::test]
    async fn a_refused_change_leaves_state_file_and_maps_as_they_were() {
        // A Maglev table larger than a ring holds: adding its first backend
        // (the server behind "web" too, so its MAC is known and it is up)
        // passes the state's checks but fails in the datapath, after the
        // new backend's entry was written.
        let mut state = State::default();
        state
            .add_vip(vip("web", 10, Scheduler::RoundRobin, 65537))
            .unwrap();
        let be1 = BackendSpec {
            address: Ipv4Addr::new(10, 0, 0, 1),
            weight: 1,
            admin: Admin::Enabled,
            health: HealthSpec::default(),
        };
        state.add_backend("web", be1, [2, 0, 0, 0, 0, 1]).unwrap();
        state
            .add_vip(vip("big", 11, Scheduler::Maglev, 131_071))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("foobar-rollback-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state_file = dir.join("foobar.state.json");
        let dp = Datapath::load(&LoadOptions {
            flow_table_size: 1024,
            ..LoadOptions::default()
        })
        .expect("datapath loads (root needed)");
        let mut owner = Owner::new(
            state.clone(),
            dp,
            "lo".into(),
            1,
            state_file.clone(),
            "digest".into(),
            Duration::from_secs(1),
        );
        owner.datapath.apply(&owner.state.plan()).unwrap();
        owner.save().unwrap();
        let file_before = std::fs::read_to_string(&state_file).unwrap();
        let entries_before: Vec<_> = (0..4)
            .map(|id| owner.datapath.backend(id).unwrap())
            .collect();

        let response = owner
            .handle(Request::BackendAdd {
                vip: "big".into(),
                address: "10.0.0.1".into(),
                weight: None,
            })
            .await;
        let file_after = std::fs::read_to_string(&state_file).unwrap();
        let entries_after: Vec<_> = (0..4)
            .map(|id| owner.datapath.backend(id).unwrap())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(!response.ok);
        let error = response.error.unwrap();
        assert!(
            error.starts_with("not applied: writing the BPF maps failed"),
            "{error}"
        );
        assert!(!error.contains("undoing it failed"), "{error}");
        assert_eq!(owner.state, state);
        assert_eq!(file_after, file_before);
        assert_eq!(
            entries_after, entries_before,
            "the refused backend's entry (id 1) is gone from the map"
        );
        assert_eq!(entries_after[1], foobar_common::Backend::default());
    }

    #[tokio::test]
    async fn an_emergency_drain_reaches_the_datapath_when_the_state_cannot_be_saved() {
        let mut state = State::default();
        state
            .add_vip(vip("web", 10, Scheduler::RoundRobin, 65537))
            .unwrap();
        for last in [1, 2] {
            let spec = BackendSpec {
                address: Ipv4Addr::new(10, 0, 0, last),
                weight: 1,
                admin: Admin::Enabled,
                health: HealthSpec::default(),
            };
            state
                .add_backend("web", spec, [2, 0, 0, 0, 0, last])
                .unwrap();
        }
        // Its directory is gone (as a disk that went away): nothing can be saved.
        let state_file = std::env::temp_dir()
            .join(format!("foobar-nowhere-{}", std::process::id()))
            .join("foobar.state.json");
        let dp = Datapath::load(&LoadOptions {
            flow_table_size: 1024,
            ..LoadOptions::default()
        })
        .expect("datapath loads (root needed)");
        let mut owner = Owner::new(
            state,
            dp,
            "lo".into(),
            1,
            state_file.clone(),
            "digest".into(),
            Duration::from_secs(1),
        );
        owner.datapath.apply(&owner.state.plan()).unwrap();
        let new_flows = |o: &Owner, id| {
            o.datapath.backend(id).unwrap().flags & foobar_common::BACKEND_NEW_FLOWS != 0
        };
        assert!(new_flows(&owner, 0));

        let response = owner
            .handle(Request::BackendDrain {
                vip: "web".into(),
                address: "10.0.0.1".into(),
            })
            .await;
        assert!(response.ok, "{response:?}");
        let warning = response.result.unwrap()["warning"]
            .as_str()
            .expect("the answer warns")
            .to_owned();
        assert!(warning.contains("will NOT survive a restart"), "{warning}");
        assert!(!new_flows(&owner, 0), "the drain reached the datapath");
        assert!(new_flows(&owner, 1));
        assert_eq!(owner.status()["state_file"]["saved"], false);
        assert!(!state_file.exists());

        let response = owner
            .handle(Request::BackendWeight {
                vip: "web".into(),
                address: "10.0.0.2".into(),
                weight: 0,
            })
            .await;
        assert!(response.ok, "{response:?}");
        assert!(!new_flows(&owner, 1), "weight 0 reached the datapath");
    }
}

#[cfg(test)]
mod vrrp_reload_tests {
    use super::restart_only_changes;

    const BASE: &str = "[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n\
        [[vip.backend]]\naddress = \"10.0.0.11\"\n";

    #[test]
    fn a_changed_vrrp_instance_takes_effect_at_the_next_restart() {
        let with = |vrrp: &str| crate::config::parse(&format!("{BASE}{vrrp}")).unwrap();
        let a = with("[[vrrp]]\nvrid = 51\nvips = [\"web\"]\n");
        let b = with("[[vrrp]]\nvrid = 51\npriority = 150\nvips = [\"web\"]\n");
        assert_eq!(restart_only_changes(&a, &a.clone()), Vec::<String>::new());
        let changes = restart_only_changes(&a, &b);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            changes[0].starts_with("vrrp: vrid 51 priority 100"),
            "{changes:?}"
        );
        assert!(
            changes[0].contains("-> vrid 51 priority 150"),
            "{changes:?}"
        );
        let none = with("");
        assert_eq!(restart_only_changes(&none, &a).len(), 1);
    }
}
