//! `foobar backend-setup --mode dsr --vip ADDR`: prepares a backend for
//! direct server return, persistently. DSR leaves the destination address
//! of each packet the VIP, so the backend must hold the VIP on an
//! interface that never answers ARP for it (loopback), or it would answer
//! for the VIP on the LB's segment and steal the traffic. Writes:
//!
//! - `/etc/sysctl.d/90-foobar-dsr.conf`: `arp_ignore = 1` (answer ARP only
//!   for addresses of the interface the request came in on) and
//!   `arp_announce = 2` (never source ARP from the VIP), on `all`, which
//!   the kernel combines with each interface's own value (the larger wins);
//! - `/etc/systemd/network/60-foobar-dsr-lo.network`: the VIPs on `lo`, for
//!   systemd-networkd (the file keeps lo's own 127.0.0.1/8 and ::1).
//!
//! `--write-to DIR` writes under DIR instead of / (to review, or to build an
//! image); `--apply` also sets both now (the sysctls through /proc/sys,
//! the address with `ip addr replace`), so no reboot is needed.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

#[derive(Debug, clap::Args)]
pub struct BackendSetupArgs {
    /// Forwarding mode the LB uses for this backend's VIPs. Only "dsr"
    /// exists today (NAT and IPIP come with issue 13).
    #[arg(long, value_parser = ["dsr"])]
    pub mode: String,
    /// A VIP this backend serves (repeat for several).
    /// Example: --vip 192.0.2.10
    #[arg(long, required = true, value_name = "ADDR")]
    pub vip: Vec<Ipv4Addr>,
    /// Interface that holds the VIPs: loopback unless you know better.
    #[arg(long, default_value = "lo", value_name = "IF")]
    pub iface: String,
    /// Root to write the files under (default /). Example: --write-to /tmp/be1
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub write_to: PathBuf,
    /// Also apply it now: set the sysctls and add the VIPs to the interface
    /// (needs root on the backend).
    #[arg(long)]
    pub apply: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub const SYSCTL_FILE: &str = "etc/sysctl.d/90-foobar-dsr.conf";

/// The sysctls DSR backends need: (key, value).
pub const SYSCTLS: [(&str, &str); 2] = [
    ("net.ipv4.conf.all.arp_ignore", "1"),
    ("net.ipv4.conf.all.arp_announce", "2"),
];

/// (path relative to the root, contents) of every file backend-setup
/// writes for `vips` on `iface`.
pub fn files(vips: &[Ipv4Addr], iface: &str) -> Vec<(PathBuf, String)> {
    let list = vips
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let mut sysctl = format!(
        "# Written by `foobar backend-setup --mode dsr` for VIP {list}.\n\
         # This host serves the VIP behind a foobar load balancer in direct server\n\
         # return mode: it holds the VIP on {iface} and must never answer ARP for it\n\
         # (the load balancer does). The kernel uses the larger of `all` and the\n\
         # interface's own value.\n\
         # arp_ignore=1: answer ARP only for addresses of the receiving interface.\n\
         # arp_announce=2: never use the VIP as the source of an ARP request.\n"
    );
    for (key, value) in SYSCTLS {
        sysctl.push_str(&format!("{key} = {value}\n"));
    }
    let mut network = format!(
        "# Written by `foobar backend-setup --mode dsr`: the VIPs this host serves\n\
         # behind foobar (direct server return), on {iface}, for systemd-networkd.\n\
         [Match]\n\
         Name={iface}\n\n"
    );
    if iface == "lo" {
        // networkd manages lo now: keep its own addresses.
        network.push_str("[Address]\nAddress=127.0.0.1/8\n\n[Address]\nAddress=::1/128\n\n");
    }
    for vip in vips {
        network.push_str(&format!("[Address]\nAddress={vip}/32\n\n"));
    }
    network.pop();
    vec![
        (PathBuf::from(SYSCTL_FILE), sysctl),
        (
            PathBuf::from(format!("etc/systemd/network/60-foobar-dsr-{iface}.network")),
            network,
        ),
    ]
}

pub fn backend_setup(args: BackendSetupArgs) -> anyhow::Result<()> {
    if args.iface.is_empty() || args.iface.contains('/') {
        bail!("--iface {:?} is not an interface name", args.iface);
    }
    let mut written = Vec::new();
    for (rel, text) in files(&args.vip, &args.iface) {
        let path = args.write_to.join(&rel);
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    let mut applied = Vec::new();
    if args.apply {
        for (key, value) in SYSCTLS {
            let proc = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&proc, value).with_context(|| {
                format!("setting {key} = {value} ({}): run as root", proc.display())
            })?;
            applied.push(format!("{key} = {value}"));
        }
        for vip in &args.vip {
            let addr = format!("{vip}/32");
            let out = Command::new("ip")
                .args(["addr", "replace", &addr, "dev", &args.iface])
                .output()
                .context("running `ip addr replace` (iproute2)")?;
            if !out.status.success() {
                bail!(
                    "ip addr replace {addr} dev {} failed: {}",
                    args.iface,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            applied.push(format!("ip addr replace {addr} dev {}", args.iface));
        }
    }
    let networkd_enabled =
        Path::new("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service").exists();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "written": written,
                "applied": applied,
                "networkd_enabled": networkd_enabled,
            })
        );
        return Ok(());
    }
    for path in &written {
        println!("wrote {}", path.display());
    }
    for a in &applied {
        println!("applied {a}");
    }
    if !args.apply {
        println!(
            "to apply now: sysctl --system && networkctl reload \
             (or run again with --apply)"
        );
    }
    if args.write_to == Path::new("/") && !networkd_enabled {
        eprintln!(
            "WARNING: systemd-networkd is not enabled here, so the VIP on {} will not come \
             back after a reboot: `systemctl enable systemd-networkd`, or on ifupdown add \
             `up ip addr add VIP/32 dev {}` under `iface {}` in /etc/network/interfaces",
            args.iface, args.iface, args.iface
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hold_the_sysctls_and_every_vip() {
        let vips = [Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11)];
        let f = files(&vips, "lo");
        assert_eq!(f.len(), 2);
        let sysctl = &f[0].1;
        assert!(sysctl.contains("\nnet.ipv4.conf.all.arp_ignore = 1\n"));
        assert!(sysctl.contains("\nnet.ipv4.conf.all.arp_announce = 2\n"));
        assert_eq!(
            f[1].0,
            PathBuf::from("etc/systemd/network/60-foobar-dsr-lo.network")
        );
        let net = &f[1].1;
        assert!(net.contains("[Match]\nName=lo\n"), "{net}");
        assert!(net.contains("Address=127.0.0.1/8\n"), "{net}");
        assert!(net.contains("Address=192.0.2.10/32\n"), "{net}");
        assert!(net.contains("Address=192.0.2.11/32\n"), "{net}");
        let dummy = files(&vips[..1], "dummy0");
        assert!(!dummy[1].1.contains("127.0.0.1"), "only lo keeps loopback");
    }
}
