//! The `e2e` section's workloads (wrk, iperf3) and the LB's XDP run time
//! around them: one path measured once.
use anyhow::{ensure, Context as _, Result};
use foobar_tests::{
    lab::{self, Lab},
    peers,
};

use super::paths::Path;

/// `kernel.bpf_stats_enabled` on for the end-to-end rounds (programs'
/// run_time_ns and run_cnt), set back to what it was when dropped.
pub struct BpfStats {
    old: String,
}

pub const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let old =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(BpfStats {
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.old) {
            eprintln!("could not set {BPF_STATS} back to {}: {e}", self.old);
        }
    }
}

/// The id of the XDP program attached to the LB's eth0, if any.
pub fn lb_xdp_prog_id(lab: &Lab) -> Result<Option<u64>> {
    let text = lab.exec(
        &lab.lb.ns,
        &["ip", "-j", "link", "show", "dev", lab::LB_IFACE],
    )?;
    let json: serde_json::Value =
        serde_json::from_str(&text).context("parsing `ip -j link show`")?;
    let xdp = &json[0]["xdp"];
    Ok(xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64()))
}

/// A program's cumulative (run_time_ns, run_cnt) as the kernel counts them
/// while `kernel.bpf_stats_enabled` is 1 (tail calls included in the
/// entry program's time).
pub fn prog_stats(id: u64) -> Result<(u64, u64)> {
    let text = lab::run(&["bpftool", "-j", "prog", "show", "id", &id.to_string()])?;
    let json: serde_json::Value =
        serde_json::from_str(&text).context("parsing `bpftool -j prog show`")?;
    Ok((
        json["run_time_ns"].as_u64().unwrap_or(0),
        json["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// The workloads, each a figure where more is better (except CPU and XDP
/// time).
pub const WORKLOADS: [&str; 8] = [
    "HTTP small responses (wrk, requests/s)",
    "HTTP 1 MB responses (wrk, MB/s)",
    "TCP stream (iperf3, Gbit/s)",
    "UDP 64-byte datagrams (iperf3, received packets/s)",
    "CPU, whole machine, per small HTTP request (µs, less is better)",
    "LB node's XDP program, per small HTTP request (ns, less is better)",
    "LB node's XDP program, per packet, small HTTP (ns, less is better)",
    "LB node's XDP program, per packet, 64-byte UDP (ns, less is better)",
];
/// The workloads measured with the same tool on every path (throughput and
/// the whole machine's CPU); the rest are the LB's XDP time.
pub const RATED: usize = 5;
/// The rated workloads' short names (the ratio table's columns).
pub const RATED_SHORT: [&str; RATED] = [
    "small HTTP requests/s",
    "1 MB responses, MB/s",
    "TCP stream",
    "UDP 64 B packets/s",
    "CPU per small request",
];

/// system + irq + softirq jiffies of the whole machine.
pub fn kernel_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq
    f.get(2).copied().unwrap_or(0) + f.get(5).copied().unwrap_or(0) + f.get(6).copied().unwrap_or(0)
}

pub fn run_in(lab: &Lab, args: &[&str]) -> Result<String> {
    let out = lab.output(&lab.client.ns, args)?;
    ensure!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn iperf3(lab: &Lab, host: &str, secs: u64, udp: bool) -> Result<f64> {
    let t = secs.to_string();
    let port = peers::IPERF_PORT.to_string();
    let mut args = vec!["iperf3", "-c", host, "-p", &port, "-t", &t, "-J"];
    if udp {
        args.extend(["-u", "-l", "64", "-b", "0"]);
    }
    let json: serde_json::Value = serde_json::from_str(&run_in(lab, &args)?)?;
    let end = &json["end"];
    if udp {
        let sum = &end["sum"];
        let received =
            sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
        Ok(received / sum["seconds"].as_f64().unwrap_or(1.0).max(1e-3))
    } else {
        Ok(end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9)
    }
}

/// Client processes on every path: one wrk of one thread each, run at
/// once, a third of the connections each, so every path has the same
/// client and direct ×3 can go round-robin over the three backends.
pub const WRK_PROCESSES: u32 = 3;

/// wrk from the client: `connections` in all over WRK_PROCESSES wrk
/// processes of one thread, process `i` to `hosts[i % hosts.len()]` (one
/// host: all to it); the summed result.
pub fn wrk(
    lab: &Lab,
    path: Path,
    hosts: &[String],
    url_path: &str,
    connections: u32,
    d: &str,
) -> Result<lab::WrkResult> {
    let results = {
        let n = WRK_PROCESSES;
        let children = (0..n)
            .map(|i| {
                let host = &hosts[i as usize % hosts.len()];
                let c = connections / n + u32::from(i < connections % n);
                std::process::Command::new("ip")
                    .args(["netns", "exec", &lab.client.ns, "wrk", "-t1", "-c"])
                    .args([&c.to_string(), "-d", d])
                    .arg(format!("http://{host}{url_path}"))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("starting wrk")
            })
            .collect::<Vec<_>>();
        let mut results = Vec::new();
        for child in children {
            results.push(lab::finish_wrk(child?)?);
        }
        results
    };
    let mut sum = lab::WrkResult::default();
    for r in results {
        ensure!(
            r.socket_errors == 0 && r.non_2xx_3xx == 0,
            "{}: wrk errors\n{}",
            path.name(),
            r.text
        );
        sum.requests += r.requests;
        sum.requests_per_s += r.requests_per_s;
        sum.transfer_per_s += r.transfer_per_s;
    }
    Ok(sum)
}

/// One path, every workload; None where the path does not measure it.
/// `xdp`: the LB's XDP program, whose run time is read around the small
/// HTTP and UDP workloads.
pub fn measure(lab: &Lab, path: Path, secs: u64, xdp: Option<u64>) -> Result<Vec<Option<f64>>> {
    let hosts = path.hosts(lab);
    let d = format!("{secs}s");
    let stats = |id: Option<u64>| id.map(prog_stats).transpose();
    let xdp_before = stats(xdp)?;
    let jiffies = kernel_jiffies();
    let small = wrk(lab, path, &hosts, "/", 32, &d)?;
    let cpu_us = (kernel_jiffies() - jiffies) as f64 * 10_000.0 / small.requests.max(1) as f64;
    let xdp_small = stats(xdp)?;
    let big = wrk(lab, path, &hosts, "/1m.bin", 8, &d)?;
    let (tcp, udp, xdp_udp) = if path.runs_iperf() {
        let tcp = iperf3(lab, &hosts[0], secs, false)?;
        let before = stats(xdp)?;
        let udp = (path != Path::Haproxy)
            .then(|| iperf3(lab, &hosts[0], secs, true))
            .transpose()?;
        (Some(tcp), udp, before.zip(stats(xdp)?))
    } else {
        (None, None, None)
    };
    let delta = |(t0, c0): (u64, u64), (t1, c1): (u64, u64)| {
        (t1.saturating_sub(t0) as f64, c1.saturating_sub(c0) as f64)
    };
    let small_xdp = xdp_before.zip(xdp_small).map(|(a, b)| delta(a, b));
    let udp_xdp = xdp_udp.map(|(a, b)| delta(a, b));
    let per = |(t, n): (f64, f64)| (n > 0.0).then(|| t / n);
    Ok(vec![
        Some(small.requests_per_s),
        Some(big.transfer_per_s / (1024.0 * 1024.0)),
        tcp,
        udp,
        Some(cpu_us),
        small_xdp.and_then(|(t, _)| per((t, small.requests as f64))),
        small_xdp.and_then(per),
        udp_xdp.and_then(per),
    ])
}
