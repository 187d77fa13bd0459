//! Differential fuzzing of the XDP program against the reference model
//! (`model.rs`): seeded random and mutated frames go through
//! BPF_PROG_TEST_RUN and through the model, over one state set up on both
//! sides from the same `Plan`; any difference in action, reason or output
//! frame is an error naming the seed, the frame index and the frame in hex.
//! Used by `tests/tests/fuzz.rs` and the `foobar-fuzz` binary
//! (`cargo xtask fuzz`). Needs root (it loads BPF).
use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use foobar::{
    config,
    datapath::{Datapath, FlowTableMode, LoadOptions},
    plan::Plan,
    state::{Admin, State},
};
use foobar_common::MAX_BACKENDS;

use crate::model::{IpipSettings, Model, Outcome, Reason, Update, XDP_DROP, XDP_PASS, XDP_TX};

mod churn;
mod nat;

/// Chance in percent, per fuzzed frame (or series), of a VIP change
/// (`churn`) before it.
const CHURN_PERCENT: u64 = 1;
/// Chance in percent, per fuzzed frame (or series), that a NAT state is
/// aged past its timeout before it (`nat::NatAger`).
const EXPIRE_PERCENT: u64 = 2;
/// The `ipip` outer source (a prefix: host bits from the flow) and the
/// interface MTU the program is loaded with.
const IPIP_SOURCE: ([u8; 4], u8) = ([172, 16, 0, 0], 24);
const MTU: u32 = 1500;
/// SNAT port ranges of the fuzzed NAT VIPs (by name): small, so ports are
/// reused, reclaimed and exhausted within a run.
const NAT_PORTS: &[(&str, u16, u16)] = &[("nat-web", 20000, 20031), ("nat-udp", 30000, 30003)];

/// The LB's own MAC in the fuzzed state.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const HASH_SEED: u32 = 0x5eed_f00d;
/// Large enough that the frames of a 1 000 000-frame run never make the LRU
/// evict (the harness checks it): the model does not model eviction.
const FLOW_TABLE_SIZE: u32 = 1 << 18;
/// Largest frame generated when the datapath would take anything.
const JUMBO: usize = 9000;

/// Fourteen VIPs on seven addresses: exact and port-0 VIPs on one address,
/// round-robin and Maglev, with and without source affinity, in every
/// forwarding mode: `dsr` (the first seven), `nat` (an SNAT-only address
/// and a VIP address that is its own VIP's SNAT address, backend ports),
/// `ipip` (a /24 outer source), `dnat` (TCP with a backend port, UDP, and
/// two VIPs sharing a backend, so one client port to both collides).
const CONFIG: &str = r#"
    [datapath]
    snat_address = "10.0.0.1"
    ipip_source = "172.16.0.0/24"

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
    weight = 2
    [[vip.backend]]
    address = "10.0.0.14"

    [[vip]]
    name = "tls"
    address = "192.0.2.10"
    port = 443
    forwarding = "dsr"
    scheduler = "maglev"
    maglev_table_size = 251
    [[vip.backend]]
    address = "10.0.0.21"
    [[vip.backend]]
    address = "10.0.0.22"
    [[vip.backend]]
    address = "10.0.0.23"

    [[vip]]
    name = "dns"
    address = "192.0.2.20"
    port = 53
    forwarding = "dsr"
    protocol = "udp"
    [[vip.backend]]
    address = "10.0.0.31"

    [[vip]]
    name = "udp-any"
    address = "192.0.2.20"
    port = 0
    forwarding = "dsr"
    protocol = "udp"
    [[vip.backend]]
    address = "10.0.0.32"
    [[vip.backend]]
    address = "10.0.0.33"

    [[vip]]
    name = "tcp-any"
    address = "192.0.2.20"
    port = 0
    forwarding = "dsr"
    scheduler = "maglev"
    maglev_table_size = 61
    persistence = { timeout = "3600s" }
    [[vip.backend]]
    address = "10.0.0.41"
    [[vip.backend]]
    address = "10.0.0.42"
    [[vip.backend]]
    address = "10.0.0.43"

    [[vip]]
    name = "sticky"
    address = "192.0.2.30"
    port = 8080
    forwarding = "dsr"
    persistence = { timeout = "3600s" }
    [[vip.backend]]
    address = "10.0.0.51"
    [[vip.backend]]
    address = "10.0.0.52"
    [[vip.backend]]
    address = "10.0.0.53"

    [[vip]]
    name = "broken"
    address = "192.0.2.40"
    port = 80
    forwarding = "dsr"
    [[vip.backend]]
    address = "10.0.0.61"
    [[vip.backend]]
    address = "10.0.0.62"

    [[vip]]
    name = "nat-web"
    address = "192.0.2.60"
    port = 80
    forwarding = "nat"
    [[vip.backend]]
    address = "10.0.0.91"
    port = 8080
    [[vip.backend]]
    address = "10.0.0.92"

    [[vip]]
    name = "nat-udp"
    address = "192.0.2.60"
    port = 0
    protocol = "udp"
    scheduler = "maglev"
    maglev_table_size = 61
    forwarding = "nat"
    snat_address = "192.0.2.60"
    [[vip.backend]]
    address = "10.0.0.93"
    port = 5353
    [[vip.backend]]
    address = "10.0.0.94"

    [[vip]]
    name = "ipip-web"
    address = "192.0.2.70"
    port = 80
    forwarding = "ipip"
    [[vip.backend]]
    address = "10.0.0.101"
    [[vip.backend]]
    address = "10.0.0.102"

    [[vip]]
    name = "ipip-udp"
    address = "192.0.2.70"
    port = 0
    protocol = "udp"
    scheduler = "maglev"
    maglev_table_size = 61
    forwarding = "ipip"
    [[vip.backend]]
    address = "10.0.0.103"

    [[vip]]
    name = "dnat-web"
    address = "192.0.2.80"
    port = 80
    forwarding = "dnat"
    [[vip.backend]]
    address = "10.0.0.111"
    port = 8080
    [[vip.backend]]
    address = "10.0.0.112"

    [[vip]]
    name = "dnat-udp"
    address = "192.0.2.80"
    port = 0
    protocol = "udp"
    forwarding = "dnat"
    [[vip.backend]]
    address = "10.0.0.113"

    [[vip]]
    name = "dnat-web2"
    address = "192.0.2.81"
    port = 80
    forwarding = "dnat"
    [[vip.backend]]
    address = "10.0.0.111"
    port = 8080
"#;

/// (address, protocol, port) targets frames are aimed at: every VIP, closed
/// ports of VIP addresses, and addresses that are not VIPs.
const TARGETS: &[([u8; 4], u8, u16)] = &[
    ([192, 0, 2, 10], 6, 80),
    ([192, 0, 2, 10], 6, 443),
    ([192, 0, 2, 10], 6, 22),
    ([192, 0, 2, 10], 6, 8081),
    ([192, 0, 2, 10], 17, 80),
    ([192, 0, 2, 20], 17, 53),
    ([192, 0, 2, 20], 17, 5353),
    ([192, 0, 2, 20], 6, 25),
    ([192, 0, 2, 30], 6, 8080),
    ([192, 0, 2, 30], 6, 9100),
    ([192, 0, 2, 40], 6, 80),
    ([192, 0, 2, 50], 6, 80),
    ([192, 0, 2, 50], 6, 22),
    ([192, 0, 2, 2], 6, 22),
    ([203, 0, 113, 9], 17, 53),
    ([192, 0, 2, 60], 6, 80),
    ([192, 0, 2, 60], 6, 443),
    ([192, 0, 2, 60], 17, 53),
    ([192, 0, 2, 60], 17, 5000),
    ([192, 0, 2, 70], 6, 80),
    ([192, 0, 2, 70], 6, 22),
    ([192, 0, 2, 70], 17, 53),
    ([10, 0, 0, 1], 6, 20000),
    ([192, 0, 2, 80], 6, 80),
    ([192, 0, 2, 80], 6, 22),
    ([192, 0, 2, 80], 17, 53),
    ([192, 0, 2, 81], 6, 80),
];

fn backend_mac(ip: IpAddr) -> [u8; 6] {
    let IpAddr::V4(ip) = ip else {
        panic!("the fuzz config has IPv4 backends only")
    };
    let o = ip.octets();
    [0x02, 0xbe, 0, 0, o[2], o[3]]
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct FuzzOptions {
    pub frames: u64,
    pub seed: u64,
    /// Report up to this many differences instead of stopping at the
    /// first (later ones may follow from earlier ones: the two sides'
    /// tables differ after a difference).
    pub max_differences: usize,
    /// The datapath's flow table: shared, or one per CPU (the run is
    /// pinned to one CPU, so per-CPU tables see every flow in one table
    /// and the model, which has one, must agree all the same).
    pub flow_table: FlowTableMode,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct FuzzReport {
    pub frames: u64,
    pub seconds: f64,
    /// Frames per model reason.
    pub reasons: HashMap<Reason, u64>,
    /// The largest frame BPF_PROG_TEST_RUN accepted for this program.
    pub max_frame_len: usize,
    /// VIP changes (removed, re-added, id moved, shadowed, service or VLAN
    /// changed) made between frames.
    pub vip_changes: u64,
    /// NAT states aged past their timeout between frames.
    pub nat_expired: u64,
    /// Frames the model sent through a dnat state: client packets
    /// forwarded, and backends' replies translated back.
    pub dnat_forwarded: u64,
    pub dnat_replies: u64,
    /// The differences found (empty on success), each a printable report.
    pub differences: Vec<String>,
    /// Differences by kind ("model <action reason> / datapath <action
    /// reason>"), to read a long run's differences at a glance.
    pub difference_kinds: std::collections::BTreeMap<String, u64>,
}

impl FuzzReport {
    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.seconds.max(1e-9)
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} frames in {:.1} s ({:.0} frames/s), {} VIP changes and {} NAT states aged out \
             between them; largest frame BPF_PROG_TEST_RUN takes: {} bytes; dnat: {} \
             forwarded, {} replies\n",
            self.frames,
            self.seconds,
            self.frames_per_second(),
            self.vip_changes,
            self.nat_expired,
            self.max_frame_len,
            self.dnat_forwarded,
            self.dnat_replies
        );
        let mut reasons: Vec<_> = self.reasons.iter().collect();
        reasons.sort();
        for (r, n) in reasons {
            let _ = writeln!(s, "  {:<18} {n}", r.name());
        }
        if !self.difference_kinds.is_empty() {
            let _ = writeln!(s, "differences by kind:");
            for (kind, n) in &self.difference_kinds {
                let _ = writeln!(s, "  {n:>7}  {kind}");
            }
        }
        s
    }
}

/// The datapath and the model, set up from one plan.
struct Sides {
    dp: Datapath,
    model: Model,
    reasons_seen: Vec<u64>,
    vip_count: usize,
}

/// A small PRNG: xorshift64* (Vigna). Hand-written rather than `rand`: no
/// new dependency, and the sequence of a seed is fixed by these lines, so
/// a seed printed by a failing run replays the same frames on any later
/// checkout (rand's StdRng does not promise that across versions).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: any seed, 0 included, gives a good state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + self.below((hi_inclusive - lo + 1) as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Pins the calling thread to one CPU it may run on, so the per-CPU
/// round-robin cursor the model follows is the one every run uses.
pub fn pin_to_one_cpu() -> Result<()> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let me = nix::unistd::Pid::from_raw(0);
    let allowed = sched_getaffinity(me).context("reading the CPU affinity")?;
    let cpu = (0..CpuSet::count())
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .unwrap_or(0);
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU index out of range")?;
    sched_setaffinity(me, &set).context("pinning the thread to one CPU")?;
    Ok(())
}

/// Runs `opts.frames` fuzzed frames (after the pre-fill) and returns the
/// report; a non-empty `differences` means the datapath and the model
/// disagreed.
pub fn run(opts: &FuzzOptions) -> Result<FuzzReport> {
    pin_to_one_cpu()?;
    let (mut state, macs) = initial_state()?;
    let mut dp = Datapath::load(&LoadOptions {
        flow_table: opts.flow_table,
        ..load_options()
    })
    .context("loading the XDP program (are you root? run `cargo xtask fuzz`)")?;
    let mut ager = nat::NatAger::open(&mut dp)?;
    let (source, prefix_len) = IPIP_SOURCE;
    let ipip = IpipSettings {
        source: Ipv4Addr::from(source),
        prefix_len,
        mtu: MTU,
    };
    let mut sides = Sides {
        model: Model::new(&fuzz_plan(state.plan()), LB_MAC, HASH_SEED).with_ipip(ipip),
        dp,
        reasons_seen: Vec::new(),
        vip_count: 0,
    };
    let max_len = max_test_run_len(&fuzz_plan(state.plan()))?;
    sides.apply(&fuzz_plan(state.plan()))?;
    let mut report = FuzzReport {
        max_frame_len: max_len,
        ..FuzzReport::default()
    };
    let mut rng = Rng::new(opts.seed);
    let mut gen = Generator {
        rng: &mut rng,
        max_len,
    };
    // Pre-fill: SYNs (and UDP) of a pool of clients to every target, while
    // every backend is up.
    let prefill = gen.prefill();
    let mut index = 0u64;
    for frame in &prefill {
        sides.check(frame, opts, index, &mut report)?;
        index += 1;
        if report.differences.len() >= opts.max_differences.max(1) {
            return Ok(report);
        }
    }
    // Then the state a long-running LB has: down, drained, retired, freed
    // and reused ids, a VIP whose ring lost all backends and one whose ring
    // names down backends (a control-plane bug the datapath must count).
    let base = age_state(&mut state, &macs)?;
    sides.apply(&base)?;
    let mut current = base.clone();
    let start = Instant::now();
    let mut fuzzed = 0u64;
    while fuzzed < opts.frames && report.differences.len() < opts.max_differences.max(1) {
        if gen.rng.chance(CHURN_PERCENT) {
            current = churn::churn(&base, &current, gen.rng);
            sides.apply(&current)?;
            report.vip_changes += 1;
        }
        if gen.rng.chance(EXPIRE_PERCENT) {
            let states = nat::sorted_states(&sides.model);
            if !states.is_empty() {
                let key = *gen.rng.pick(&states);
                ager.expire(&mut sides.model, &key)?;
                report.nat_expired += 1;
            }
        }
        for frame in gen.next_frames(&sides.model) {
            if fuzzed >= opts.frames {
                break;
            }
            sides.check(&frame, opts, index, &mut report)?;
            index += 1;
            fuzzed += 1;
            if report.differences.len() >= opts.max_differences.max(1) {
                break;
            }
        }
        if sides.model.flows.len() > FLOW_TABLE_SIZE as usize / 2 {
            bail!(
                "the run made {} flows, near the flow table's {FLOW_TABLE_SIZE}: the LRU \
                 could evict, which the model does not follow; run fewer frames",
                sides.model.flows.len()
            );
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.frames = fuzzed;
    if report.differences.is_empty() {
        sides.compare_counters(opts.seed, &mut report)?;
        for d in nat::compare(&sides.dp, &sides.model)? {
            report.differences.push(format!("seed {}: {d}", opts.seed));
        }
    }
    Ok(report)
}

fn load_options() -> LoadOptions {
    LoadOptions {
        flow_table_size: FLOW_TABLE_SIZE,
        affinity_table_size: FLOW_TABLE_SIZE,
        hash_seed: HASH_SEED,
        lb_mac: LB_MAC,
        ipip_source: Some((Ipv4Addr::from(IPIP_SOURCE.0), IPIP_SOURCE.1)),
        mtu: MTU,
        dnat_replies: true,
        ..LoadOptions::default()
    }
}

/// A plan of the fuzz state with the fuzzer's NAT settings: small port
/// ranges (`NAT_PORTS`) and timeouts no run reaches (states end only when
/// the harness ages them).
fn fuzz_plan(mut plan: Plan) -> Plan {
    for v in &plan.vips {
        if let Some(cfg) = plan.nat_vips.get_mut(&v.service.vip_id) {
            if let Some(&(_, lo, hi)) = NAT_PORTS.iter().find(|(n, ..)| *n == v.name) {
                (cfg.port_min, cfg.port_max) = (lo, hi);
            }
            cfg.tcp_idle_s = nat::NAT_TIMEOUT_S;
            cfg.udp_idle_s = nat::NAT_TIMEOUT_S;
            cfg.linger_s = nat::NAT_TIMEOUT_S;
        }
    }
    plan
}

fn initial_state() -> Result<(State, HashMap<IpAddr, [u8; 6]>)> {
    let config = config::parse(CONFIG)
        .map_err(|problems| anyhow::anyhow!("the fuzz config is invalid: {problems:?}"))?;
    let mut macs: HashMap<IpAddr, [u8; 6]> = HashMap::new();
    for v in &config.vips {
        for b in &v.backends {
            macs.insert(b.address, backend_mac(b.address));
        }
    }
    for extra in [
        [10, 0, 0, 44],
        [10, 0, 0, 54],
        [10, 0, 0, 71],
        [10, 0, 0, 81],
    ] {
        let ip = IpAddr::from(extra);
        macs.insert(ip, backend_mac(ip));
    }
    let mut state = State::build(&foobar::state::saved_from_config(&config), &macs)
        .context("building the fuzz state")?;
    // A VIP on VLAN 100 of web's address, passing closed ports there; and
    // an untagged address that passes closed ports.
    for (name, addr, vlan, backend) in [
        ("web-vlan100", [192, 0, 2, 10], Some(100), [10, 0, 0, 71]),
        ("open", [192, 0, 2, 50], None, [10, 0, 0, 81]),
    ] {
        let mut spec = state.vip("web")?.spec.clone();
        spec.name = name.into();
        spec.address = IpAddr::from(addr);
        spec.vlan = vlan;
        spec.pass_closed_ports = true;
        state.add_vip(spec)?;
        let mut b = state.vip("web")?.backends[0].spec.clone();
        b.address = IpAddr::from(backend);
        state.add_backend(name, b, macs[&IpAddr::from(backend)])?;
    }
    Ok((state, macs))
}

/// Ages the state after the pre-fill (see `run`) and returns its plan.
fn age_state(st: &mut State, macs: &HashMap<IpAddr, [u8; 6]>) -> Result<Plan> {
    let ip = |s: &str| -> IpAddr { s.parse().expect("a literal address") };
    let id_of = |st: &State, vip: &str, a: &str| -> Result<u32> {
        st.vip(vip)?
            .backends
            .iter()
            .find(|b| b.spec.address == ip(a))
            .map(|b| b.id)
            .with_context(|| format!("{vip} has no backend {a}"))
    };
    // web: one down, one drained, one removed (retired: its flows finish).
    let down = id_of(st, "web", "10.0.0.12")?;
    st.set_health(down, false, "fuzz: down");
    st.set_admin("web", ip("10.0.0.13"), Admin::Drained)?;
    st.remove_backend("web", ip("10.0.0.14"))?;
    // udp-any: one down.
    let down = id_of(st, "udp-any", "10.0.0.33")?;
    st.set_health(down, false, "fuzz: down");
    // Freed ids taken by new backends: tls's 22 goes to another VIP's
    // new backend, sticky's 52 to a new backend of sticky itself (flows
    // and affinity entries of the old holder must not reach the new one).
    let sticky_old = id_of(st, "sticky", "10.0.0.52")?;
    let spec_of = |st: &State, vip: &str| st.vip(vip).map(|v| v.backends[0].spec.clone());
    st.remove_backend("tls", ip("10.0.0.22"))?;
    st.remove_backend("sticky", ip("10.0.0.52"))?;
    let kept: std::collections::HashSet<u32> = st
        .retired()
        .iter()
        .filter(|r| r.address == ip("10.0.0.14"))
        .map(|r| r.id)
        .collect();
    st.free_retired(&kept);
    let mut spec = spec_of(st, "tcp-any")?;
    spec.address = ip("10.0.0.44");
    st.add_backend("tcp-any", spec, macs[&ip("10.0.0.44")])?;
    let mut spec = spec_of(st, "sticky")?;
    spec.address = ip("10.0.0.54");
    let new_sticky = st.add_backend("sticky", spec, macs[&ip("10.0.0.54")])?;
    if new_sticky != sticky_old {
        bail!("expected the new sticky backend to reuse id {sticky_old}, got {new_sticky}");
    }
    // dns: its only backend removed and freed, the id left empty.
    st.remove_backend("dns", ip("10.0.0.31"))?;
    let kept: std::collections::HashSet<u32> = st
        .retired()
        .iter()
        .filter(|r| r.address != ip("10.0.0.31"))
        .map(|r| r.id)
        .collect();
    st.free_retired(&kept);
    // broken: both backends down, and its ring (by a control-plane bug)
    // still naming them.
    let broken_ring: Vec<u32> = st.vip("broken")?.backends.iter().map(|b| b.id).collect();
    for id in &broken_ring {
        st.set_health(*id, false, "fuzz: down");
    }
    let mut plan = st.plan();
    let broken = plan
        .vips
        .iter_mut()
        .find(|v| v.name == "broken")
        .context("the broken VIP")?;
    broken.ring = broken_ring;
    Ok(fuzz_plan(plan))
}

/// The largest frame the XDP program sees whole under BPF_PROG_TEST_RUN.
/// The kernel accepts larger frames but puts only the first page minus
/// the XDP headroom (256) and the skb_shared_info tailroom in the linear
/// buffer the program reads; the rest goes to fragments a program without
/// multi-buffer support never sees (so a longer IPv4 frame reads as
/// truncated). Found by bisection on a datapath of its own: the largest
/// valid TCP frame to a VIP that is still forwarded.
fn max_test_run_len(plan: &Plan) -> Result<usize> {
    let mut dp = Datapath::load(&load_options()).context("loading the probe datapath")?;
    dp.apply(plan).context("programming the probe datapath")?;
    let mut rng = Rng::new(0);
    let mut gen = Generator {
        rng: &mut rng,
        max_len: usize::MAX,
    };
    let mut probe = |len: usize| -> bool {
        let mut b = gen.ip_start(LB_MAC, &[], [198, 51, 100, 1], [192, 0, 2, 10], 6, 0, &[]);
        let payload = vec![0; len.saturating_sub(b.bytes.len() + 20)];
        gen.l4(&mut b, 6, 40000, 80, 0x02, payload);
        // Exactly `len` (the random TCP options change the header length).
        b.bytes.resize(len.max(b.l4.unwrap_or(0) + 24), 0);
        finish_ipv4(&mut b);
        matches!(dp.test_run(&b.bytes), Ok((XDP_TX, _)))
    };
    if !probe(60) {
        bail!("a 60-byte TCP SYN to a VIP is not forwarded: the probe is broken");
    }
    let (mut ok, mut too_big) = (60usize, 65536usize);
    while too_big - ok > 1 {
        let mid = (ok + too_big) / 2;
        if probe(mid) {
            ok = mid;
        } else {
            too_big = mid;
        }
    }
    Ok(ok)
}

impl Sides {
    fn apply(&mut self, plan: &Plan) -> Result<()> {
        self.dp.apply(plan).context("programming the maps")?;
        self.model.apply_plan(plan);
        self.vip_count = plan
            .vips
            .iter()
            .map(|v| v.service.vip_id as usize + 1)
            .max()
            .unwrap_or(0);
        self.reasons_seen = self.reason_packets()?;
        Ok(())
    }

    /// The datapath's reason counters: (name, packets), by index.
    fn reasons(&self) -> Result<Vec<(&'static str, u64)>> {
        let stats = self
            .dp
            .stats(0, 0)
            .context("reading the REASONS counters")?;
        Ok(stats.reasons.iter().map(|(n, c)| (*n, c.packets)).collect())
    }

    fn reason_packets(&self) -> Result<Vec<u64>> {
        Ok(self.reasons()?.into_iter().map(|(_, n)| n).collect())
    }

    /// One frame through both sides; a difference is recorded (with
    /// everything needed to replay it) in `report.differences`.
    fn check(
        &mut self,
        frame: &[u8],
        opts: &FuzzOptions,
        index: u64,
        report: &mut FuzzReport,
    ) -> Result<()> {
        let want = self.model.run(frame);
        *report.reasons.entry(want.reason).or_default() += 1;
        // A dnat state is one whose "SNAT" address is its client's own.
        let dnat = want.updates.iter().any(|u| match u {
            Update::NatNew { key, state, .. } => state.snat_addr_be == key.src_be,
            Update::NatTouch { key, .. } => self
                .model
                .nat_flows
                .get(key)
                .is_some_and(|s| s.snat_addr_be == key.src_be),
            _ => false,
        });
        match want.reason {
            Reason::Forwarded if dnat => report.dnat_forwarded += 1,
            Reason::ForwardedReply if dnat => report.dnat_replies += 1,
            _ => {}
        }
        let (action, output) = self
            .dp
            .test_run(frame)
            .with_context(|| format!("BPF_PROG_TEST_RUN on frame {index}: {}", hex(frame)))?;
        // One read of the counters per frame: the delta names the reason.
        let names = self.reasons()?;
        let moved: Vec<(usize, u64)> = names
            .iter()
            .zip(&self.reasons_seen)
            .enumerate()
            .filter(|(_, ((_, n), s))| n != *s)
            .map(|(i, ((_, n), s))| (i, n - s))
            .collect();
        self.reasons_seen = names.iter().map(|(_, n)| *n).collect();
        let got_reason = match moved.as_slice() {
            [(i, 1)] => Some((*i, names[*i].0)),
            _ => None,
        };
        let same = action == want.action
            && got_reason == Some((want.reason.index(), want.reason.name()))
            && output == want.output;
        if !same {
            let kind = format!(
                "model {} {} / datapath {} {}{}",
                action_name(want.action),
                want.reason.name(),
                action_name(action),
                got_reason.map_or("(no single reason)", |r| r.1),
                if action == want.action && got_reason.map(|r| r.0) == Some(want.reason.index()) {
                    " (output differs)"
                } else {
                    ""
                },
            );
            *report.difference_kinds.entry(kind).or_default() += 1;
            report.differences.push(describe(
                opts.seed, index, frame, &want, action, &moved, &names, &output,
            ));
        }
        Ok(())
    }

    /// Per-VIP and per-backend counters of the whole run, both sides.
    fn compare_counters(&self, seed: u64, report: &mut FuzzReport) -> Result<()> {
        let stats = self
            .dp
            .stats(self.vip_count, MAX_BACKENDS as usize)
            .context("reading the counters")?;
        for (id, c) in stats.vips.iter().enumerate() {
            let want = self.model.vip_counters.get(&(id as u32)).copied();
            if (c.packets, c.bytes) != want.unwrap_or_default() {
                report.differences.push(format!(
                    "seed {seed}: VIP id {id} counted {} packets / {} bytes, the model {:?}",
                    c.packets, c.bytes, want
                ));
            }
        }
        for (id, c) in stats.backends.iter().enumerate() {
            let want = self.model.backend_counters.get(&(id as u32)).copied();
            if (c.packets, c.bytes) != want.unwrap_or_default() {
                report.differences.push(format!(
                    "seed {seed}: backend id {id} counted {} packets / {} bytes, the model {:?}",
                    c.packets, c.bytes, want
                ));
            }
        }
        let misses = stats.event(foobar_common::Event::MidflowMiss);
        if misses != self.model.midflow_misses {
            report.differences.push(format!(
                "seed {seed}: the datapath counted {misses} midflow misses, the model {}",
                self.model.midflow_misses
            ));
        }
        Ok(())
    }
}

fn action_name(a: u32) -> &'static str {
    match a {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        _ => "XDP_?",
    }
}

#[allow(clippy::too_many_arguments)]
fn describe(
    seed: u64,
    index: u64,
    frame: &[u8],
    want: &Outcome,
    action: u32,
    moved: &[(usize, u64)],
    names: &[(&'static str, u64)],
    output: &[u8],
) -> String {
    let got_reasons: Vec<String> = moved
        .iter()
        .map(|(i, n)| format!("{}:{} +{n}", i, names.get(*i).map_or("?", |x| x.0)))
        .collect();
    let mut s = format!(
        "seed {seed}, frame {index} ({} bytes): model {} {}:{}, datapath {} [{}]\n  frame:  {}\n",
        frame.len(),
        action_name(want.action),
        want.reason.index(),
        want.reason.name(),
        action_name(action),
        got_reasons.join(", "),
        hex(frame),
    );
    if output != want.output {
        let _ = writeln!(s, "  model output:    {}", hex(&want.output));
        let _ = writeln!(s, "  datapath output: {}", hex(output));
    }
    let _ = write!(
        s,
        "  replay: cargo xtask fuzz --seed {seed} --frames <at least {}>",
        index + 1
    );
    s
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A frame under construction, with the offsets mutations aim at.
struct Built {
    bytes: Vec<u8>,
    l3: usize,
    /// Start of the L4 header (IPv4 frames only).
    l4: Option<usize>,
    proto: u8,
}

struct Generator<'a> {
    rng: &'a mut Rng,
    max_len: usize,
}

impl Generator<'_> {
    /// SYNs (TCP targets) and datagrams (UDP targets) from every client of
    /// the pool to every target, with the LB's MAC, untagged.
    fn prefill(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for c in 0..24u16 {
            for &(dst, proto, port) in TARGETS {
                let (src, sport) = client(c);
                let mut b = self.ip_start(LB_MAC, &[], src, dst, proto, 0, &[]);
                self.l4(&mut b, proto, sport, port, 0x02, b"hello".to_vec());
                finish_ipv4(&mut b);
                out.push(b.bytes);
            }
        }
        out
    }

    /// One fuzzed frame, or a series (every truncation of one frame).
    fn next_frames(&mut self, model: &Model) -> Vec<Vec<u8>> {
        let nat_icmp = if self.rng.chance(4) {
            self.nat_icmp(model)
        } else {
            None
        };
        let mut base = if let Some(b) = nat_icmp {
            b
        } else if self.rng.chance(12) {
            self.nat_reply(model)
        } else {
            self.base()
        };
        // Another client MAC now and then: NAT replies go to the latest.
        if self.rng.chance(5) && base.bytes.len() >= 12 {
            base.bytes[11] = 0x11;
        }
        if self.rng.chance(1) {
            // Every truncation through the headers, from a bare Ethernet
            // header up, and the last few bytes.
            let len = base.bytes.len();
            return (14..=len)
                .filter(|&n| n <= 128 || n + 4 > len)
                .map(|n| base.bytes[..n].to_vec())
                .collect();
        }
        let mut b = base;
        if self.rng.chance(35) {
            self.mutate(&mut b);
        }
        b.bytes.truncate(self.max_len);
        vec![b.bytes]
    }

    fn dst_mac(&mut self) -> [u8; 6] {
        match self.rng.below(100) {
            0..=87 => LB_MAC,
            88..=91 => [0xff; 6],
            92..=95 => [0x01, 0x00, 0x5e, 0x00, 0x00, self.rng.byte()],
            _ => [0x02, 0xaa, 0, 0, 0, self.rng.byte()],
        }
    }

    fn tags(&mut self) -> Vec<u16> {
        match self.rng.below(100) {
            0..=79 => vec![],
            80..=91 => {
                let any = self.rng_vlan();
                vec![*self.rng.pick(&[0, 100, 200, any])]
            }
            _ => vec![100, self.rng_vlan()],
        }
    }

    fn rng_vlan(&mut self) -> u16 {
        self.rng.below(4096) as u16
    }

    fn payload(&mut self, headers: usize) -> Vec<u8> {
        let room = self.max_len.min(JUMBO).saturating_sub(headers);
        let len = match self.rng.below(100) {
            0..=14 => 0,
            15..=64 => self.rng.range(1, 64),
            65..=89 => self.rng.range(1, 1400),
            // Around the MTU `ipip` checks (1500 − 20 for the packet).
            90..=94 => self.rng.range(1380, 1480),
            // Jumbo: anything up to 9000, capped at what the kernel runs.
            _ => self.rng.range(1, JUMBO).min(room),
        };
        (0..len.min(room)).map(|i| i as u8).collect()
    }

    fn base(&mut self) -> Built {
        let mac = self.dst_mac();
        let tags = self.tags();
        let (src, sport) = client(self.rng.below(64) as u16);
        let &(dst, proto, port) = self.rng.pick(TARGETS);
        match self.rng.below(100) {
            // TCP/UDP to a target, the bulk.
            0..=54 => {
                let options = self.ip_options();
                let frag = if self.rng.chance(8) {
                    self.fragment()
                } else if self.rng.chance(50) {
                    0x4000 // DF
                } else {
                    0
                };
                let mut b = self.ip_start(mac, &tags, src, dst, proto, frag, &options);
                let flags = self.tcp_flags();
                let payload = self.payload(b.bytes.len() + 40);
                self.l4(&mut b, proto, sport, port, flags, payload);
                finish_ipv4(&mut b);
                b
            }
            // ICMP errors about a VIP flow (from the VIP to a client).
            55..=69 => self.icmp_error(mac, &tags, src, sport, dst, proto, port),
            // Other ICMP (echo, redirect, ...).
            70..=73 => {
                let mut b = self.ip_start(mac, &tags, src, dst, 1, 0, &[]);
                let kind = *self.rng.pick(&[0u8, 5, 8, 13, 3, 11]);
                let mut icmp = vec![kind, 0, 0, 0, 0, 7, 0, 1];
                icmp.extend(self.payload(b.bytes.len() + 8));
                // A truncated ICMP header now and then.
                if self.rng.chance(20) {
                    icmp.truncate(self.rng.range(0, 7));
                }
                b.l4 = Some(b.bytes.len());
                b.bytes.extend(icmp);
                finish_ipv4(&mut b);
                b
            }
            // Other IP protocols (GRE, VRRP, SCTP, OSPF).
            74..=76 => {
                let p = *self.rng.pick(&[47u8, 112, 132, 89]);
                let mut b = self.ip_start(mac, &tags, src, dst, p, 0, &[]);
                b.bytes.extend(self.payload(b.bytes.len()));
                finish_ipv4(&mut b);
                b
            }
            77..=85 => self.ipv6(mac, &tags),
            // ARP, LLDP, and any ethertype.
            86..=93 => {
                let mut f = eth(mac, &tags, 0);
                let l3 = f.len();
                let any = self.rng.next_u64() as u16;
                let et = *self.rng.pick(&[0x0806u16, 0x88cc, 0x8035, any]);
                f[l3 - 2..l3].copy_from_slice(&et.to_be_bytes());
                f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0x10]);
                f.extend_from_slice(&[198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 192, 0, 2, 10]);
                f.resize(60.max(f.len()), 0);
                Built {
                    bytes: f,
                    l3,
                    l4: None,
                    proto: 0,
                }
            }
            // Random bytes after an Ethernet header with the IPv4 type.
            _ => {
                let mut f = eth(mac, &tags, 0x0800);
                let l3 = f.len();
                let n = self.rng.range(0, 80);
                f.extend((0..n).map(|_| self.rng.byte()));
                Built {
                    bytes: f,
                    l3,
                    l4: None,
                    proto: 0,
                }
            }
        }
    }

    fn ip_options(&mut self) -> Vec<u8> {
        if !self.rng.chance(10) {
            return Vec::new();
        }
        // NOPs then END: any length that keeps the header a multiple of 4.
        let words = self.rng.range(1, 10);
        let mut o = vec![1u8; words * 4];
        o[words * 4 - 1] = 0;
        o
    }

    fn fragment(&mut self) -> u16 {
        match self.rng.below(3) {
            0 => 0x2000,                                    // first: MF, offset 0
            1 => self.rng.range(1, 0x1fff) as u16,          // last: offset only
            _ => 0x2000 | self.rng.range(1, 0x1fff) as u16, // middle
        }
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.below(100) {
            0..=29 => 0x02,       // SYN
            30..=54 => 0x10,      // ACK
            55..=69 => 0x18,      // PSH ACK
            70..=79 => 0x11,      // FIN ACK
            80..=84 => 0x04,      // RST
            85..=89 => 0x12,      // SYN ACK
            _ => self.rng.byte(), // anything
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ip_start(
        &mut self,
        mac: [u8; 6],
        tags: &[u16],
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        frag: u16,
        options: &[u8],
    ) -> Built {
        let mut f = eth(mac, tags, 0x0800);
        let l3 = f.len();
        let ihl = (20 + options.len()) / 4;
        f.extend_from_slice(&[0x40 | ihl as u8, 0, 0, 0, 0x12, 0x34]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(options);
        Built {
            bytes: f,
            l3,
            l4: None,
            proto,
        }
    }

    fn l4(
        &mut self,
        b: &mut Built,
        proto: u8,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    ) {
        b.l4 = Some(b.bytes.len());
        if proto == 6 {
            let opts = if self.rng.chance(20) {
                vec![2, 4, 5, 0xb4] // MSS
            } else {
                vec![]
            };
            let doff = ((20 + opts.len()) / 4) as u8;
            b.bytes.extend_from_slice(&sport.to_be_bytes());
            b.bytes.extend_from_slice(&dport.to_be_bytes());
            b.bytes.extend_from_slice(&[0, 0, 3, 0xe8, 0, 0, 0, 0]);
            b.bytes
                .extend_from_slice(&[doff << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
            b.bytes.extend(opts);
        } else {
            let len = (8 + payload.len()) as u16;
            b.bytes.extend_from_slice(&sport.to_be_bytes());
            b.bytes.extend_from_slice(&dport.to_be_bytes());
            b.bytes.extend_from_slice(&len.to_be_bytes());
            b.bytes.extend_from_slice(&[0, 0]);
        }
        b.bytes.extend(payload);
    }

    /// An ICMP error whose embedded datagram went from the VIP target to
    /// the client: valid, truncated, or with a broken inner header.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &mut self,
        mac: [u8; 6],
        tags: &[u16],
        client: [u8; 4],
        client_port: u16,
        vip: [u8; 4],
        proto: u8,
        vip_port: u16,
    ) -> Built {
        // From a router on the path, to the VIP.
        let mut b = self.ip_start(mac, tags, [198, 51, 100, 254], vip, 1, 0, &[]);
        let (kind, code) = *self
            .rng
            .pick(&[(3u8, 4u8), (3, 3), (3, 1), (11, 0), (3, 13)]);
        let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
        let inner_opts = if self.rng.chance(10) {
            vec![1, 1, 1, 0]
        } else {
            vec![]
        };
        let mut inner = vec![
            0x45 + (inner_opts.len() / 4) as u8,
            0,
            0,
            60,
            0,
            1,
            0x40,
            0,
            63,
            proto,
            0,
            0,
        ];
        inner.extend_from_slice(&vip);
        inner.extend_from_slice(&client);
        inner.extend(inner_opts);
        inner.extend_from_slice(&vip_port.to_be_bytes());
        inner.extend_from_slice(&client_port.to_be_bytes());
        inner.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x10, 0, 0]);
        match self.rng.below(10) {
            0 => inner.truncate(self.rng.range(0, 27)),
            1 => inner[0] = self.rng.byte(),
            2 => {
                let any = self.rng.byte();
                inner[9] = *self.rng.pick(&[1u8, 47, any]);
            }
            _ => {}
        }
        icmp.extend(inner);
        b.l4 = Some(b.bytes.len());
        b.bytes.extend(icmp);
        finish_ipv4(&mut b);
        b
    }

    fn ipv6(&mut self, mac: [u8; 6], tags: &[u16]) -> Built {
        let mut f = eth(mac, tags, 0x86dd);
        let l3 = f.len();
        // Extension headers: hop-by-hop (0), routing (43), fragment (44),
        // destination options (60), then TCP.
        let mut exts: Vec<u8> = Vec::new();
        let chain: Vec<u8> = (0..self.rng.range(0, 3))
            .map(|_| *self.rng.pick(&[0u8, 43, 44, 60]))
            .collect();
        let first = chain.first().copied().unwrap_or(6);
        for (i, _) in chain.iter().enumerate() {
            let next = chain.get(i + 1).copied().unwrap_or(6);
            exts.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
        }
        let mut tcp = vec![
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ];
        tcp.extend(self.payload(l3 + 40 + exts.len() + 20));
        let plen = (exts.len() + tcp.len()) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[first, 64]);
        f.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        f.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]);
        f.extend(exts);
        f.extend(tcp);
        Built {
            bytes: f,
            l3,
            l4: None,
            proto: 0,
        }
    }

    /// One or two header-aimed corruptions.
    fn mutate(&mut self, b: &mut Built) {
        for _ in 0..self.rng.range(1, 2) {
            let len = b.bytes.len();
            let l3 = b.l3;
            match self.rng.below(10) {
                0 => {
                    let at = self.rng.range(14.min(len), len);
                    b.bytes.truncate(at);
                }
                // Version/IHL.
                1 if len > l3 => {
                    let version = if self.rng.chance(70) {
                        0x40
                    } else {
                        self.rng.byte() & 0xf0
                    };
                    b.bytes[l3] = version | self.rng.below(16) as u8;
                }
                // Total length: anything, or off by a little.
                2 if len > l3 + 3 => {
                    let cur = u16::from_be_bytes([b.bytes[l3 + 2], b.bytes[l3 + 3]]);
                    let v = if self.rng.chance(50) {
                        self.rng.next_u64() as u16
                    } else {
                        cur.wrapping_add(self.rng.range(0, 8) as u16)
                            .wrapping_sub(4)
                    };
                    b.bytes[l3 + 2..l3 + 4].copy_from_slice(&v.to_be_bytes());
                }
                // TCP data offset / UDP length.
                3 => match b.l4 {
                    Some(l4) if b.proto == 6 && len > l4 + 12 => {
                        b.bytes[l4 + 12] = (self.rng.below(16) as u8) << 4
                    }
                    Some(l4) if b.proto == 17 && len > l4 + 5 => {
                        let v = self.rng.below(2000) as u16;
                        b.bytes[l4 + 4..l4 + 6].copy_from_slice(&v.to_be_bytes());
                    }
                    _ => {}
                },
                // Bad checksums (the datapath must not care).
                4 if len > l3 + 11 => b.bytes[l3 + 10] ^= 0xff,
                // Ethernet padding after the IP datagram.
                5 => b
                    .bytes
                    .extend(std::iter::repeat_n(0, self.rng.range(1, 40))),
                // Any byte of the headers, or anywhere.
                6..=8 if len > 0 => {
                    let end = b.l4.map_or(len, |l4| (l4 + 20).min(len));
                    let at = self.rng.range(0, end - 1);
                    b.bytes[at] = self.rng.byte();
                }
                _ if len > 0 => {
                    let at = self.rng.range(0, len - 1);
                    b.bytes[at] ^= 1 << self.rng.below(8);
                }
                _ => {}
            }
        }
    }
}

/// Client `n` of the pool: a source address and port.
fn client(n: u16) -> ([u8; 4], u16) {
    ([198, 51, 100, 1 + (n % 8) as u8], 40000 + n / 8)
}

/// An Ethernet header from a client MAC, with `tags` (802.1Q, then
/// 802.1ad-style stacking with 0x8100 again), ending in `ethertype`.
fn eth(dst: [u8; 6], tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x10]);
    for t in tags {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&t.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Writes the IPv4 total length, header checksum and L4 checksum.
fn finish_ipv4(b: &mut Built) {
    let l3 = b.l3;
    let total = (b.bytes.len() - l3) as u16;
    b.bytes[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    let ihl = usize::from(b.bytes[l3] & 0x0f) * 4;
    b.bytes[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&b.bytes[l3..l3 + ihl], 0);
    b.bytes[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    let Some(l4) = b.l4 else { return };
    let seg_len = b.bytes.len() - l4;
    let at = match b.proto {
        6 if seg_len >= 20 => l4 + 16,
        17 if seg_len >= 8 => l4 + 6,
        1 if seg_len >= 4 => l4 + 2,
        _ => return,
    };
    b.bytes[at..at + 2].copy_from_slice(&[0, 0]);
    let pseudo = if b.proto == 1 {
        0
    } else {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&b.bytes[l3 + 12..l3 + 20]);
        p.extend_from_slice(&[0, b.proto]);
        p.extend_from_slice(&(seg_len as u16).to_be_bytes());
        sum16(&p)
    };
    let c = checksum(&b.bytes[l4..], pseudo);
    b.bytes[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `data` plus a partial sum.
fn checksum(data: &[u8], partial: u32) -> u16 {
    let mut s = u64::from(partial) + u64::from(sum16(data));
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}
