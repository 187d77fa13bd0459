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
    config::{Forwarding, Protocol, Scheduler},
    datapath::{Datapath, FlowUsage, FlowWalker, Stats},
    health::{self, Transition},
    metrics,
    neigh::{self, Neighbour},
    state::{Admin, BackendSpec, SavedVip, State, StateError, VipSpec},
};

/// How long a removed backend's flows may stay idle before its entry is
/// freed (a flow idle longer than this is rescheduled if it sends again);
/// also how recently an open flow must have been seen to count as an
/// active connection for "wlc".
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

/// `/etc/foobar/foobar.toml` keeps its runtime changes in
/// `/etc/foobar/foobar.state.json`.
pub fn state_file_for(config: &Path) -> PathBuf {
    config.with_extension("state.json")
}

pub fn config_digest(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the state file atomically (temporary file, fsync, rename).
pub fn save_state_file(path: &Path, file: &StateFile) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::to_string_pretty(file)?.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
    last_scan: Option<Instant>,
    /// The flow-table walker's own map handle, while no walk runs.
    walker: Option<FlowWalker>,
    walking: bool,
    walk_tx: mpsc::Sender<WalkDone>,
    walk_rx: mpsc::Receiver<WalkDone>,
    /// How long the latest walk took (for `foobar status`).
    last_walk: Duration,
    /// Backend addresses whose MACs the neighbour watcher follows.
    wanted: watch::Sender<Vec<Ipv4Addr>>,
    neigh_rx: mpsc::Receiver<HashMap<Ipv4Addr, Neighbour>>,
    neigh_tx: mpsc::Sender<HashMap<Ipv4Addr, Neighbour>>,
    neigh_task: Option<JoinHandle<()>>,
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
            last_scan: None,
            walker: None,
            walking: false,
            walk_tx,
            walk_rx,
            last_walk: Duration::ZERO,
            wanted: watch::Sender::new(Vec::new()),
            neigh_rx,
            neigh_tx,
            neigh_task: None,
        }
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
        self.save().with_context(|| {
            format!(
                "cannot write the state file {} (runtime changes must survive a restart); \
                 make its directory writable",
                self.state_file.display()
            )
        })?;
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
                warn!(vip = %v.spec.name, backend = %b.spec.address, reason = %neigh::no_mac_reason(b.spec.address, &self.iface), "backend starts down");
            }
        }
        self.wanted.send_replace(self.state.addresses());
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
            self.wanted.send_if_modified(|w| {
                let now = self.state.addresses();
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

    /// The neighbour watcher's latest view of the backends' next hops:
    /// a changed MAC is written to the backend's entry, a failed one takes
    /// the backend out until it resolves again.
    fn on_neighbours(&mut self, table: HashMap<Ipv4Addr, Neighbour>) {
        let before = self.state.clone();
        let mut changes = Vec::new();
        for (address, n) in table {
            let mac = match n {
                Neighbour::Known(mac) => Some(mac),
                Neighbour::Failed => None,
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
                            warn!(backend = %address, old = %mac_text(old), reason = %neigh::no_mac_reason(address, &self.iface), "backend has no MAC; out until it resolves")
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
    /// on any failure puts everything back and returns the error.
    fn transact<T>(
        &mut self,
        change: impl FnOnce(&mut State) -> Result<T, StateError>,
    ) -> Result<T, String> {
        let before = self.state.clone();
        let result = change(&mut self.state).map_err(|e| e.to_string())?;
        if let Err(e) = self.save() {
            self.state = before;
            return Err(format!(
                "not applied: cannot write the state file {}: {e}",
                self.state_file.display()
            ));
        }
        if let Err(e) = self.datapath.apply(&self.state.plan()) {
            let mut message = format!("not applied: writing the BPF maps failed: {e}");
            if let Some(problem) = self.roll_back(before, true) {
                message.push_str(&format!("; and undoing it failed: {problem}"));
            }
            return Err(message);
        }
        Ok(result)
    }

    async fn handle(&mut self, request: Request) -> Response {
        let op = request_name(&request);
        let result = self.dispatch(request).await;
        match result {
            Ok(value) => {
                if op != "status" && op != "stats" {
                    info!(op, result = %value, "control request applied");
                }
                Response::ok(value)
            }
            Err(message) => {
                if op != "status" && op != "stats" {
                    warn!(op, error = %message, "control request refused");
                }
                Response::error(message)
            }
        }
    }

    async fn dispatch(&mut self, request: Request) -> Result<serde_json::Value, String> {
        match request {
            Request::Status => Ok(self.status()),
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
        let since = monotonic_ns().saturating_sub(RETIRE_IDLE.as_nanos() as u64);
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
                                None => neigh::no_mac_reason(b.spec.address, &self.iface),
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
            "vips": vips,
            "removed_backends": removed,
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

fn request_name(r: &Request) -> &'static str {
    match r {
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
}
