//! Loads the XDP object (root, as every datapath test).
use super::*;
use crate::{
    api::Request,
    config::{Forwarding, HealthSpec, Protocol, Scheduler},
    datapath::LoadOptions,
    state::{Admin, BackendSpec, VipSpec},
};

fn vip(name: &str, last: u8, scheduler: Scheduler, table: u32) -> VipSpec {
    VipSpec {
        name: name.into(),
        address: std::net::Ipv4Addr::new(192, 0, 2, last).into(),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler,
        maglev_table_size: table,
        affinity_timeout_s: None,
        forwarding: Forwarding::Dsr,
        nat: None,
        health: HealthSpec::default(),
        vlan: None,
        pass_closed_ports: false,
    }
}

#[test]
fn backends_are_followed_on_their_vip_vlan_and_removed_ones_keep_theirs() {
    let backend = |last: u8| BackendSpec {
        address: std::net::Ipv4Addr::new(10, 0, 0, last).into(),
        weight: 1,
        port: None,
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
    let ip = |last| std::net::IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, last));
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
        address: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
        weight: 1,
        port: None,
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
        .handle(
            Request::BackendAdd {
                vip: "big".into(),
                address: "10.0.0.1".parse().unwrap(),
                weight: 1,
                port: None,
            },
            crate::api::Caller::Uid(0),
        )
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
            address: std::net::Ipv4Addr::new(10, 0, 0, last).into(),
            weight: 1,
            port: None,
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
        .handle(
            Request::BackendDrain {
                vip: "web".into(),
                address: "10.0.0.1".parse().unwrap(),
            },
            crate::api::Caller::Uid(0),
        )
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
        .handle(
            Request::BackendWeight {
                vip: "web".into(),
                address: "10.0.0.2".parse().unwrap(),
                weight: 0,
            },
            crate::api::Caller::Uid(0),
        )
        .await;
    assert!(response.ok, "{response:?}");
    assert!(!new_flows(&owner, 1), "weight 0 reached the datapath");
}

mod vrrp_reload {
    use super::super::reconfig::restart_only_changes;

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
        // Tracking, unicast and gratuitous ARP keys are part of it too.
        for extra in [
            "track_no_backend = -50\n",
            "unicast_peers = [\"10.0.0.3\"]\n",
            "garp_master_delay_ms = 0\n",
        ] {
            let c = with(&format!("[[vrrp]]\nvrid = 51\nvips = [\"web\"]\n{extra}"));
            assert_eq!(restart_only_changes(&a, &c).len(), 1, "{extra}");
        }
    }
}
