//! Control requests: dispatch, and `transact` (save, then apply; roll
//! back both on failure).
use std::net::Ipv4Addr;

use serde_json::json;
use tracing::{debug, info, warn};

use super::Owner;
use crate::{
    api::{Caller, ErrorKind, Request, Response},
    state::{Admin, BackendSpec, State, StateError, VipSpec},
};

impl Owner {
    /// Puts `before` back in the state, the maps and (if `saved`) the state
    /// file after a change failed half-way; returns what could not be
    /// restored (also logged), so the caller can report it. The maps are
    /// read back and rewritten (`Datapath::resync`), not patched from what
    /// the failed write believed it had done.
    pub(super) fn roll_back(&mut self, before: State, saved: bool) -> Option<String> {
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
    pub(super) fn transact<T>(
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

    /// Answers one control request; logs it with who sent it (`uid`):
    /// changes at INFO when applied and WARN when refused, reads at DEBUG.
    pub(super) async fn handle(&mut self, request: Request, caller: Caller) -> Response {
        let op = request.name();
        let changes = request.changes();
        let result = match request.validate() {
            Ok(()) => self.dispatch(request).await,
            Err(message) => Err((ErrorKind::Refused, message)),
        };
        match result {
            Ok(mut value) => {
                if changes {
                    info!(uid = %caller, op, result = %value, "control request applied");
                    // A change applied but not saved says so in its answer.
                    if let (Some(warning), Some(map)) = (&self.unsaved, value.as_object_mut()) {
                        map.insert("warning".into(), json!(warning));
                    }
                } else {
                    debug!(uid = %caller, op, "control request answered");
                }
                Response::ok(value)
            }
            Err((kind, message)) => {
                if changes {
                    warn!(uid = %caller, op, error = %message, "control request refused");
                } else {
                    debug!(uid = %caller, op, error = %message, "control request refused");
                }
                Response::failed(kind, message)
            }
        }
    }

    pub(super) async fn dispatch(
        &mut self,
        request: Request,
    ) -> Result<serde_json::Value, (ErrorKind, String)> {
        let refused = |message: String| (ErrorKind::Refused, message);
        match request {
            Request::Status => Ok(self.status()),
            Request::Reload => self.reload().await,
            Request::Stats => self.stats_json().map_err(refused),
            Request::VipAdd {
                name,
                address,
                port,
                protocol,
                scheduler,
                forwarding,
                maglev_table_size,
                persistence_timeout_s,
                health,
                snat_address,
            } => {
                let maglev_table_size =
                    maglev_table_size.unwrap_or(crate::maglev::DEFAULT_TABLE_SIZE);
                if persistence_timeout_s.is_some() && !self.affinity_table {
                    return Err(refused(format!(
                        "VIP {name}: persistence needs the source-affinity table, which this \
                         daemon started without (no VIP had persistence); restart foobar with \
                         datapath.affinity_table_size set, or add the VIP without persistence"
                    )));
                }
                let datapath = self.base.as_ref().map(|c| &c.datapath);
                let (has_source, key) = if address.is_ipv6() {
                    (
                        datapath.is_some_and(|d| d.ipip_source6.is_some()),
                        "ipip_source6",
                    )
                } else {
                    (
                        datapath.is_some_and(|d| d.ipip_source.is_some()),
                        "ipip_source",
                    )
                };
                if forwarding == crate::config::Forwarding::Ipip && !has_source {
                    return Err(refused(format!(
                        "VIP {name}: forwarding \"ipip\" needs datapath.{key}, which \
                         this daemon started without; set it in the config and restart foobar"
                    )));
                }
                if forwarding == crate::config::Forwarding::Dnat && !self.datapath.dnat_replies() {
                    return Err(refused(format!(
                        "VIP {name}: forwarding \"dnat\" needs the dnat reply path, which this \
                         daemon's XDP program was loaded without (no dnat VIP at start, so the \
                         pass path skips it; docs/DNAT.md); add the VIP to the config file and \
                         restart foobar"
                    )));
                }
                // Before the SNAT address is looked for: the state refuses an
                // IPv6 nat VIP anyway, with the modes that work.
                if address.is_ipv6()
                    && matches!(
                        forwarding,
                        crate::config::Forwarding::Nat | crate::config::Forwarding::Dnat
                    )
                {
                    return Err(refused(format!(
                        "VIP {name}: {address} is IPv6, and nat (the default) and dnat are IPv4-only; \
                         add it with --forwarding dsr or --forwarding ipip (docs/IPV6.md)"
                    )));
                }
                let nat = match forwarding {
                    crate::config::Forwarding::Nat => {
                        Some(self.nat_settings(&name, snat_address).await?)
                    }
                    // The node's NAT timeouts.
                    crate::config::Forwarding::Dnat => Some(crate::config::dnat::settings(
                        &self
                            .base
                            .as_ref()
                            .map(|c| c.datapath.nat.settings)
                            .unwrap_or_default(),
                    )),
                    _ => None,
                };
                let spec = VipSpec {
                    name: name.clone(),
                    address,
                    port,
                    protocol,
                    scheduler,
                    maglev_table_size,
                    affinity_timeout_s: persistence_timeout_s,
                    forwarding,
                    nat,
                    vlan: None,
                    pass_closed_ports: false,
                    health: health.unwrap_or_default(),
                };
                let id = self.transact(|s| s.add_vip(spec)).map_err(refused)?;
                Ok(json!({ "vip": name, "id": id }))
            }
            Request::AffinityPurge { vip } => {
                let vip_id = match &vip {
                    Some(name) => {
                        Some(self.state.vip(name).map_err(|e| refused(e.to_string()))?.id)
                    }
                    None => None,
                };
                let purged = self
                    .datapath
                    .purge_affinity(vip_id)
                    .map_err(|e| refused(format!("purging the affinity table: {e}")))?;
                info!(
                    vip = vip.as_deref().unwrap_or("*"),
                    purged, "source-affinity entries purged"
                );
                Ok(json!({ "vip": vip, "purged": purged }))
            }
            Request::VipRemove { name } => {
                let vip = self.transact(|s| s.remove_vip(&name)).map_err(refused)?;
                for b in &vip.backends {
                    self.stop_checker(b.id);
                }
                Ok(json!({ "vip": name, "removed_backends": vip.backends.len() }))
            }
            Request::BackendAdd {
                vip,
                address,
                weight,
                port,
            } => {
                let spec = BackendSpec {
                    address,
                    weight,
                    port,
                    admin: Admin::Enabled,
                    health: self
                        .state
                        .vip(&vip)
                        .map_err(|e| refused(e.to_string()))?
                        .spec
                        .health
                        .clone(),
                };
                // The MAC, if another backend at this address has one; if
                // not, the neighbour watcher resolves it in the background
                // (the backend takes traffic once it has a MAC).
                let mac = self.state.mac_of(address);
                let id = self
                    .transact(|s| s.add_backend(&vip, spec, mac))
                    .map_err(refused)?;
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
                // The last backend taking new flows: without it the VIP
                // black-holes them, so only on purpose (--force).
                let serving = |b: &crate::state::BackendState| {
                    b.spec.admin == Admin::Enabled && b.spec.weight > 0
                };
                let v = self.state.vip(&vip).map_err(|e| refused(e.to_string()))?;
                let last = v
                    .backends
                    .iter()
                    .any(|b| b.spec.address == address && serving(b))
                    && !v
                        .backends
                        .iter()
                        .any(|b| b.spec.address != address && serving(b));
                if last && !force {
                    return Err(refused(format!(
                        "{address} is the last backend of VIP {vip} that takes new flows: \
                         without it the VIP drops its new traffic. Add or enable another \
                         backend first, remove the VIP (foobar vip remove {vip}), or repeat \
                         with --force"
                    )));
                }
                let b = self
                    .transact(|s| s.remove_backend(&vip, address))
                    .map_err(refused)?;
                self.stop_checker(b.id);
                if last {
                    warn!(vip = %vip, backend = %address, "last backend removed (--force): the VIP drops its new traffic");
                }
                Ok(
                    json!({ "vip": vip, "backend": address, "state": "removed", "vip_drops_new_flows": last }),
                )
            }
            Request::BackendDrain { vip, address } => {
                self.transact(|s| s.set_admin(&vip, address, Admin::Drained))
                    .map_err(refused)?;
                Ok(json!({ "vip": vip, "backend": address, "admin": "drained" }))
            }
            Request::BackendEnable { vip, address } => {
                self.transact(|s| s.set_admin(&vip, address, Admin::Enabled))
                    .map_err(refused)?;
                Ok(json!({ "vip": vip, "backend": address, "admin": "enabled" }))
            }
            Request::BackendWeight {
                vip,
                address,
                weight,
            } => {
                self.transact(|s| s.set_weight(&vip, address, weight))
                    .map_err(refused)?;
                Ok(json!({ "vip": vip, "backend": address, "weight": weight }))
            }
        }
    }

    /// A runtime `nat` VIP's settings: the node's ports and timeouts
    /// (`[datapath]`), with `snat_address` or the node's SNAT address (the
    /// configured one, else the interface's primary, resolved at start).
    /// The address must be on the interface now, as at start.
    async fn nat_settings(
        &self,
        name: &str,
        snat_address: Option<Ipv4Addr>,
    ) -> Result<crate::config::NatSettings, (ErrorKind, String)> {
        let refused = |message: String| (ErrorKind::Refused, message);
        let defaults = self
            .base
            .as_ref()
            .map(|c| c.datapath.nat)
            .unwrap_or_default();
        let address = snat_address.or(defaults.snat_address).ok_or_else(|| {
            refused(format!(
                "VIP {name}: forwarding nat needs an SNAT address, and this daemon has none: \
                 give --snat-address (an address of {}), or set [datapath] snat_address",
                self.snat_iface().1
            ))
        })?;
        let (snat_ifindex, snat_iface) = self.snat_iface();
        let addrs = crate::snat::read(snat_ifindex, snat_iface)
            .await
            .map_err(|e| refused(format!("{e:#}")))?;
        if !addrs.has(address) {
            return Err(refused(format!(
                "VIP {name}: {}",
                addrs.missing_message(address)
            )));
        }
        Ok(crate::config::NatSettings {
            snat_address: address,
            ..defaults.settings
        })
    }

    pub(super) fn max_ids(&self) -> (usize, usize) {
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
}
