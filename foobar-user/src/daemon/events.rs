//! Events from the health checkers and the neighbour watcher, and the
//! checkers' lifecycle.
use std::{collections::HashMap, net::IpAddr};

use tracing::{info, warn};

use super::Owner;
use crate::{
    health::{self, Transition},
    neigh::{self, Neighbour},
    state::State,
};

impl Owner {
    pub(super) fn start_checker(&mut self, id: u32) {
        let Some((vip, b)) = self.state.backend(id) else {
            return;
        };
        let port = b.spec.health.port_for(vip.spec.port);
        self.next_epoch += 1;
        let task = tokio::spawn(health::run_checker(
            id,
            self.next_epoch,
            std::net::SocketAddr::new(b.spec.address, port),
            b.spec.health.clone(),
            b.up,
            self.health_tx.clone(),
            self.health_board.clone(),
        ));
        if let Some((_, old)) = self.checkers.insert(id, (self.next_epoch, task)) {
            old.abort();
        }
    }

    pub(super) fn stop_checker(&mut self, id: u32) {
        if let Some((_, task)) = self.checkers.remove(&id) {
            task.abort();
        }
        self.health_board.close(id);
    }

    pub(super) fn on_health(&mut self, t: Transition) {
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
                // Down is what an operator must see (WARN); up is news (INFO).
                if t.up {
                    info!(vip = %vip, backend = %address, state = to, reason = %t.reason, "health changed");
                } else {
                    warn!(vip = %vip, backend = %address, state = to, reason = %t.reason, "health changed");
                }
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
    pub(super) fn no_mac_reason(&self, vlan: Option<u16>, vip: &str, address: IpAddr) -> String {
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
    pub(super) fn on_neighbours(&mut self, report: neigh::Report) {
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
        // Two-arm: the interface each backend is reached through.
        let mut egress_changed = false;
        if self.arm.is_some() {
            for address in report.neighbours.keys() {
                let egress = report.egress.get(address).copied();
                if self.state.set_egress(*address, egress) {
                    info!(backend = %address, ifindex = ?egress, "backend egress interface");
                    egress_changed = true;
                }
            }
        }
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
        if changes.is_empty() && !egress_changed {
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
}

/// Every address whose MAC the daemon follows, current backends and
/// removed ones, each with the VLAN it is reached on: its VIP's; for a
/// removed backend whose VIP is gone, the VLAN it was last followed on
/// (`segments` remembers, and forgets addresses no longer wanted). One
/// address is one host: a backend address is on one VLAN only (config
/// validation and `backend add` refuse more), so the first VIP decides.
pub(super) fn wanted(
    state: &State,
    segments: &mut HashMap<IpAddr, Option<u16>>,
) -> Vec<neigh::Wanted> {
    let mut now: HashMap<IpAddr, Option<u16>> = HashMap::new();
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
pub(super) fn mac_text(mac: Option<[u8; 6]>) -> String {
    match mac {
        Some(m) => m
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        None => "none".into(),
    }
}
