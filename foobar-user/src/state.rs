//! The desired state of the load balancer: VIPs, their backends with admin
//! state (enabled/drained), weight, health, and the ids they hold in the
//! datapath. The daemon's state owner is its only mutator; every operation
//! here either applies completely or returns an error and changes nothing.
//! `plan()` derives what the maps must hold. Pure: no I/O, no clock.
//!
//! A removed backend is *retired*, not forgotten: it leaves the ring at once
//! (no new flows) but keeps its datapath entry, so established flows finish
//! on it, until the owner sees no recent flow using it and frees its id.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use foobar_common::{
    Backend, NatVip, Service, VipAddrKey, VipAddrKey6, VipKey, ADDR_PASS_CLOSED_PORTS, ADDR_SNAT,
    ADDR_SNAT_ONLY, AF_INET, AF_INET6, BACKEND_NEW_FLOWS, BACKEND_UP, FWD_DNAT, FWD_DSR, FWD_IPIP,
    FWD_NAT, MAX_BACKENDS, MAX_VIPS, RING_CAPACITY, SCHED_MAGLEV, SCHED_RR, SERVICE_AFFINITY,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{self, Forwarding, HealthSpec, NatSettings, Protocol, Scheduler, MAX_WEIGHT},
    maglev,
    plan::{MapsContent, Plan, PlannedVip},
    ring,
};

/// A VIP as configured or added at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSpec {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    /// Slots of the Maglev table (prime), for the Maglev scheduler.
    #[serde(default = "default_table_size")]
    pub maglev_table_size: u32,
    /// Source affinity timeout (seconds), if the VIP has it.
    #[serde(default)]
    pub affinity_timeout_s: Option<u32>,
    pub forwarding: Forwarding,
    /// NAT settings, for `Forwarding::Nat` (required then) and
    /// `Forwarding::Dnat` (timeouts only; defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatSettings>,
    /// Health check of backends added at run time.
    pub health: HealthSpec,
    /// 802.1Q VLAN the VIP is served on (None: untagged frames only).
    #[serde(default)]
    pub vlan: Option<u16>,
    /// TCP/UDP to ports of the VIP's address that no VIP serves is passed
    /// to the node's own stack instead of dropped.
    #[serde(default)]
    pub pass_closed_ports: bool,
}

fn default_table_size() -> u32 {
    crate::maglev::DEFAULT_TABLE_SIZE
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    /// Takes new flows while healthy.
    Enabled,
    /// No new flows; established flows continue.
    Drained,
}

impl Admin {
    pub fn name(self) -> &'static str {
        match self {
            Admin::Enabled => "enabled",
            Admin::Drained => "drained",
        }
    }
}

/// A backend as configured or added at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub address: IpAddr,
    pub weight: u32,
    /// NAT VIPs only: the port the backend serves on (None: the VIP's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub admin: Admin,
    pub health: HealthSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub id: u32,
    pub spec: BackendSpec,
    pub mac: Option<[u8; 6]>,
    /// Generation of this holder of `id` (see `foobar_common::Backend::gen`).
    pub gen: u32,
    /// Health as the checks last decided (backends start up, as HAProxy's).
    pub up: bool,
    /// The result that set `up`, for `foobar status`.
    pub last_check: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipState {
    pub id: u32,
    pub spec: VipSpec,
    pub backends: Vec<BackendState>,
}

/// A removed backend whose entry stays in the datapath for its flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired {
    pub id: u32,
    pub vip: String,
    pub address: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub gen: u32,
    /// Its health when it was removed (retired backends are not checked).
    pub up: bool,
}

/// VIPs and backends as the state file keeps them, with the backends the
/// checks last found down (no ids or MACs: those are found again at start,
/// or adopted from pinned maps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVip {
    #[serde(flatten)]
    pub spec: VipSpec,
    pub backends: Vec<BackendSpec>,
    /// Backends (by address) that were down when the state was saved: they
    /// start down, and take traffic after `rise` good checks. Absent in
    /// older files: every backend starts up, at the edge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub down: Vec<IpAddr>,
}

/// What `State::adopt` kept and changed, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    pub vips_kept: usize,
    pub backends_kept: usize,
    pub backends_new: usize,
    /// Pinned backends no VIP has any more, kept for their flows.
    pub retired: usize,
    pub next_gen: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("no VIP named \"{0}\" (`foobar status` lists the VIPs)")]
    UnknownVip(String),
    #[error("VIP {vip} has no backend {address} (`foobar status` lists its backends)")]
    UnknownBackend { vip: String, address: IpAddr },
    #[error("a VIP named \"{0}\" exists already; pick another name or remove it first")]
    DuplicateVip(String),
    #[error("{0} is already served by VIP \"{1}\"")]
    DuplicateService(String, String),
    #[error(
        "VIP {vip} already has backend {address}; use `foobar backend weight|enable` to change it"
    )]
    DuplicateBackend { vip: String, address: IpAddr },
    #[error("{what}: the datapath holds at most {limit}")]
    Full { what: &'static str, limit: u32 },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    vips: Vec<VipState>,
    retired: Vec<Retired>,
    /// The generation the next backend gets: never 0, never reused while
    /// the daemon runs, so an id's new holder never matches an entry made
    /// for its old one.
    next_gen: u32,
    /// Active (open, recently seen) flows per backend id, as last counted
    /// in the flow table: what "wlc" VIPs weigh their rings by.
    active: HashMap<u32, u32>,
    /// Two-arm: the interface (index) each backend address is reached
    /// through, from the neighbour table; absent: the one its frames came
    /// in on (one-arm). Written into the backends' entries.
    egress: HashMap<IpAddr, u32>,
}

impl VipSpec {
    pub fn from_config(v: &config::Vip) -> Self {
        VipSpec {
            name: v.name.clone(),
            address: v.address,
            port: v.port,
            protocol: v.protocol,
            scheduler: v.scheduler,
            maglev_table_size: v.maglev_table_size,
            affinity_timeout_s: v.affinity_timeout_s,
            forwarding: v.forwarding,
            nat: v.nat,
            health: v.health.clone(),
            vlan: v.vlan,
            pass_closed_ports: v.pass_closed_ports,
        }
    }

    fn service_text(&self) -> String {
        let vlan = self.vlan.map(|v| format!(" on VLAN {v}"));
        format!(
            "{}/{}{}",
            std::net::SocketAddr::new(self.address, self.port),
            self.protocol.name(),
            vlan.unwrap_or_default()
        )
    }
}

/// The VIPs and backends a config describes, as the state file would.
pub fn saved_from_config(config: &config::Config) -> Vec<SavedVip> {
    config
        .vips
        .iter()
        .map(|v| SavedVip {
            spec: VipSpec::from_config(v),
            backends: v
                .backends
                .iter()
                .map(|b| BackendSpec {
                    address: b.address,
                    weight: b.weight,
                    port: b.port,
                    admin: Admin::Enabled,
                    health: b.health.clone(),
                })
                .collect(),
            down: Vec::new(),
        })
        .collect()
}

impl State {
    /// Builds the state from saved VIPs (from the config or the state file),
    /// checking them as the run-time operations would; every backend must
    /// have a MAC in `macs`.
    pub fn build(saved: &[SavedVip], macs: &HashMap<IpAddr, [u8; 6]>) -> Result<State, BuildError> {
        let state = State::build_unresolved(saved, macs)?;
        if let Some((v, b)) = state
            .vips
            .iter()
            .find_map(|v| v.backends.iter().find(|b| b.mac.is_none()).map(|b| (v, b)))
        {
            return Err(MissingMac {
                vip: v.spec.name.clone(),
                address: b.spec.address,
            }
            .into());
        }
        Ok(state)
    }

    /// As `build`, but a backend missing from `macs` is kept without a MAC
    /// (it takes no traffic until `set_mac` gives it one): the daemon
    /// starts with the backends it can reach.
    pub fn build_unresolved(
        saved: &[SavedVip],
        macs: &HashMap<IpAddr, [u8; 6]>,
    ) -> Result<State, StateError> {
        let mut state = State::default();
        for vip in saved {
            state.add_vip(vip.spec.clone())?;
            for b in &vip.backends {
                let mac = macs.get(&b.address).copied();
                let id = state.add_backend(&vip.spec.name, b.clone(), mac)?;
                if vip.down.contains(&b.address) {
                    state.set_health(id, false, "down when the daemon stopped (saved state)");
                }
            }
        }
        Ok(state)
    }

    pub fn vips(&self) -> &[VipState] {
        &self.vips
    }

    pub fn retired(&self) -> &[Retired] {
        &self.retired
    }

    pub fn vip(&self, name: &str) -> Result<&VipState, StateError> {
        self.vips
            .iter()
            .find(|v| v.spec.name == name)
            .ok_or_else(|| StateError::UnknownVip(name.to_owned()))
    }

    fn vip_mut(&mut self, name: &str) -> Result<&mut VipState, StateError> {
        self.vips
            .iter_mut()
            .find(|v| v.spec.name == name)
            .ok_or_else(|| StateError::UnknownVip(name.to_owned()))
    }

    /// The backend with datapath id `id`, and its VIP.
    pub fn backend(&self, id: u32) -> Option<(&VipState, &BackendState)> {
        self.vips
            .iter()
            .find_map(|v| v.backends.iter().find(|b| b.id == id).map(|b| (v, b)))
    }

    pub fn add_vip(&mut self, mut spec: VipSpec) -> Result<u32, StateError> {
        // The config's rules, so `vip add` and the file agree.
        config::rules::name(&spec.name)
            .map_err(|e| StateError::Invalid(format!("VIP name {e}")))?;
        config::rules::vip_address(spec.address).map_err(StateError::Invalid)?;
        if self.vips.iter().any(|v| v.spec.name == spec.name) {
            return Err(StateError::DuplicateVip(spec.name));
        }
        if spec.address.is_ipv6() && matches!(spec.forwarding, Forwarding::Nat | Forwarding::Dnat) {
            return Err(StateError::Invalid(format!(
                "VIP {}: {} is IPv6, and nat (the default) and dnat are IPv4-only; forward it with dsr \
                 or ipip (`--forwarding dsr`, or forwarding = \"dsr\" in the config; \
                 docs/IPV6.md)",
                spec.name, spec.address
            )));
        }
        if spec.forwarding == Forwarding::Dnat && spec.nat.is_none() {
            // No SNAT settings to ask for: the default timeouts.
            spec.nat = Some(config::dnat::settings(&NatSettings::default()));
        }
        if spec.forwarding == Forwarding::Nat
            && spec.nat.is_none_or(|n| n.snat_address.is_unspecified())
        {
            return Err(StateError::Invalid(format!(
                "VIP {}: a nat VIP needs an SNAT address, ports and timeouts (the node's \
                 [datapath] settings, its own snat_address, or the interface's primary \
                 address, resolved by `foobar run`)",
                spec.name
            )));
        }
        if let Some(v) = self.vips.iter().find(|v| {
            (v.spec.address, v.spec.port, v.spec.protocol, v.spec.vlan)
                == (spec.address, spec.port, spec.protocol, spec.vlan)
        }) {
            return Err(StateError::DuplicateService(
                spec.service_text(),
                v.spec.name.clone(),
            ));
        }
        let used: HashSet<u32> = self.vips.iter().map(|v| v.id).collect();
        let id = (0..MAX_VIPS)
            .find(|i| !used.contains(i))
            .ok_or(StateError::Full {
                what: "VIPs",
                limit: MAX_VIPS,
            })?;
        self.vips.push(VipState {
            id,
            spec,
            backends: Vec::new(),
        });
        Ok(id)
    }

    /// Removes a VIP; its backends are retired (their flows may finish).
    pub fn remove_vip(&mut self, name: &str) -> Result<VipState, StateError> {
        let index = self
            .vips
            .iter()
            .position(|v| v.spec.name == name)
            .ok_or_else(|| StateError::UnknownVip(name.to_owned()))?;
        let vip = self.vips.remove(index);
        for b in &vip.backends {
            self.retire(&vip.spec.name, b);
        }
        Ok(vip)
    }

    /// Everything `add_backend` checks except the MAC, so a request that
    /// will be refused is refused before the MAC is looked for.
    pub fn check_add_backend(&self, vip: &str, spec: &BackendSpec) -> Result<(), StateError> {
        let v = self.vip(vip)?;
        check_weight(spec.weight)?;
        config::rules::backend_address(spec.address, v.spec.address)
            .map_err(StateError::Invalid)?;
        for other in &self.vips {
            if other
                .backends
                .iter()
                .any(|b| b.spec.address == spec.address)
            {
                config::rules::backend_vlan(
                    spec.address,
                    v.spec.vlan,
                    &other.spec.name,
                    other.spec.vlan,
                )
                .map_err(StateError::Invalid)?;
            }
        }
        if let (Some(port), false) = (spec.port, config::dnat::translates_port(v.spec.forwarding)) {
            return Err(StateError::Invalid(format!(
                "backend port {port}: VIP {vip} forwards with {}, where a backend answers on \
                 the VIP's port; a backend port needs forwarding nat or dnat",
                v.spec.forwarding.name()
            )));
        }
        if v.backends.iter().any(|b| b.spec.address == spec.address) {
            return Err(StateError::DuplicateBackend {
                vip: vip.to_owned(),
                address: spec.address,
            });
        }
        if self.ids_in_use().len() >= MAX_BACKENDS as usize {
            return Err(StateError::Full {
                what: "backends (removed ones count until their flows end)",
                limit: MAX_BACKENDS,
            });
        }
        let weights = v
            .backends
            .iter()
            .map(|b| b.spec.weight)
            .chain([spec.weight]);
        if v.spec.scheduler == Scheduler::Maglev {
            config::rules::maglev_table(v.spec.maglev_table_size, weights.clone())
                .map_err(|e| StateError::Invalid(format!("maglev_table_size: {e}")))?;
        }
        check_ring(weights)
    }

    /// Adds a backend with its MAC, or none yet (see `set_mac`).
    pub fn add_backend(
        &mut self,
        vip: &str,
        spec: BackendSpec,
        mac: impl Into<Option<[u8; 6]>>,
    ) -> Result<u32, StateError> {
        let mac = mac.into();
        self.check_add_backend(vip, &spec)?;
        let used = self.ids_in_use();
        let id = (0..MAX_BACKENDS)
            .find(|i| !used.contains(i))
            .expect("check_add_backend saw a free id");
        let gen = self.next_gen.max(1);
        self.vip_mut(vip)?.backends.push(BackendState {
            id,
            spec,
            mac,
            gen,
            up: true,
            last_check: "not checked yet".into(),
        });
        self.next_gen = gen.checked_add(1).unwrap_or(1);
        Ok(id)
    }

    /// Takes a backend out of its VIP: no new flows at once; its id stays
    /// reserved (and its flows forwarded) until `free_retired` releases it.
    pub fn remove_backend(
        &mut self,
        vip: &str,
        address: IpAddr,
    ) -> Result<BackendState, StateError> {
        let v = self.vip_mut(vip)?;
        let index = v
            .backends
            .iter()
            .position(|b| b.spec.address == address)
            .ok_or_else(|| StateError::UnknownBackend {
                vip: vip.to_owned(),
                address,
            })?;
        let b = v.backends.remove(index);
        self.retire(vip, &b);
        Ok(b)
    }

    fn retire(&mut self, vip: &str, b: &BackendState) {
        self.retired.push(Retired {
            id: b.id,
            vip: vip.to_owned(),
            address: b.spec.address,
            mac: b.mac,
            gen: b.gen,
            up: b.up,
        });
    }

    fn backend_mut(&mut self, vip: &str, address: IpAddr) -> Result<&mut BackendState, StateError> {
        self.vip_mut(vip)?
            .backends
            .iter_mut()
            .find(|b| b.spec.address == address)
            .ok_or_else(|| StateError::UnknownBackend {
                vip: vip.to_owned(),
                address,
            })
    }

    pub fn set_admin(
        &mut self,
        vip: &str,
        address: IpAddr,
        admin: Admin,
    ) -> Result<u32, StateError> {
        let b = self.backend_mut(vip, address)?;
        b.spec.admin = admin;
        Ok(b.id)
    }

    pub fn set_weight(
        &mut self,
        vip: &str,
        address: IpAddr,
        weight: u32,
    ) -> Result<u32, StateError> {
        check_weight(weight)?;
        let v = self.vip(vip)?;
        if !v.backends.iter().any(|b| b.spec.address == address) {
            return Err(StateError::UnknownBackend {
                vip: vip.to_owned(),
                address,
            });
        }
        let weights = v.backends.iter().map(|b| {
            if b.spec.address == address {
                weight
            } else {
                b.spec.weight
            }
        });
        // The same rules as the config file and `backend add`.
        if v.spec.scheduler == Scheduler::Maglev {
            config::rules::maglev_table(v.spec.maglev_table_size, weights.clone())
                .map_err(|e| StateError::Invalid(format!("maglev_table_size: {e}")))?;
        }
        check_ring(weights)?;
        let b = self.backend_mut(vip, address)?;
        b.spec.weight = weight;
        Ok(b.id)
    }

    /// Changes how a backend is checked (`foobar reload`); its health so
    /// far stands until the new checks decide.
    pub fn set_health_spec(
        &mut self,
        vip: &str,
        address: IpAddr,
        health: HealthSpec,
    ) -> Result<u32, StateError> {
        let b = self.backend_mut(vip, address)?;
        b.spec.health = health;
        Ok(b.id)
    }

    /// Applies a health result; true if the backend's state changed.
    pub fn set_health(&mut self, id: u32, up: bool, reason: &str) -> bool {
        for v in &mut self.vips {
            if let Some(b) = v.backends.iter_mut().find(|b| b.id == id) {
                b.last_check = reason.to_owned();
                let changed = b.up != up;
                b.up = up;
                return changed;
            }
        }
        false
    }

    /// Records the MAC of every backend at `address` (None: it cannot be
    /// resolved any more); the ids whose MAC changed.
    pub fn set_mac(&mut self, address: IpAddr, mac: Option<[u8; 6]>) -> Vec<u32> {
        let mut changed = Vec::new();
        let backends = self.vips.iter_mut().flat_map(|v| v.backends.iter_mut());
        for b in backends.filter(|b| b.spec.address == address && b.mac != mac) {
            b.mac = mac;
            changed.push(b.id);
        }
        for r in self.retired.iter_mut().filter(|r| r.address == address) {
            r.mac = mac;
        }
        changed
    }

    /// Records the interface `address` is reached through (None: the one
    /// its frames come in on); whether it changed.
    pub fn set_egress(&mut self, address: IpAddr, ifindex: Option<u32>) -> bool {
        let old = match ifindex {
            Some(i) => self.egress.insert(address, i),
            None => self.egress.remove(&address),
        };
        old != ifindex
    }

    /// The interface `address` is reached through, if recorded (two-arm).
    pub fn egress_of(&self, address: IpAddr) -> Option<u32> {
        self.egress.get(&address).copied()
    }

    /// The MAC known for `address` (from any backend, current or retired).
    pub fn mac_of(&self, address: IpAddr) -> Option<[u8; 6]> {
        self.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.spec.address, b.mac)))
            .chain(self.retired.iter().map(|r| (r.address, r.mac)))
            .find_map(|(a, mac)| if a == address { mac } else { None })
    }

    /// Every backend address, current and retired (the addresses whose
    /// MACs the daemon follows).
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = self
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.spec.address))
            .chain(self.retired.iter().map(|r| r.address))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Records active-flow counts per backend id; true if any backend of a
    /// "wlc" VIP changed (its ring must be rebuilt).
    pub fn set_active(&mut self, active: HashMap<u32, u32>) -> bool {
        let changed = self.vips.iter().any(|v| {
            v.spec.scheduler == Scheduler::LeastConn
                && v.backends
                    .iter()
                    .any(|b| self.active.get(&b.id) != active.get(&b.id))
        });
        self.active = active;
        changed
    }

    /// Active flows of backend `id` at the last count.
    pub fn active(&self, id: u32) -> u32 {
        self.active.get(&id).copied().unwrap_or(0)
    }

    /// Frees retired backends no flow in `in_use` needs any more.
    pub fn free_retired(&mut self, in_use: &HashSet<u32>) -> Vec<Retired> {
        let (keep, freed) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| in_use.contains(&r.id));
        self.retired = keep;
        freed
    }

    fn ids_in_use(&self) -> HashSet<u32> {
        self.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .chain(self.retired.iter().map(|r| r.id))
            .collect()
    }

    /// Renumbers a state just built from the saved VIPs after the maps an
    /// earlier run pinned, so that adopting them reschedules nothing:
    /// a VIP keeps the id its service has in the maps (its ring, affinity
    /// entries and counters), a backend keeps the id and generation of the
    /// pinned entry for its address (preferring one its VIP's live ring
    /// names), so every flow entry keeps matching it. Backends new since
    /// then get free ids and generations above every pinned one, so no
    /// flow entry can match them; pinned entries nobody claims (backends
    /// removed from the config meanwhile) are retired — their flows go on
    /// until the flow walk frees them. A backend without a MAC yet takes
    /// the pinned one.
    pub fn adopt(&mut self, pinned: &MapsContent) -> Adoption {
        let mut report = Adoption::default();
        // VIP ids.
        let pinned_vip_ids: HashSet<u32> = pinned.vips.iter().map(|(_, s)| s.vip_id).collect();
        let mut taken: HashSet<u32> = HashSet::new();
        let mut unmatched = Vec::new();
        for (i, v) in self.vips.iter_mut().enumerate() {
            let key = vip_key(&v.spec);
            match pinned
                .vips
                .iter()
                .find(|(k, s)| *k == key && !taken.contains(&s.vip_id))
            {
                Some((_, s)) => {
                    v.id = s.vip_id;
                    taken.insert(s.vip_id);
                    report.vips_kept += 1;
                }
                None => unmatched.push(i),
            }
        }
        for i in unmatched {
            // Not an id a stray pinned VIP still uses, while one is free.
            let id = (0..MAX_VIPS)
                .find(|id| !taken.contains(id) && !pinned_vip_ids.contains(id))
                .or_else(|| (0..MAX_VIPS).find(|id| !taken.contains(id)))
                .expect("no more VIPs than MAX_VIPS");
            self.vips[i].id = id;
            taken.insert(id);
        }
        // Backend ids and generations.
        let mut claimed: HashSet<u32> = HashSet::new();
        let mut fresh = Vec::new();
        for (vi, v) in self.vips.iter_mut().enumerate() {
            let ring: HashSet<u32> = pinned
                .rings
                .get(&v.id)
                .map(|r| r.iter().copied().collect())
                .unwrap_or_default();
            for (bi, b) in v.backends.iter_mut().enumerate() {
                let (addr_be, family) = addr_words(b.spec.address);
                let candidates = || {
                    pinned.backends.iter().filter(|(id, e)| {
                        e.addr_be == addr_be && e.family == family && !claimed.contains(id)
                    })
                };
                let found = candidates()
                    .find(|(id, _)| ring.contains(id))
                    .or_else(|| candidates().next())
                    .map(|(&id, e)| (id, *e));
                match found {
                    Some((id, entry)) => {
                        claimed.insert(id);
                        b.id = id;
                        b.gen = entry.gen;
                        if b.mac.is_none() && entry.mac != [0; 6] {
                            b.mac = Some(entry.mac);
                        }
                        report.backends_kept += 1;
                    }
                    None => fresh.push((vi, bi)),
                }
            }
        }
        for (&id, entry) in pinned
            .backends
            .iter()
            .filter(|(id, _)| !claimed.contains(id))
        {
            let vip = pinned
                .rings
                .iter()
                .find(|(_, r)| r.contains(&id))
                .and_then(|(vip_id, _)| self.vips.iter().find(|v| v.id == *vip_id))
                .map_or_else(|| "(adopted)".to_owned(), |v| v.spec.name.clone());
            self.retired.push(Retired {
                id,
                vip,
                address: words_addr(entry.addr_be, entry.family),
                mac: (entry.mac != [0; 6]).then_some(entry.mac),
                gen: entry.gen,
                up: entry.flags & BACKEND_UP != 0,
            });
            report.retired += 1;
        }
        let max_gen = pinned.backends.values().map(|b| b.gen).max().unwrap_or(0);
        self.next_gen = max_gen.checked_add(1).unwrap_or(1).max(1);
        let mut used: HashSet<u32> = pinned.backends.keys().copied().collect();
        for (vi, bi) in fresh {
            let id = (0..MAX_BACKENDS)
                .find(|i| !used.contains(i))
                .expect("no more backends than MAX_BACKENDS");
            used.insert(id);
            let b = &mut self.vips[vi].backends[bi];
            b.id = id;
            b.gen = self.next_gen;
            self.next_gen = self.next_gen.checked_add(1).unwrap_or(1);
            report.backends_new += 1;
        }
        report.next_gen = self.next_gen;
        report
    }

    /// What the state file keeps.
    pub fn saved(&self) -> Vec<SavedVip> {
        self.vips
            .iter()
            .map(|v| SavedVip {
                spec: v.spec.clone(),
                backends: v.backends.iter().map(|b| b.spec.clone()).collect(),
                down: v
                    .backends
                    .iter()
                    .filter(|b| !b.up)
                    .map(|b| b.spec.address)
                    .collect(),
            })
            .collect()
    }

    /// What the maps must hold. A backend is in its VIP's ring while it is
    /// enabled, up and has a MAC; its entry is marked up (flows keep it)
    /// while it has a MAC and is healthy, drained or retired.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        for v in &self.vips {
            let takes_new =
                |b: &&BackendState| b.up && b.mac.is_some() && b.spec.admin == Admin::Enabled;
            let ring = match v.spec.scheduler {
                Scheduler::RoundRobin => {
                    let members: Vec<(u32, u32)> = v
                        .backends
                        .iter()
                        .filter(takes_new)
                        .map(|b| (b.id, b.spec.weight))
                        .collect();
                    ring::round_robin(&members)
                }
                Scheduler::LeastConn => {
                    let members: Vec<(u32, u32, u32)> = v
                        .backends
                        .iter()
                        .filter(takes_new)
                        .map(|b| (b.id, b.spec.weight, self.active(b.id)))
                        .collect();
                    ring::round_robin(&ring::least_conn_weights(&members))
                }
                Scheduler::Maglev => {
                    let members: Vec<maglev::Member> = v
                        .backends
                        .iter()
                        .filter(takes_new)
                        .map(|b| maglev::Member {
                            id: b.id,
                            weight: b.spec.weight,
                            address: b.spec.address,
                        })
                        .collect();
                    maglev::table(&members, v.spec.maglev_table_size)
                }
            };
            let vlan = v.spec.vlan.unwrap_or(0);
            let addr_flags = match v.spec.address {
                IpAddr::V4(a) => plan
                    .addresses
                    .entry(VipAddrKey {
                        addr_be: u32::from(a).to_be(),
                        vlan,
                        _pad: 0,
                    })
                    .or_insert(0),
                IpAddr::V6(_) => plan
                    .addresses6
                    .entry(VipAddrKey6 {
                        addr_be: addr_words(v.spec.address).0,
                        vlan,
                        _pad: 0,
                    })
                    .or_insert(0),
            };
            if v.spec.pass_closed_ports {
                *addr_flags |= ADDR_PASS_CLOSED_PORTS;
            }
            plan.vips.push(PlannedVip {
                name: v.spec.name.clone(),
                key: vip_key(&v.spec),
                service: Service {
                    vip_id: v.id,
                    scheduler: match v.spec.scheduler {
                        Scheduler::RoundRobin | Scheduler::LeastConn => SCHED_RR,
                        Scheduler::Maglev => SCHED_MAGLEV,
                    },
                    forward_mode: match v.spec.forwarding {
                        Forwarding::Dsr => FWD_DSR,
                        Forwarding::Ipip => FWD_IPIP,
                        Forwarding::Nat => FWD_NAT,
                        Forwarding::Dnat => FWD_DNAT,
                    },
                    flags: if v.spec.affinity_timeout_s.is_some() {
                        SERVICE_AFFINITY
                    } else {
                        0
                    },
                    affinity_timeout_s: v.spec.affinity_timeout_s.unwrap_or(0),
                    _pad: 0,
                },
                backend_ids: v.backends.iter().map(|b| b.id).collect(),
                ring,
            });
            for b in &v.backends {
                let mut flags = 0;
                if b.up && b.mac.is_some() {
                    flags |= BACKEND_UP;
                    if b.spec.admin == Admin::Enabled && b.spec.weight > 0 {
                        flags |= BACKEND_NEW_FLOWS;
                    }
                }
                let egress = self.egress_of(b.spec.address);
                plan.backends
                    .insert(b.id, entry(b.spec.address, b.mac, egress, b.gen, flags));
            }
        }
        self.plan_nat(&mut plan);
        self.plan_dnat(&mut plan);
        for r in &self.retired {
            // A retired backend keeps its flows only while it is up: one
            // that was down when removed stays down.
            let flags = if r.up { BACKEND_UP } else { 0 };
            let egress = self.egress_of(r.address);
            plan.backends
                .insert(r.id, entry(r.address, r.mac, egress, r.gen, flags));
        }
        plan
    }
}

impl State {
    /// The NAT part of the plan: settings per NAT VIP, backend ports, and
    /// the SNAT addresses in the VIP-address table (ADDR_SNAT; SNAT only
    /// when no VIP has the address, so everything but a NAT reply to it
    /// passes as before). Runs after the VIP addresses are planned.
    fn plan_nat(&self, plan: &mut Plan) {
        for v in &self.vips {
            let (Forwarding::Nat, Some(nat)) = (v.spec.forwarding, v.spec.nat) else {
                continue;
            };
            plan.nat_vips.insert(
                v.id,
                NatVip {
                    snat_addr_be: u32::from(nat.snat_address).to_be(),
                    port_min: nat.port_min,
                    port_max: nat.port_max,
                    tcp_idle_s: nat.tcp_idle_s,
                    udp_idle_s: nat.udp_idle_s,
                    linger_s: nat.linger_s,
                },
            );
            for b in &v.backends {
                if let Some(port) = b.spec.port {
                    plan.backend_ports.insert(b.id, port.to_be());
                }
            }
            let key = VipAddrKey {
                addr_be: u32::from(nat.snat_address).to_be(),
                vlan: v.spec.vlan.unwrap_or(0),
                _pad: 0,
            };
            let flags = plan.addresses.entry(key).or_insert(ADDR_SNAT_ONLY);
            *flags |= ADDR_SNAT;
        }
    }
}

impl State {
    /// The dnat part of the plan: NAT settings per dnat VIP (timeouts; no
    /// SNAT address), backend ports, and the backends' addresses (retired
    /// ones included, their flows go on), whose replies the datapath looks
    /// for (DNAT_SRC_BITS).
    fn plan_dnat(&self, plan: &mut Plan) {
        for v in &self.vips {
            let (Forwarding::Dnat, Some(nat)) = (v.spec.forwarding, v.spec.nat) else {
                continue;
            };
            plan.nat_vips.insert(
                v.id,
                NatVip {
                    snat_addr_be: 0,
                    port_min: 0,
                    port_max: 0,
                    tcp_idle_s: nat.tcp_idle_s,
                    udp_idle_s: nat.udp_idle_s,
                    linger_s: nat.linger_s,
                },
            );
            for b in &v.backends {
                if let Some(port) = b.spec.port {
                    plan.backend_ports.insert(b.id, port.to_be());
                }
                if let IpAddr::V4(a) = b.spec.address {
                    plan.dnat_sources.insert(u32::from(a).to_be());
                }
            }
            let retired = self.retired.iter().filter(|r| r.vip == v.spec.name);
            plan.dnat_sources
                .extend(retired.filter_map(|r| match r.address {
                    IpAddr::V4(a) => Some(u32::from(a).to_be()),
                    IpAddr::V6(_) => None,
                }));
        }
    }
}

/// An address as the maps hold it: four words as the packet holds them
/// (IPv4 in the first, the rest 0), and its family.
pub fn addr_words(a: IpAddr) -> ([u32; 4], u8) {
    match a {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], AF_INET6)
        }
    }
}

/// The inverse of `addr_words`.
pub fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == AF_INET6 {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    }
}

/// The VIPS map key of a VIP.
fn vip_key(spec: &VipSpec) -> VipKey {
    let (addr_be, family) = addr_words(spec.address);
    VipKey {
        addr_be,
        port_be: spec.port.to_be(),
        proto: spec.protocol.number(),
        family,
        vlan: spec.vlan.unwrap_or(0),
        _pad: 0,
    }
}

/// A backend entry; one without a MAC is never marked up (a frame sent to
/// it would carry no valid destination). `egress`: the interface it is
/// reached through (None: the one frames come in on).
fn entry(
    address: IpAddr,
    mac: Option<[u8; 6]>,
    egress: Option<u32>,
    gen: u32,
    flags: u8,
) -> Backend {
    let (addr_be, family) = addr_words(address);
    Backend {
        addr_be,
        mac: mac.unwrap_or_default(),
        family,
        flags: if mac.is_some() { flags } else { 0 },
        gen,
        egress_ifindex: egress.unwrap_or(0),
    }
}

fn check_weight(weight: u32) -> Result<(), StateError> {
    if weight > MAX_WEIGHT {
        return Err(StateError::Invalid(format!(
            "weight {weight} is out of range 0..={MAX_WEIGHT}"
        )));
    }
    Ok(())
}

fn check_ring(weights: impl IntoIterator<Item = u32>) -> Result<(), StateError> {
    let slots = ring::round_robin_len(weights);
    if slots > u64::from(RING_CAPACITY) {
        return Err(StateError::Invalid(format!(
            "these weights need {slots} ring slots, more than {RING_CAPACITY}; lower them (only ratios matter)"
        )));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no MAC address is known for backend {address} of VIP {vip}")]
pub struct MissingMac {
    pub vip: String,
    pub address: IpAddr,
}

/// The plan of a config as it starts: ids in config order (VIPs from 0,
/// backends from 0 across VIPs; a server behind two VIPs gets two ids, so
/// its counters stay per VIP).
pub fn plan_of_config(
    config: &config::Config,
    macs: &HashMap<IpAddr, [u8; 6]>,
) -> Result<Plan, BuildError> {
    Ok(State::build(&saved_from_config(config), macs)?.plan())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error(transparent)]
    MissingMac(#[from] MissingMac),
    #[error(transparent)]
    State(#[from] StateError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(name: &str, last: u8, port: u16) -> VipSpec {
        VipSpec {
            name: name.into(),
            address: Ipv4Addr::new(192, 0, 2, last).into(),
            port,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::RoundRobin,
            maglev_table_size: maglev::DEFAULT_TABLE_SIZE,
            affinity_timeout_s: None,
            forwarding: Forwarding::Dsr,
            nat: None,
            health: HealthSpec::default(),
            vlan: None,
            pass_closed_ports: false,
        }
    }

    fn backend(last: u8, weight: u32) -> BackendSpec {
        BackendSpec {
            address: Ipv4Addr::new(10, 0, 0, last).into(),
            weight,
            port: None,
            admin: Admin::Enabled,
            health: HealthSpec::default(),
        }
    }

    fn mac(last: u8) -> [u8; 6] {
        [2, 0, 0, 0, 0, last]
    }

    fn web() -> State {
        let mut s = State::default();
        s.add_vip(vip("web", 10, 80)).unwrap();
        for n in [11, 12, 13] {
            s.add_backend("web", backend(n, 1), mac(n)).unwrap();
        }
        s
    }

    fn ip(last: u8) -> IpAddr {
        Ipv4Addr::new(10, 0, 0, last).into()
    }

    #[test]
    fn ring_holds_enabled_healthy_backends_only() {
        let mut s = web();
        assert_eq!(s.plan().vips[0].ring, vec![0, 1, 2]);
        s.set_admin("web", ip(12), Admin::Drained).unwrap();
        assert_eq!(s.plan().vips[0].ring, vec![0, 2]);
        // Drained: out of the ring, but its entry stays up for its flows
        // (and no longer takes new ones, affinity included).
        assert_eq!(s.plan().backends[&1].flags, BACKEND_UP);
        assert_eq!(s.plan().backends[&0].flags, BACKEND_UP | BACKEND_NEW_FLOWS);
        assert!(s.set_health(2, false, "connect: refused"));
        let plan = s.plan();
        assert_eq!(plan.vips[0].ring, vec![0]);
        assert_eq!(plan.backends[&2].flags, 0, "a down backend's flows move");
        assert!(!s.set_health(2, false, "again"), "no change, no transition");
        s.set_admin("web", ip(12), Admin::Enabled).unwrap();
        s.set_health(2, true, "ok");
        assert_eq!(s.plan().vips[0].ring, vec![0, 1, 2]);
    }

    #[test]
    fn removed_backends_stay_for_their_flows_until_freed() {
        let mut s = web();
        let removed = s.remove_backend("web", ip(11)).unwrap();
        assert_eq!(removed.id, 0);
        let plan = s.plan();
        assert_eq!(plan.vips[0].ring, vec![1, 2]);
        assert_eq!(
            plan.backends[&0].flags, BACKEND_UP,
            "kept for established flows"
        );
        // Its id is not reused while retired.
        assert_eq!(s.add_backend("web", backend(14, 1), mac(14)).unwrap(), 3);
        assert!(
            s.free_retired(&HashSet::from([0])).is_empty(),
            "a flow still uses it"
        );
        assert_eq!(s.free_retired(&HashSet::new()).len(), 1);
        assert!(!s.plan().backends.contains_key(&0));
        assert_eq!(s.add_backend("web", backend(15, 1), mac(15)).unwrap(), 0);
    }

    #[test]
    fn refused_operations_change_nothing() {
        let mut s = web();
        let before = s.clone();
        let errors = [
            s.add_vip(vip("web", 99, 80)).unwrap_err(),
            s.add_vip(vip("other", 10, 80)).unwrap_err(),
            s.add_vip(vip("", 20, 80)).unwrap_err(),
            s.add_backend("web", backend(11, 1), mac(11)).unwrap_err(),
            s.add_backend("nope", backend(19, 1), mac(19)).unwrap_err(),
            s.add_backend("web", backend(19, 999), mac(19)).unwrap_err(),
            s.remove_backend("web", ip(99)).unwrap_err(),
            s.set_weight("web", ip(11), 257).unwrap_err(),
            s.set_admin("nope", ip(11), Admin::Drained).unwrap_err(),
            s.remove_vip("nope").map(|_| ()).unwrap_err(),
        ];
        assert_eq!(s, before);
        assert_eq!(errors[0], StateError::DuplicateVip("web".into()));
        assert_eq!(
            errors[1].to_string(),
            "192.0.2.10:80/tcp is already served by VIP \"web\""
        );
        assert!(errors[4]
            .to_string()
            .contains("`foobar status` lists the VIPs"));
    }

    #[test]
    fn removing_a_vip_retires_its_backends_and_frees_its_id() {
        let mut s = web();
        s.add_vip(vip("api", 20, 443)).unwrap();
        s.remove_vip("web").unwrap();
        assert_eq!(s.retired().len(), 3);
        assert_eq!(s.plan().vips.len(), 1);
        assert_eq!(s.add_vip(vip("web2", 10, 80)).unwrap(), 0, "VIP id reused");
    }

    #[test]
    fn a_backend_without_a_mac_takes_no_traffic_until_it_has_one() {
        let saved = web().saved();
        let macs = [11, 13].map(|n| (ip(n), mac(n))).into();
        assert!(
            State::build(&saved, &macs).is_err(),
            "build needs every MAC"
        );
        let mut s = State::build_unresolved(&saved, &macs).unwrap();
        let plan = s.plan();
        assert_eq!(plan.vips[0].ring, vec![0, 2]);
        assert_eq!(plan.backends[&1].flags, 0);
        assert_eq!(s.set_mac(ip(12), Some(mac(12))), vec![1]);
        assert!(s.set_mac(ip(12), Some(mac(12))).is_empty(), "no change");
        let plan = s.plan();
        assert_eq!(plan.vips[0].ring, vec![0, 1, 2]);
        assert_eq!(plan.backends[&1].mac, mac(12));
        // A MAC that changes is followed; one that goes away takes the
        // backend out, and a retired backend's entry with it.
        assert_eq!(s.set_mac(ip(11), Some(mac(99))), vec![0]);
        assert_eq!(s.plan().backends[&0].mac, mac(99));
        s.remove_backend("web", ip(13)).unwrap();
        s.set_mac(ip(13), None);
        assert_eq!(s.plan().backends[&2].flags, 0);
        assert_eq!(s.set_mac(ip(11), None), vec![0]);
        assert_eq!(s.plan().vips[0].ring, vec![1]);
    }

    #[test]
    fn saved_state_round_trips_through_build() {
        let mut s = web();
        s.set_admin("web", ip(13), Admin::Drained).unwrap();
        s.set_weight("web", ip(12), 5).unwrap();
        let saved = s.saved();
        let json = serde_json::to_string(&saved).unwrap();
        let back: Vec<SavedVip> = serde_json::from_str(&json).unwrap();
        let macs = [11, 12, 13].map(|n| (ip(n), mac(n))).into();
        let rebuilt = State::build(&back, &macs).unwrap();
        assert_eq!(rebuilt.plan(), s.plan());
    }

    #[test]
    fn health_is_saved_and_restored() {
        let mut s = web();
        let id = s.vip("web").unwrap().backends[1].id;
        s.set_health(id, false, "connection refused");
        let json = serde_json::to_string(&s.saved()).unwrap();
        let back: Vec<SavedVip> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0].down, vec![ip(12)]);
        let macs = [11, 12, 13].map(|n| (ip(n), mac(n))).into();
        let rebuilt = State::build(&back, &macs).unwrap();
        let up: Vec<bool> = rebuilt.vips[0].backends.iter().map(|b| b.up).collect();
        assert_eq!(up, [true, false, true]);
        // A file written before `down` existed: every backend up.
        let old = json.replace(",\"down\":[\"10.0.0.12\"]", "");
        assert_ne!(old, json);
        let old: Vec<SavedVip> = serde_json::from_str(&old).unwrap();
        assert!(State::build(&old, &macs).unwrap().vips[0]
            .backends
            .iter()
            .all(|b| b.up));
    }

    /// The maps a state's plan writes, as `Datapath::read_back` reads them.
    fn pinned(s: &State) -> MapsContent {
        let plan = s.plan();
        MapsContent {
            vips: plan.vips.iter().map(|v| (v.key, v.service)).collect(),
            backends: plan.backends.clone(),
            rings: plan
                .vips
                .iter()
                .map(|v| (v.service.vip_id, v.ring.clone()))
                .collect(),
        }
    }

    #[test]
    fn adopting_pinned_maps_keeps_ids_and_generations() {
        // An earlier run: a VIP added at run time first, so "web" has id 1,
        // and a backend added and removed, so generations are not 1, 2, 3.
        let mut before = State::default();
        before.add_vip(vip("api", 20, 443)).unwrap();
        before.add_vip(vip("web", 10, 80)).unwrap();
        before.add_backend("web", backend(99, 1), mac(99)).unwrap();
        before.remove_backend("web", ip(99)).unwrap();
        before.free_retired(&HashSet::new());
        for n in [13, 12, 11] {
            before.add_backend("web", backend(n, 1), mac(n)).unwrap();
        }
        let maps = pinned(&before);
        // The new run's config: web only, backend 13 gone, 14 new.
        let mut after = State::default();
        after.add_vip(vip("web", 10, 80)).unwrap();
        for n in [11, 12, 14] {
            after.add_backend("web", backend(n, 1), None).unwrap();
        }
        let report = after.adopt(&maps);
        let web_before = before.vip("web").unwrap();
        let web_after = after.vip("web").unwrap();
        assert_eq!(web_after.id, web_before.id);
        for n in [11, 12] {
            let old = web_before
                .backends
                .iter()
                .find(|b| b.spec.address == ip(n))
                .unwrap();
            let new = web_after
                .backends
                .iter()
                .find(|b| b.spec.address == ip(n))
                .unwrap();
            assert_eq!((new.id, new.gen, new.mac), (old.id, old.gen, Some(mac(n))));
        }
        let max_gen = maps.backends.values().map(|b| b.gen).max().unwrap();
        let new = web_after
            .backends
            .iter()
            .find(|b| b.spec.address == ip(14))
            .unwrap();
        assert!(new.gen > max_gen, "{} > {max_gen}", new.gen);
        assert!(!maps.backends.contains_key(&new.id));
        // 13 is gone from the config: retired with its entry, for its flows.
        let gone = web_before
            .backends
            .iter()
            .find(|b| b.spec.address == ip(13))
            .unwrap();
        assert_eq!(after.retired().len(), 1);
        assert_eq!(
            (after.retired()[0].id, after.retired()[0].gen),
            (gone.id, gone.gen)
        );
        assert_eq!(
            (
                report.vips_kept,
                report.backends_kept,
                report.backends_new,
                report.retired
            ),
            (1, 2, 1, 1)
        );
        // The plan keeps every kept entry as pinned (bar the MAC-less new one).
        let plan = after.plan();
        for n in [11, 12] {
            let id = web_after
                .backends
                .iter()
                .find(|b| b.spec.address == ip(n))
                .unwrap()
                .id;
            assert_eq!(plan.backends[&id], maps.backends[&id]);
        }
        // The retired one keeps its flows but takes no new ones.
        let retired = Backend {
            flags: BACKEND_UP,
            ..maps.backends[&gone.id]
        };
        assert_eq!(plan.backends[&gone.id], retired);
    }

    #[test]
    fn a_weight_change_follows_the_maglev_table_rule() {
        let mut s = State::default();
        let mut spec = vip("m", 20, 80);
        spec.scheduler = Scheduler::Maglev;
        spec.maglev_table_size = 101;
        s.add_vip(spec).unwrap();
        s.add_backend("m", backend(1, 1), mac(1)).unwrap();
        s.add_backend("m", backend(2, 1), mac(2)).unwrap();
        // 101 slots for weights 200:1: the light backend would get no slot.
        let err = s.set_weight("m", ip(1), 200).unwrap_err();
        assert!(err.to_string().contains("maglev_table_size"), "{err}");
        assert_eq!(s.vip("m").unwrap().backends[0].spec.weight, 1, "unchanged");
        s.set_weight("m", ip(1), 3).unwrap();
    }

    #[test]
    fn an_ipv6_vip_is_planned_into_the_ipv6_tables() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut s = State::default();
        let mut spec = vip("web6", 0, 80);
        spec.address = v6("2001:db8::10");
        s.add_vip(spec).unwrap();
        let mut b = backend(11, 1);
        b.address = v6("fd00::11");
        s.add_backend("web6", b, [2, 0, 0, 0, 0, 11]).unwrap();
        let plan = s.plan();
        assert!(
            plan.addresses.is_empty(),
            "no IPv4 address: {:?}",
            plan.addresses
        );
        let want = VipAddrKey6 {
            addr_be: [
                u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]),
                0,
                0,
                u32::from_ne_bytes([0, 0, 0, 0x10]),
            ],
            vlan: 0,
            _pad: 0,
        };
        assert_eq!(plan.addresses6.keys().collect::<Vec<_>>(), [&want]);
        assert_eq!(plan.vips[0].key.family, AF_INET6);
        assert_eq!(plan.vips[0].key.addr_be, want.addr_be);
        let entry = plan.backends[&plan.vips[0].backend_ids[0]];
        assert_eq!(entry.family, AF_INET6);
        assert_eq!(words_addr(entry.addr_be, entry.family), v6("fd00::11"));
        assert_eq!(addr_words(v6("fd00::11")), (entry.addr_be, AF_INET6));
        // A v4 backend for a v6 VIP, and a nat v6 VIP, are refused.
        let err = s.add_backend("web6", backend(12, 1), [2; 6]).unwrap_err();
        assert!(err.to_string().contains("families differ"), "{err}");
        let mut nat = vip("nat6", 0, 80);
        nat.address = v6("2001:db8::11");
        nat.forwarding = Forwarding::Nat;
        let err = s.add_vip(nat).unwrap_err();
        assert!(err.to_string().contains("--forwarding dsr"), "{err}");
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::config;
    use foobar_common::{BACKEND_NEW_FLOWS, BACKEND_UP};

    const TEXT: &str = r#"
        [[vip]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        forwarding = "dsr"
        [[vip.backend]]
        address = "10.0.0.11"
        weight = 2
        [[vip.backend]]
        address = "10.0.0.12"

        [[vip]]
        name = "all-udp"
        address = "192.0.2.10"
        port = 0
        protocol = "udp"
        forwarding = "dsr"
        [[vip.backend]]
        address = "10.0.0.12"
    "#;

    fn macs() -> HashMap<IpAddr, [u8; 6]> {
        HashMap::from([
            ("10.0.0.11".parse().unwrap(), [2, 0, 0, 0, 0, 11]),
            ("10.0.0.12".parse().unwrap(), [2, 0, 0, 0, 0, 12]),
        ])
    }

    #[test]
    fn keys_are_in_network_byte_order_and_ids_follow_config_order() {
        let plan = plan_of_config(&config::parse(TEXT).unwrap(), &macs()).unwrap();
        assert_eq!(plan.vips.len(), 2);
        let web = &plan.vips[0];
        assert_eq!(web.key.addr_be[0].to_ne_bytes(), [192, 0, 2, 10]);
        assert_eq!(web.key.port_be.to_ne_bytes(), [0, 80]);
        assert_eq!(web.key.proto, 6);
        assert_eq!(web.service.vip_id, 0);
        assert_eq!(web.backend_ids, vec![0, 1]);
        assert_eq!(web.ring, vec![0, 1, 0]);

        let udp = &plan.vips[1];
        assert_eq!(udp.key.port_be, 0);
        assert_eq!(udp.key.proto, 17);
        assert_eq!(udp.service.vip_id, 1);
        assert_eq!(udp.backend_ids, vec![2], "same server, its own id per VIP");

        assert_eq!(plan.backends.len(), 3);
        assert_eq!(plan.backends[&2].addr_be[0].to_ne_bytes(), [10, 0, 0, 12]);
        assert_eq!(plan.backends[&2].mac, [2, 0, 0, 0, 0, 12]);
        assert!(plan
            .backends
            .values()
            .all(|b| b.flags == BACKEND_UP | BACKEND_NEW_FLOWS));
    }

    #[test]
    fn a_backend_without_a_mac_is_an_error_naming_it() {
        let mut m = macs();
        m.remove(&"10.0.0.11".parse().unwrap());
        let err = plan_of_config(&config::parse(TEXT).unwrap(), &m).unwrap_err();
        assert_eq!(
            err,
            BuildError::MissingMac(MissingMac {
                vip: "web".into(),
                address: "10.0.0.11".parse().unwrap()
            })
        );
    }
}
