//! The `e2e` section: foobar against direct, the minimal XDP forwarder,
//! HAProxy and nftables in the netns lab, the paths interleaved in rounds;
//! and health-check detection time.
mod modes;
mod paths;
mod workloads;

use std::{fmt::Write as _, time::Instant};

use anyhow::{ensure, Context as _, Result};
use foobar::datapath::bench::Harness;
use foobar_tests::{
    lab::{self, Lab, LabOptions},
    peers,
};

use crate::common::median;
use paths::{ForwarderPath, Path, FORWARDER_BACKEND_MAC, PATHS};
use workloads::{lb_xdp_prog_id, measure, BpfStats, RATED, RATED_SHORT, WORKLOADS};

/// End to end in the netns lab, the paths interleaved in rounds.
pub fn end_to_end(quick: bool) -> Result<String> {
    let (rounds, secs) = if quick { (1, 1) } else { (3, 5) };
    let mut lab = Lab::start(&LabOptions {
        wire_like_everywhere: true,
        // Room for ipip's outer header between the LB and the backends;
        // the client's 1500 bytes bound every path's segments as before.
        tunnel_mtu: Some(1520),
        ..LabOptions::default()
    })?;
    lab.make_file("1m.bin", 1024 * 1024)?;
    peers::prepare(&mut lab)?;
    // be1 takes the MAC the forwarder writes; every host forgets be1's old
    // one.
    let be1 = lab.backends[0].clone();
    lab.exec(
        &be1.ns,
        &[
            "ip",
            "link",
            "set",
            "eth0",
            "address",
            FORWARDER_BACKEND_MAC,
        ],
    )?;
    let mut namespaces = vec![lab.client.ns.clone(), lab.lb.ns.clone()];
    namespaces.extend(lab.backends.iter().map(|b| b.ns.clone()));
    for ns in &namespaces {
        lab.exec(ns, &["ip", "neigh", "flush", "all"])?;
    }
    let mut forwarder = ForwarderPath {
        harness: Harness::load()?,
        link: None,
    };
    let bpf_stats = BpfStats::enable()?;
    // results[path][workload] = one value per round
    let mut results = vec![vec![Vec::new(); WORKLOADS.len()]; PATHS.len()];
    let mut loads = Vec::new();
    for _ in 0..rounds {
        loads.push(std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
        for (p, path) in PATHS.iter().enumerate() {
            path.start(&mut lab, &mut forwarder)
                .with_context(|| format!("starting {}", path.name()))?;
            let values = lb_xdp_prog_id(&lab).and_then(|xdp| {
                ensure!(
                    xdp.is_some() == path.attaches_xdp(),
                    "{}: an XDP program is {}attached to the LB's {}",
                    path.name(),
                    if xdp.is_some() { "" } else { "not " },
                    lab::LB_IFACE
                );
                let values = measure(&lab, *path, secs, xdp)?;
                path.check_counters(&lab)?;
                Ok(values)
            });
            path.stop(&mut lab, &mut forwarder)?;
            for (w, v) in values?.into_iter().enumerate() {
                if let Some(v) = v {
                    ensure!(
                        v > 0.0,
                        "{} gave no figure for {}",
                        path.name(),
                        WORKLOADS[w]
                    );
                    results[p][w].push(v);
                }
            }
        }
    }
    drop(bpf_stats);
    let detection = health_detection(&mut lab, if quick { 1 } else { 3 })?;
    let mut out = String::new();
    writeln!(out, "\n## End to end (netns lab)\n")?;
    writeln!(
        out,
        "Client, LB node and 3 nginx backends in network namespaces on one bridge; every veth \
         with wire-like offloads (tx checksum, TSO, GSO off), as XDP on veth needs. {rounds} \
         round(s) of {secs} s per workload, paths interleaved in each round ({}); medians, and \
         ratios as the median of per-round ratios. Paths: direct is the client straight to be1; \
         direct ×3 straight to the three backends, round-robin on the client; on every path \
         the client is three wrk processes of one thread, a third of the connections each \
         (32 in all for small responses, 8 for 1 MB), each to one backend on direct ×3; forwarder is the minimal \
         XDP forwarder (both MACs rewritten to be1's and a fixed source, XDP_TX, nothing else) \
         attached natively on the LB's eth0 in foobar's place, the ceiling for any XDP \
         balancer on these veths; foobar ×1 is foobar with be1 alone behind the web VIP (the \
         forwarder's work); foobar dsr, nat and ipip are native XDP, round-robin over the \
         three, in each forwarding mode (nat: SNAT to the LB's own address, replies translated \
         back by the LB; ipip: `foobar decap` attached to every backend's eth0 for that path \
         only, the LB-to-backend links at MTU 1520 for the outer header on every path); \
         HAProxy TCP mode, roundrobin; nftables DNAT numgen inc + masquerade. iperf3 goes to \
         be1 on every path, so direct ×3 and foobar ×1 do not rerun it: their iperf3 ratios \
         use direct's and foobar dsr's figures of the same round. The CPU row counts system+irq+softirq time of \
         the whole machine (client, LB and backends share it) per request; the XDP rows are \
         the LB node's own work: the kernel's run_time_ns of the program attached to its eth0 \
         (`kernel.bpf_stats_enabled` = 1 during the rounds, set back after), per small HTTP \
         request and per packet it ran on. Load average per round: {}.\n",
        PATHS.map(Path::name).join(", "),
        loads
            .iter()
            .map(|l| l.split_whitespace().next().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    let fmt = |v: &[f64]| {
        if v.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.2}", median(v.to_vec()))
        }
    };
    writeln!(
        out,
        "| workload | {} |\n|---|{}",
        PATHS.map(Path::name).join(" | "),
        "---:|".repeat(PATHS.len())
    )?;
    for (w, name) in WORKLOADS.iter().enumerate() {
        let cells: Vec<String> = (0..PATHS.len())
            .map(|p| fmt(results[p][w].as_slice()))
            .collect();
        writeln!(out, "| {name} | {} |", cells.join(" | "))?;
    }
    // A path's figures for workload w, or its stand-in's.
    let figures = |path: Path, w: usize| -> &[f64] {
        let p = PATHS.iter().position(|&q| q == path).unwrap_or(0);
        match (results[p][w].is_empty(), path.stand_in()) {
            (true, Some(other)) => {
                let o = PATHS.iter().position(|&q| q == other).unwrap_or(0);
                results[o][w].as_slice()
            }
            _ => results[p][w].as_slice(),
        }
    };
    let ratio = |a: &[f64], b: &[f64]| {
        if a.is_empty() || b.is_empty() {
            "n/a".to_owned()
        } else {
            format!(
                "{:.2}",
                median(a.iter().zip(b).map(|(x, y)| x / y).collect())
            )
        }
    };
    // (path, against, target); each mode against the same spread
    // directly, and the full proxies (nat's work) against each other.
    let comparisons: [(Path, Path, &str); 9] = [
        (Path::FoobarOne, Path::Forwarder, "≥ 0.95"),
        (Path::Foobar, Path::DirectSpread, "≥ 0.95"),
        (Path::FoobarNat, Path::DirectSpread, ""),
        (Path::FoobarIpip, Path::DirectSpread, ""),
        (Path::Forwarder, Path::Direct, ""),
        (Path::Foobar, Path::Haproxy, "≥ 2"),
        (Path::Foobar, Path::Nft, "≥ 1.3"),
        (Path::FoobarNat, Path::Haproxy, ""),
        (Path::FoobarNat, Path::Nft, ""),
    ];
    writeln!(
        out,
        "\nRatios, one row per comparison (targets on requests/s, throughput and packet rate; \
         reported, not asserted; CPU per request is less-is-better, so below 1 is better \
         there):\n"
    )?;
    writeln!(
        out,
        "| comparison | target | {} |\n|---|---|{}",
        RATED_SHORT.join(" | "),
        "---:|".repeat(RATED)
    )?;
    for &(a, b, target) in &comparisons {
        let cells: Vec<String> = (0..RATED)
            .map(|w| ratio(figures(a, w), figures(b, w)))
            .collect();
        writeln!(
            out,
            "| {} / {} | {target} | {} |",
            a.name(),
            b.name(),
            cells.join(" | ")
        )?;
    }
    writeln!(
        out,
        "\nHealth-check detection (HTTP check every {} ms, fall 2; bound interval × fall + one \
         interval = {} ms): a SIGKILLed backend marked down after {:.0} ms (median of {}).",
        lab::HEALTH_INTERVAL_MS,
        lab::HEALTH_INTERVAL_MS * 3,
        median(detection.clone()),
        detection.len()
    )?;
    Ok(out)
}

/// Kills be2's nginx under foobar and times until `foobar status` shows it
/// down; restarts it and waits until it is up again.
pub fn health_detection(lab: &mut Lab, times: usize) -> Result<Vec<f64>> {
    let foobar = lab::foobar_bin()?;
    let config = peers::foobar_config(lab);
    lab.start_foobar(&foobar, &config)?;
    let be2 = lab.backends[1].addr.to_string();
    let health = |lab: &Lab| -> Result<String> {
        let out = lab.foobar_cli(&foobar, &["status", "--json"])?;
        let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(s["vips"][0]["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["address"] == be2.as_str()))
            .map(|b| b["health"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default())
    };
    let mut samples = Vec::new();
    for _ in 0..times {
        lab.kill_backend("be2")?;
        let t = Instant::now();
        lab::wait_for("be2 down", std::time::Duration::from_secs(10), || {
            Ok(health(lab)? == "down")
        })?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        lab.start_backend("be2")?;
        lab::wait_for("be2 up", std::time::Duration::from_secs(10), || {
            Ok(health(lab)? == "up")
        })?;
    }
    lab.stop_and_detach_foobar()?;
    Ok(samples)
}
