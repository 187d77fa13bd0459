//! What the `nat` and `ipip` paths of the `e2e` section need beyond the
//! dsr bench config: their configs, and `foobar decap` on every backend
//! while the ipip path runs (docs/IPIP.md: the lab kernel has no ipip
//! module). The dsr backends (VIP on loopback, ARP sysctls) serve all three
//! modes: nat sends to their own addresses and takes their replies back.
use anyhow::{ensure, Context as _, Result};
use foobar_tests::{
    lab::{self, Lab},
    peers,
};

/// The ipip outer sources (exist only inside the lab); the backends'
/// decap accepts them.
const IPIP_SOURCE: &str = "10.201.9.0/24";

/// The bench config (web and iperf VIPs) with every VIP in `mode`.
fn config_in(lab: &Lab, mode: &str) -> Result<String> {
    let dsr = peers::foobar_config(lab);
    let config = dsr.replace("forwarding = \"dsr\"", &format!("forwarding = \"{mode}\""));
    ensure!(
        config != dsr,
        "foobar {mode}: the bench config has no `forwarding = \"dsr\"` to change"
    );
    Ok(config)
}

/// `nat`: the SNAT address is the default, the LB's own address.
pub fn nat_config(lab: &Lab) -> Result<String> {
    config_in(lab, "nat")
}

/// `ipip` with the lab's outer sources.
pub fn ipip_config(lab: &Lab) -> Result<String> {
    Ok(config_in(lab, "ipip")?.replacen(
        "[datapath]\n",
        &format!("[datapath]\nipip_source = \"{IPIP_SOURCE}\"\n"),
        1,
    ))
}

/// `foobar decap ARGS` on backend `i` (through nsenter: the pins land in
/// the host's bpffs, under the lab's pin root).
fn decap(lab: &Lab, i: usize, args: &[&str]) -> Result<String> {
    let be = &lab.backends[i];
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", be.ns))
        .arg(lab::foobar_bin()?)
        .arg("decap")
        .args(args)
        .arg("--pin-root")
        .arg(lab.pin_root.join(format!("decap-{}", be.name)))
        .output()
        .context("running foobar decap")?;
    ensure!(
        out.status.success(),
        "foobar decap {args:?} on {}: {}",
        be.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// foobar's `reason` counter (`foobar stats --json`).
fn reason(lab: &Lab, name: &str) -> Result<u64> {
    let out = lab.foobar_cli(&lab::foobar_bin()?, &["stats", "--json"])?;
    let stats: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `foobar stats --json`")?;
    stats["reasons"][name]["packets"]
        .as_u64()
        .with_context(|| format!("no {name} counter in `foobar stats --json`: {stats}"))
}

/// The path's traffic went the way its mode says: forwarded by foobar; nat
/// replies translated back by it; ipip packets decapsulated on every
/// backend.
pub fn check_counters(lab: &Lab, mode: &str) -> Result<()> {
    let forwarded = reason(lab, "forwarded")?;
    ensure!(forwarded > 0, "foobar {mode}: nothing counted forwarded");
    if mode == "nat" {
        let replies = reason(lab, "forwarded_reply")?;
        ensure!(replies > 0, "foobar nat: no reply counted forwarded_reply");
    }
    if mode == "ipip" {
        for i in 0..lab.backends.len() {
            let text = decap(lab, i, &["--iface", "eth0", "--stats", "--json"])?;
            let stats: serde_json::Value =
                serde_json::from_str(&text).context("parsing `foobar decap --stats --json`")?;
            ensure!(
                stats["decapsulated"].as_u64().unwrap_or(0) > 0,
                "foobar ipip: {} decapsulated nothing: {stats}",
                lab.backends[i].name
            );
        }
    }
    Ok(())
}

/// The decap on every backend's eth0, accepting the LB's outer sources,
/// with loose reverse-path filtering (docs/IPIP.md).
pub fn attach_decap(lab: &Lab) -> Result<()> {
    for i in 0..lab.backends.len() {
        decap(lab, i, &["--iface", "eth0", "--allow-from", IPIP_SOURCE])?;
        for key in ["all", "eth0"] {
            lab.exec(
                &lab.backends[i].ns,
                &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=2")],
            )?;
        }
    }
    Ok(())
}

/// Detaches every backend's decap (every one tried; the first error
/// returned), so the other paths run without it.
pub fn detach_decap(lab: &Lab) -> Result<()> {
    let mut first = Ok(());
    for i in 0..lab.backends.len() {
        let r = decap(lab, i, &["--iface", "eth0", "--detach"]).map(|_| ());
        if first.is_ok() {
            first = r;
        }
    }
    first
}
