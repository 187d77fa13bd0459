//! `datapath.flow_table = "per-cpu"` under BPF_PROG_TEST_RUN, which runs
//! the program on the CPU of the calling thread: a flow lands in that
//! CPU's table and no other's, hits, LRU eviction and the backend and VIP
//! generation checks behave as with the shared table, a flow that moves
//! to another CPU is scheduled anew there, and the tables outlive a
//! restart through their pins. Needs root (loading BPF).
use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf};

use foobar::{
    config,
    datapath::{Datapath, FlowTableMode, LoadOptions, PinDir},
    plan::Plan,
    state::{self, State},
};
use foobar_common::{Event, FlowKey, AF_INET, BACKEND_UP};
use foobar_tests::frames::{dst_mac, Spec, L4};

const XDP_TX: u32 = 3;

/// One TCP VIP with three backends and a UDP every-port VIP.
const CONFIG: &str = r#"
    [[vip]]
    name = "web"
    address = "192.0.2.10"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.11"
    [[vip.backend]]
    address = "10.0.0.12"
    [[vip.backend]]
    address = "10.0.0.13"

    [[vip]]
    name = "udp-any"
    address = "192.0.2.20"
    port = 0
    protocol = "udp"
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.21"
"#;

fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, last]
}

fn macs() -> HashMap<std::net::IpAddr, [u8; 6]> {
    [11, 12, 13, 21, 41]
        .into_iter()
        .map(|n| (Ipv4Addr::new(10, 0, 0, n).into(), backend_mac(n)))
        .collect()
}

fn state() -> State {
    let config = config::parse(CONFIG).expect("test config is valid");
    State::build(&state::saved_from_config(&config), &macs()).expect("every backend has a MAC")
}

fn options(mode: FlowTableMode, size: u32) -> LoadOptions {
    LoadOptions {
        lb_mac: Spec::default().dst_mac,
        flow_table_size: size,
        flow_table: mode,
        ..LoadOptions::default()
    }
}

fn datapath(mode: FlowTableMode, size: u32) -> (Datapath, Plan) {
    let plan = state().plan();
    let mut dp = Datapath::load(&options(mode, size))
        .expect("loading the XDP program (are you root? run `cargo xtask test`)");
    dp.apply(&plan).expect("programming the maps");
    (dp, plan)
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    (0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// Moves this thread to `cpu`: BPF_PROG_TEST_RUN runs the program there.
fn run_on(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu index in range");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pinning to a CPU");
}

fn key(spec: &Spec) -> FlowKey {
    FlowKey {
        src_be: u32::from_be_bytes(spec.src).to_be(),
        dst_be: u32::from_be_bytes(spec.dst).to_be(),
        sport_be: spec.sport.to_be(),
        dport_be: spec.dport.to_be(),
        proto: match spec.l4 {
            L4::Udp => 17,
            _ => 6,
        },
        family: AF_INET,
        _pad: [0; 2],
    }
}

/// Which CPUs' tables hold `spec`'s flow.
fn tables_holding(dp: &Datapath, spec: &Spec) -> Vec<u32> {
    (0..dp.flow_tables() as u32)
        .filter(|&cpu| dp.flow_table_of(cpu).unwrap().get(&key(spec), 0).is_ok())
        .collect()
}

fn midflow_misses(dp: &Datapath, plan: &Plan) -> u64 {
    dp.stats(plan.vips.len(), plan.backends.len())
        .unwrap()
        .event(Event::MidflowMiss)
}

fn syn(sport: u16) -> Spec {
    Spec {
        sport,
        ..Spec::default()
    }
}

fn ack(sport: u16) -> Spec {
    Spec {
        sport,
        ack: true,
        ..Spec::default()
    }
}

#[test]
fn a_new_flow_lands_in_the_table_of_its_cpu_only() {
    let cpus = allowed_cpus();
    let (mut dp, _plan) = datapath(FlowTableMode::PerCpu, 1024);
    assert_eq!(dp.flow_table_mode(), FlowTableMode::PerCpu);
    let possible = aya::util::nr_cpus().unwrap();
    assert_eq!(dp.flow_tables(), possible, "one table per possible CPU");
    assert_eq!(dp.flow_table_size(), 1024 * possible as u32);
    for (i, &cpu) in cpus.iter().enumerate() {
        run_on(cpu);
        let spec = syn(41000 + i as u16);
        assert_eq!(dp.test_run(&spec.build()).unwrap().0, XDP_TX);
        assert_eq!(
            tables_holding(&dp, &spec),
            vec![cpu as u32],
            "the flow run on CPU {cpu} is in that CPU's table only"
        );
    }
    assert_eq!(dp.flow_usage(0).unwrap().entries, cpus.len());

    // The shared table, for contrast: one table, every CPU finds the flow.
    let (mut shared, _plan) = datapath(FlowTableMode::Shared, 1024);
    assert_eq!(shared.flow_tables(), 1);
    run_on(cpus[0]);
    let spec = syn(41500);
    shared.test_run(&spec.build()).unwrap();
    for cpu in 0..possible as u32 {
        assert!(shared
            .flow_table_of(cpu)
            .unwrap()
            .get(&key(&spec), 0)
            .is_ok());
    }
}

#[test]
fn a_flow_that_moves_cpu_is_scheduled_anew_there() {
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("skipped: this test needs two CPUs, it may use {cpus:?}");
        return;
    }
    let (mut dp, plan) = datapath(FlowTableMode::PerCpu, 1024);
    run_on(cpus[0]);
    let (open, est) = (syn(42000), ack(42000));
    let backend = dst_mac(&dp.test_run(&open.build()).unwrap().1);
    assert_eq!(dst_mac(&dp.test_run(&est.build()).unwrap().1), backend);
    assert_eq!(midflow_misses(&dp, &plan), 0, "a hit on its own CPU");
    run_on(cpus[1]);
    assert_eq!(dp.test_run(&est.build()).unwrap().0, XDP_TX);
    assert_eq!(
        midflow_misses(&dp, &plan),
        1,
        "the other CPU's table misses the flow"
    );
    assert_eq!(
        tables_holding(&dp, &est),
        vec![cpus[0] as u32, cpus[1] as u32]
    );
}

#[test]
fn hits_keep_their_backend_and_generation_checks_reschedule() {
    let cpu = allowed_cpus()[0];
    run_on(cpu);
    let (mut dp, plan) = datapath(FlowTableMode::PerCpu, 1024);
    let flows: Vec<u16> = (0..6).map(|i| 43000 + i).collect();
    let first: Vec<[u8; 6]> = flows
        .iter()
        .map(|&p| dst_mac(&dp.test_run(&syn(p).build()).unwrap().1))
        .collect();
    // Backend ids: 0 = .11, 1 = .12, 2 = .13. A new ring without .11:
    // established flows stay (flow-first hits), new ones avoid it.
    let web = plan.vips[0].service.vip_id;
    dp.set_ring(web, &[1, 2]).unwrap();
    for (&p, mac) in flows.iter().zip(&first) {
        assert_eq!(dst_mac(&dp.test_run(&ack(p).build()).unwrap().1), *mac);
    }
    assert_eq!(midflow_misses(&dp, &plan), 0);
    let before = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    // .11 goes down: its flows move (the entry's backend generation and up
    // flag are checked), the others stay.
    let mut down = plan.backends[&0];
    down.flags &= !BACKEND_UP;
    dp.set_backend(0, &down).unwrap();
    let mut moved = 0;
    for (&p, mac) in flows.iter().zip(&first) {
        let now = dst_mac(&dp.test_run(&ack(p).build()).unwrap().1);
        if *mac == backend_mac(11) {
            assert_ne!(now, backend_mac(11), "flow {p} still on a down backend");
            moved += 1;
        } else {
            assert_eq!(now, *mac, "flow {p} moved");
        }
    }
    let after = dp.stats(plan.vips.len(), plan.backends.len()).unwrap();
    let new_flows = |s: &foobar::datapath::Stats| (0..3).map(|id| s.new_flows(id)).sum::<u64>();
    assert_eq!(new_flows(&after) - new_flows(&before), moved);
    assert!(moved > 0, "no flow was on backend .11: {first:02x?}");

    // The VIP generation: an exact-port VIP shadows the every-port one; the
    // flow made under the old VIP follows the new one.
    let dns = Spec {
        l4: L4::Udp,
        dst: [192, 0, 2, 20],
        dport: 53,
        ..Spec::default()
    };
    assert_eq!(
        dst_mac(&dp.test_run(&dns.build()).unwrap().1),
        backend_mac(21)
    );
    assert_eq!(
        dst_mac(&dp.test_run(&dns.build()).unwrap().1),
        backend_mac(21)
    );
    let mut st = state();
    let mut spec = st.vip("udp-any").unwrap().spec.clone();
    spec.name = "dns".into();
    spec.port = 53;
    st.add_vip(spec).unwrap();
    let mut b = st.vip("udp-any").unwrap().backends[0].spec.clone();
    b.address = Ipv4Addr::new(10, 0, 0, 41).into();
    st.add_backend("dns", b, backend_mac(41)).unwrap();
    dp.apply(&st.plan()).unwrap();
    assert_eq!(
        dst_mac(&dp.test_run(&dns.build()).unwrap().1),
        backend_mac(41),
        "the flow made before the shadow must follow the new VIP"
    );
    assert_eq!(tables_holding(&dp, &dns), vec![cpu as u32]);
}

#[test]
fn a_full_cpu_table_evicts_its_oldest_flows_and_no_other_cpus() {
    const SIZE: u32 = 1024;
    let cpus = allowed_cpus();
    run_on(cpus[0]);
    let (mut dp, plan) = datapath(FlowTableMode::PerCpu, SIZE);
    // A flow on the other CPU first: the full table must not touch it.
    let other = cpus.get(1).copied();
    if let Some(cpu) = other {
        run_on(cpu);
        dp.test_run(&syn(1).build()).unwrap();
        run_on(cpus[0]);
    }
    let total = 2 * SIZE as u16;
    for p in 0..total {
        assert_eq!(dp.test_run(&syn(10_000 + p).build()).unwrap().0, XDP_TX);
    }
    let usage = dp.flow_usage(0).unwrap();
    let mine = dp.flow_table_of(cpus[0] as u32).unwrap().keys().count();
    assert!(
        mine <= SIZE as usize && mine >= SIZE as usize / 2,
        "CPU {}'s table holds {mine} of {SIZE}",
        cpus[0]
    );
    assert_eq!(usage.entries, mine + usize::from(other.is_some()));
    assert_eq!(
        usage.fullest, mine,
        "the fullest table is this CPU's, whatever the sum"
    );
    // The newest flow is there, the oldest was evicted.
    assert_eq!(
        tables_holding(&dp, &syn(10_000 + total - 1)),
        vec![cpus[0] as u32]
    );
    assert!(tables_holding(&dp, &syn(10_000)).is_empty());
    if let Some(cpu) = other {
        assert_eq!(tables_holding(&dp, &syn(1)), vec![cpu as u32]);
    }
    // Evicted flows come back as new ones on their next packet, counted.
    let before = midflow_misses(&dp, &plan);
    dp.test_run(&ack(10_000).build()).unwrap();
    assert_eq!(midflow_misses(&dp, &plan), before + 1);
}

/// Pins under a directory of this test's own on bpffs, removed on every
/// exit path.
struct Pins(PinDir);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

#[test]
fn pinned_per_cpu_tables_are_adopted_with_their_flows_and_mode() {
    let cpu = allowed_cpus()[0];
    run_on(cpu);
    let root = PathBuf::from(format!(
        "/sys/fs/bpf/foobar-test-percpu-{}",
        std::process::id()
    ));
    let pins = Pins(PinDir::new(&root, "lo"));
    let plan = state().plan();
    let spec = syn(44000);
    let backend = {
        let mut dp =
            Datapath::load_pinned(&options(FlowTableMode::PerCpu, 2048), pins.0.clone()).unwrap();
        assert!(!dp.adopted());
        dp.apply(&plan).unwrap();
        dst_mac(&dp.test_run(&spec.build()).unwrap().1)
    };
    // A restart whose config says "shared": the adopted tables keep their
    // mode, size and flows.
    let mut dp =
        Datapath::load_pinned(&options(FlowTableMode::Shared, 4096), pins.0.clone()).unwrap();
    assert!(dp.adopted());
    assert_eq!(dp.flow_table_mode(), FlowTableMode::PerCpu);
    assert_eq!(dp.flow_table_size_each(), 2048);
    assert_eq!(tables_holding(&dp, &spec), vec![cpu as u32]);
    dp.resync(&plan).unwrap();
    assert_eq!(
        dst_mac(&dp.test_run(&ack(44000).build()).unwrap().1),
        backend
    );
    assert_eq!(midflow_misses(&dp, &plan), 0, "the adopted flow hit");
    drop(dp);
    drop(pins);
    let _ = std::fs::remove_dir(&root);
}
