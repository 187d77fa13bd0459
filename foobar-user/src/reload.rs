//! What `foobar reload` (and SIGHUP) changes: a pure function from the
//! config last loaded (`base`), the running state (`running`, which holds
//! the run-time changes) and the new config (`new`) to the operations that
//! take the running state to the new config, plus what it leaves alone.
//! The rule is HAProxy's with a server-state file: the config wins for
//! every value the edit changed; a run-time change to a value the edit did
//! not touch is kept, and logged. So a drained backend stays drained, an
//! emergency `weight 0` stays 0 unless the file's weight for it changed,
//! backends and VIPs added at run time stay until removed by hand, and a
//! backend or VIP the file removes is removed. No I/O here.
use std::net::IpAddr;

use crate::{
    config::HealthSpec,
    state::{Admin, BackendSpec, SavedVip, VipSpec},
};

/// One change to the running state, as the CLI's operations make them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    RemoveVip(String),
    AddVip(VipSpec),
    RemoveBackend {
        vip: String,
        address: IpAddr,
    },
    SetWeight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
    SetHealth {
        vip: String,
        address: IpAddr,
        health: HealthSpec,
    },
    AddBackend {
        vip: String,
        spec: BackendSpec,
    },
}

/// The operations of a reload, in the order they apply (removals first, so
/// limits are checked on the smallest set), and the run-time changes it
/// keeps, one sentence each (the daemon logs each one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub ops: Vec<Op>,
    pub kept: Vec<String>,
}

pub fn diff(base: &[SavedVip], running: &[SavedVip], new: &[SavedVip]) -> Diff {
    let mut d = Diff::default();
    let mut removes = Vec::new();
    let mut updates = Vec::new();
    let mut adds = Vec::new();
    for n in new {
        let name = &n.spec.name;
        let b = find(base, name);
        match find(running, name) {
            None if b == Some(n) => d.kept.push(format!(
                "VIP {name} was removed at run time and the config did not change it: \
                 it stays removed (foobar vip add, or a restart with a changed config, \
                 brings it back)"
            )),
            None => {
                adds.push(Op::AddVip(n.spec.clone()));
                adds.extend(n.backends.iter().map(|spec| Op::AddBackend {
                    vip: name.clone(),
                    spec: enabled(spec),
                }));
            }
            Some(r) => {
                let config_changed_vip = b.is_none_or(|b| b.spec != n.spec);
                let backends = merge_backends(name, b, r, n, &mut d.kept);
                if r.spec != n.spec && config_changed_vip {
                    // A VIP's own settings have no operation of their own:
                    // it is replaced (its flows finish as a removed VIP's).
                    removes.push(Op::RemoveVip(name.clone()));
                    adds.push(Op::AddVip(n.spec.clone()));
                    adds.extend(backends.into_iter().filter_map(|m| match m {
                        Merge::Add(spec) | Merge::Keep(spec) => Some(Op::AddBackend {
                            vip: name.clone(),
                            spec,
                        }),
                        Merge::Remove(_) => None,
                    }));
                    continue;
                }
                if r.spec != n.spec {
                    d.kept.push(format!(
                        "VIP {name}: its settings made at run time are kept (the config \
                         did not change them)"
                    ));
                }
                let running_of = |a: IpAddr| r.backends.iter().find(|x| x.address == a);
                for m in backends {
                    match m {
                        Merge::Remove(address) => removes.push(Op::RemoveBackend {
                            vip: name.clone(),
                            address,
                        }),
                        Merge::Add(spec) => adds.push(Op::AddBackend {
                            vip: name.clone(),
                            spec,
                        }),
                        Merge::Keep(spec) => {
                            let Some(old) = running_of(spec.address) else {
                                continue;
                            };
                            if old.weight != spec.weight {
                                updates.push(Op::SetWeight {
                                    vip: name.clone(),
                                    address: spec.address,
                                    weight: spec.weight,
                                });
                            }
                            if old.health != spec.health {
                                updates.push(Op::SetHealth {
                                    vip: name.clone(),
                                    address: spec.address,
                                    health: spec.health,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    for r in running {
        let name = &r.spec.name;
        if find(new, name).is_some() {
            continue;
        }
        if find(base, name).is_some() {
            removes.push(Op::RemoveVip(name.clone()));
        } else {
            d.kept.push(format!(
                "VIP {name} was added at run time and is not in the config: it is kept \
                 (add it to the config, or foobar vip remove {name})"
            ));
        }
    }
    d.ops = removes.into_iter().chain(updates).chain(adds).collect();
    d
}

fn find<'a>(list: &'a [SavedVip], name: &str) -> Option<&'a SavedVip> {
    list.iter().find(|v| v.spec.name == name)
}

/// One backend of a VIP after the merge.
enum Merge {
    /// Not running: add it.
    Add(BackendSpec),
    /// Running: it becomes this (its admin state is the running one).
    Keep(BackendSpec),
    /// Running, removed from the config.
    Remove(IpAddr),
}

fn merge_backends(
    vip: &str,
    base: Option<&SavedVip>,
    running: &SavedVip,
    new: &SavedVip,
    kept: &mut Vec<String>,
) -> Vec<Merge> {
    let in_base = |a: IpAddr| base.and_then(|b| b.backends.iter().find(|x| x.address == a));
    let mut out = Vec::new();
    for n in &new.backends {
        let a = n.address;
        let b = in_base(a);
        let Some(r) = running.backends.iter().find(|x| x.address == a) else {
            if b == Some(n) {
                kept.push(format!(
                    "backend {a} of VIP {vip} was removed at run time and the config did \
                     not change it: it stays removed (foobar backend add {vip} {a} brings \
                     it back)"
                ));
            } else {
                out.push(Merge::Add(enabled(n)));
            }
            continue;
        };
        let mut m = r.clone();
        if r.weight != n.weight {
            if b.is_some_and(|b| b.weight == n.weight) {
                kept.push(format!(
                    "backend {a} of VIP {vip}: weight {} set at run time is kept (the \
                     config's weight {} did not change)",
                    r.weight, n.weight
                ));
            } else {
                m.weight = n.weight;
            }
        }
        if r.health != n.health {
            if b.is_some_and(|b| b.health == n.health) {
                kept.push(format!(
                    "backend {a} of VIP {vip}: its health check set at run time is kept"
                ));
            } else {
                m.health = n.health.clone();
            }
        }
        if r.admin == Admin::Drained {
            kept.push(format!(
                "backend {a} of VIP {vip} stays drained (foobar backend enable {vip} {a} \
                 puts it back)"
            ));
        }
        out.push(Merge::Keep(m));
    }
    for r in &running.backends {
        if new.backends.iter().any(|n| n.address == r.address) {
            continue;
        }
        if in_base(r.address).is_some() {
            out.push(Merge::Remove(r.address));
        } else {
            kept.push(format!(
                "backend {} of VIP {vip} was added at run time and is not in the config: \
                 it is kept (add it to the config, or foobar backend remove {vip} {})",
                r.address, r.address
            ));
            out.push(Merge::Keep(r.clone()));
        }
    }
    out
}

/// A backend as the config describes it: enabled (the file has no admin
/// state; drains are run-time only).
fn enabled(spec: &BackendSpec) -> BackendSpec {
    BackendSpec {
        admin: Admin::Enabled,
        ..spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Check, Forwarding, Protocol, Scheduler};

    fn vip(name: &str, last: u8, backends: &[(u8, u32)]) -> SavedVip {
        SavedVip {
            spec: VipSpec {
                name: name.into(),
                address: std::net::Ipv4Addr::new(192, 0, 2, last).into(),
                port: 80,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::RoundRobin,
                maglev_table_size: 65537,
                affinity_timeout_s: None,
                forwarding: Forwarding::Dsr,
                nat: None,
                health: HealthSpec::default(),
                vlan: None,
                pass_closed_ports: false,
            },
            backends: backends.iter().map(|&(b, w)| backend(b, w)).collect(),
            down: Vec::new(),
        }
    }

    fn backend(last: u8, weight: u32) -> BackendSpec {
        BackendSpec {
            address: addr(last),
            weight,
            port: None,
            admin: Admin::Enabled,
            health: HealthSpec::default(),
        }
    }

    fn addr(last: u8) -> IpAddr {
        std::net::Ipv4Addr::new(10, 0, 0, last).into()
    }

    fn add(vip: &str, last: u8, weight: u32) -> Op {
        Op::AddBackend {
            vip: vip.into(),
            spec: backend(last, weight),
        }
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        let config = vec![vip("web", 10, &[(1, 1), (2, 1)])];
        assert_eq!(diff(&config, &config, &config), Diff::default());
    }

    #[test]
    fn the_files_edits_become_operations_removals_first() {
        let base = vec![vip("web", 10, &[(1, 1), (2, 1)]), vip("old", 11, &[(5, 1)])];
        let new = vec![vip("web", 10, &[(1, 4), (3, 1)]), vip("api", 12, &[(6, 2)])];
        let d = diff(&base, &base, &new);
        assert_eq!(
            d.ops,
            vec![
                Op::RemoveBackend {
                    vip: "web".into(),
                    address: addr(2)
                },
                Op::RemoveVip("old".into()),
                Op::SetWeight {
                    vip: "web".into(),
                    address: addr(1),
                    weight: 4
                },
                add("web", 3, 1),
                Op::AddVip(new[1].spec.clone()),
                add("api", 6, 2),
            ]
        );
        assert!(d.kept.is_empty(), "{:?}", d.kept);
    }

    #[test]
    fn run_time_changes_the_edit_did_not_touch_are_kept_and_said() {
        let base = vec![vip("web", 10, &[(1, 1), (2, 1), (3, 1)])];
        // At run time: be1 drained, be2 weight 0, be3 removed, be4 added,
        // and a whole VIP added.
        let mut running = vec![
            vip("web", 10, &[(1, 1), (2, 0), (4, 1)]),
            vip("tmp", 20, &[]),
        ];
        running[0].backends[0].admin = Admin::Drained;
        // The edit: a health check for be1 only.
        let mut new = base.clone();
        new[0].backends[0].health.check = Check::None;
        let d = diff(&base, &running, &new);
        assert_eq!(
            d.ops,
            vec![Op::SetHealth {
                vip: "web".into(),
                address: addr(1),
                health: new[0].backends[0].health.clone(),
            }]
        );
        let kept = d.kept.join("\n");
        for said in [
            "10.0.0.1 of VIP web stays drained",
            "10.0.0.2 of VIP web: weight 0 set at run time is kept",
            "10.0.0.3 of VIP web was removed at run time",
            "10.0.0.4 of VIP web was added at run time",
            "VIP tmp was added at run time",
        ] {
            assert!(kept.contains(said), "{said:?} missing from:\n{kept}");
        }
        assert_eq!(d.kept.len(), 5, "{kept}");
    }

    #[test]
    fn the_config_wins_where_the_edit_changed_the_same_value() {
        let base = vec![vip("web", 10, &[(1, 1), (2, 1)])];
        let running = vec![vip("web", 10, &[(1, 0), (2, 1)])];
        // be1's weight edited in the file, be2 removed from it although it
        // is running: the file wins both.
        let new = vec![vip("web", 10, &[(1, 3)])];
        let d = diff(&base, &running, &new);
        assert_eq!(
            d.ops,
            vec![
                Op::RemoveBackend {
                    vip: "web".into(),
                    address: addr(2)
                },
                Op::SetWeight {
                    vip: "web".into(),
                    address: addr(1),
                    weight: 3
                },
            ]
        );
        assert!(d.kept.is_empty(), "{:?}", d.kept);
    }

    #[test]
    fn a_vip_whose_settings_changed_is_replaced_with_its_merged_backends() {
        let base = vec![vip("web", 10, &[(1, 1)])];
        let mut running = vec![vip("web", 10, &[(1, 1), (4, 2)])];
        running[0].backends[0].admin = Admin::Drained;
        let mut new = vec![vip("web", 10, &[(1, 1), (2, 1)])];
        new[0].spec.scheduler = Scheduler::Maglev;
        let d = diff(&base, &running, &new);
        let mut drained = backend(1, 1);
        drained.admin = Admin::Drained;
        assert_eq!(
            d.ops,
            vec![
                Op::RemoveVip("web".into()),
                Op::AddVip(new[0].spec.clone()),
                Op::AddBackend {
                    vip: "web".into(),
                    spec: drained
                },
                add("web", 2, 1),
                add("web", 4, 2),
            ]
        );
    }

    #[test]
    fn a_vip_removed_at_run_time_comes_back_only_if_the_file_changed_it() {
        let base = vec![vip("web", 10, &[(1, 1)]), vip("api", 11, &[(2, 1)])];
        let running = vec![base[0].clone()];
        let d = diff(&base, &running, &base);
        assert!(d.ops.is_empty());
        assert!(d.kept[0].contains("VIP api was removed at run time"));
        let new = vec![base[0].clone(), vip("api", 11, &[(2, 5)])];
        let d = diff(&base, &running, &new);
        assert_eq!(
            d.ops,
            vec![Op::AddVip(new[1].spec.clone()), add("api", 2, 5)]
        );
    }
}
