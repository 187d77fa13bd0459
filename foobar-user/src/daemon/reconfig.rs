//! `foobar reload` and SIGHUP: re-read the config, apply the difference.
use serde_json::json;
use tracing::{info, warn};

use super::{config_digest, Owner};
use crate::{
    api::ErrorKind,
    config::Config,
    state::{Admin, State, StateError},
};

impl Owner {
    /// `foobar reload` / SIGHUP: re-reads the config, validates it whole
    /// (a problem refuses it, naming FILE: KEY), and applies what the edit
    /// changed in one transaction, as the CLI's operations do
    /// (`reload::diff` says what is kept of the run-time changes; each kept
    /// one is logged and listed in the answer). Settings that need a new
    /// datapath (`[datapath]`, `[api]`, `[metrics]`) take effect at the
    /// next restart, which the answer says.
    pub(super) async fn reload(&mut self) -> Result<serde_json::Value, (ErrorKind, String)> {
        let refused = |m: String| (ErrorKind::Refused, m);
        let path = self.config_path.clone().ok_or_else(|| {
            refused("this daemon was started without a config file; nothing to reload".into())
        })?;
        // A config with problems is told apart from a refused change: the
        // client exits with its own code.
        let invalid = |e: crate::config::ConfigError| (ErrorKind::ConfigInvalid, e.to_string());
        let (mut config, text) = crate::config::load_with_text(&path).map_err(invalid)?;
        let (snat_ifindex, snat_iface) = self.snat_iface();
        let addrs = crate::snat::read(snat_ifindex, snat_iface)
            .await
            .map_err(|e| refused(format!("{e:#}")))?;
        let problem = |problems| crate::config::ConfigError {
            file: path.clone(),
            problems,
        };
        crate::snat::fill_default(&mut config, &addrs).map_err(|p| invalid(problem(vec![p])))?;
        let problems = addrs.problems(&crate::snat::uses(
            &config,
            &crate::state::saved_from_config(&config),
        ));
        if !problems.is_empty() {
            return Err(invalid(problem(problems)));
        }
        self.reload_config(path, config, &text)
    }

    /// The rest of `reload`, once the new config is valid and resolved.
    fn reload_config(
        &mut self,
        path: std::path::PathBuf,
        config: Config,
        text: &str,
    ) -> Result<serde_json::Value, (ErrorKind, String)> {
        let refused = |m: String| (ErrorKind::Refused, m);
        let digest = config_digest(text);
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
                return Err(refused(format!(
                    "{}: VIP {name}: persistence needs the source-affinity table, which this \
                     daemon started without (no VIP had persistence); nothing was applied: \
                     restart foobar to serve it, or set datapath.affinity_table_size before \
                     the next start",
                    path.display()
                )));
            }
        }
        if !self.datapath.dnat_replies() {
            let wants = diff.ops.iter().find_map(|op| match op {
                crate::reload::Op::AddVip(v) if v.forwarding == crate::config::Forwarding::Dnat => {
                    Some(v.name.clone())
                }
                _ => None,
            });
            if let Some(name) = wants {
                return Err(refused(format!(
                    "{}: VIP {name}: forwarding \"dnat\" needs the dnat reply path, which this \
                     daemon's XDP program was loaded without (no dnat VIP at start, so the pass \
                     path skips it; docs/DNAT.md); nothing was applied: restart foobar to serve it",
                    path.display()
                )));
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
            return Err(refused(format!("{}: {e}", path.display())));
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
    pub(super) fn follow_checkers(&mut self, before: &State) {
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
}

/// Applies one reload operation as the matching CLI operation would.
pub(super) fn apply_op(s: &mut State, op: &crate::reload::Op) -> Result<(), StateError> {
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
pub(super) fn op_text(op: &crate::reload::Op) -> String {
    use crate::reload::Op;
    match op {
        Op::RemoveVip(name) => format!("vip remove {name}"),
        Op::AddVip(v) => format!(
            "vip add {} {}/{}",
            v.name,
            std::net::SocketAddr::new(v.address, v.port),
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
pub(super) fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
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
        "datapath.flow_table",
        a.flow_table.name().into(),
        b.flow_table.name().into(),
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
        "datapath.ipip_source",
        format!("{:?}", a.ipip_source),
        format!("{:?}", b.ipip_source),
    );
    cmp(
        "datapath.ipip_source6",
        format!("{:?}", a.ipip_source6),
        format!("{:?}", b.ipip_source6),
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
                    "vrid {} priority {} advert {}cs preempt {} delay {:?} iface {:?} {:?} \
                     track {:?} unicast {:?} from {:?} garp {:?}",
                    v.vrid,
                    v.priority,
                    v.advert_interval_cs,
                    v.preempt,
                    v.preempt_delay,
                    v.interface,
                    v.addresses,
                    v.track,
                    v.unicast_peers,
                    v.unicast_source,
                    v.garp
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    cmp("vrrp", vrrp(old), vrrp(new));
    out
}
