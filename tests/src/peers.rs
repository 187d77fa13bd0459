//! The load balancers foobar is measured against, set up on the lab's LB
//! node: HAProxy in TCP mode and an nftables DNAT balancer. Each gets an
//! address of its own on the LB node, so no port is translated and the
//! clients' URLs differ only in the address.
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};

use crate::lab::{Lab, LB_IFACE, VIP};

/// HAProxy's frontend address on the LB node.
pub const HAPROXY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 4);
/// The nftables balancer's address on the LB node.
pub const NFT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 3);
/// iperf3's port on the backends (be1 only: iperf3 needs its control and
/// data connections on one server).
pub const IPERF_PORT: u16 = 5201;

/// Adds the peers' addresses to the LB node and starts iperf3 on be1.
pub fn prepare(lab: &mut Lab) -> Result<()> {
    for addr in [HAPROXY_ADDR, NFT_ADDR] {
        lab.exec(
            &lab.lb.ns,
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", LB_IFACE],
        )?;
    }
    // Two servers on be1: one on its own address (direct, HAProxy,
    // nftables) and one on the VIP for foobar. A UDP server behind DSR must
    // answer from the VIP, and iperf3 answers from the address it is bound
    // to (unbound, it would answer from be1's address and the client,
    // connected to the VIP, would drop the replies).
    let (ns, addr) = (lab.backends[0].ns.clone(), lab.backends[0].addr.to_string());
    let port = IPERF_PORT.to_string();
    for (name, bind) in [
        ("iperf3-be1", addr.as_str()),
        ("iperf3-vip", &VIP.to_string()),
    ] {
        lab.start_server(&ns, name, &["iperf3", "-s", "-p", &port, "-B", bind])?;
    }
    Ok(())
}

/// foobar's config for the benchmark: the web VIP over every backend
/// (round-robin) and iperf3's port, TCP and UDP, to be1 (not health
/// checked: a check would disturb iperf3's one-client server).
pub fn foobar_config(lab: &Lab) -> String {
    let be1 = lab.backends[0].addr;
    let mut text = lab.config();
    for proto in ["tcp", "udp"] {
        text.push_str(&format!(
            "\n[[vip]]\nname = \"iperf-{proto}\"\naddress = \"{VIP}\"\nport = {IPERF_PORT}\nforwarding = \"dsr\"\n\
             protocol = \"{proto}\"\n[vip.health]\ncheck = \"none\"\n\
             [[vip.backend]]\naddress = \"{be1}\"\n"
        ));
    }
    text
}

pub fn start_haproxy(lab: &mut Lab) -> Result<()> {
    let mut servers = String::new();
    for b in &lab.backends {
        servers.push_str(&format!("  server {} {}:80\n", b.name, b.addr));
    }
    let be1 = lab.backends[0].addr;
    let conf = format!(
        "global\n  maxconn 8000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
         timeout client 60s\n  timeout server 60s\n\n\
         frontend web\n  bind {HAPROXY_ADDR}:80\n  default_backend web\n\n\
         backend web\n  balance roundrobin\n{servers}\n\
         frontend iperf\n  bind {HAPROXY_ADDR}:{IPERF_PORT}\n  default_backend iperf\n\n\
         backend iperf\n  server be1 {be1}:{IPERF_PORT}\n"
    );
    let path = lab.dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let lb = lab.lb.ns.clone();
    lab.start_server(
        &lb,
        "haproxy",
        &["haproxy", "-db", "-f", path.to_str().unwrap_or_default()],
    )?;
    let url = format!("http://{HAPROXY_ADDR}/");
    crate::lab::wait_for("haproxy", std::time::Duration::from_secs(10), || {
        Ok(lab.curl(&url)?.starts_with("be"))
    })
    .with_context(|| {
        format!(
            "haproxy log:\n{}",
            std::fs::read_to_string(lab.dir.join("haproxy.log")).unwrap_or_default()
        )
    })
}

pub fn stop_haproxy(lab: &mut Lab) -> Result<()> {
    lab.stop_server("haproxy")
}

/// An nftables DNAT balancer (numgen inc over the backends), with
/// masquerade so replies come back through the LB node.
pub fn start_nft(lab: &Lab) -> Result<()> {
    let targets: Vec<String> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {}", b.addr))
        .collect();
    let be1 = lab.backends[0].addr;
    let n = lab.backends.len();
    let rules = format!(
        "table ip fbbench {{\n\
           chain pre {{\n\
             type nat hook prerouting priority dstnat;\n\
             ip daddr {NFT_ADDR} tcp dport 80 dnat to numgen inc mod {n} map {{ {} }}\n\
             ip daddr {NFT_ADDR} tcp dport {IPERF_PORT} dnat to {be1}\n\
             ip daddr {NFT_ADDR} udp dport {IPERF_PORT} dnat to {be1}\n\
           }}\n\
           chain post {{\n\
             type nat hook postrouting priority srcnat;\n\
             ct status dnat masquerade\n\
           }}\n\
         }}\n",
        targets.join(", ")
    );
    let path = lab.dir.join("nft.rules");
    std::fs::write(&path, rules)?;
    let ns = &lab.lb.ns;
    lab.exec(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    lab.exec(ns, &["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"])?;
    lab.exec(
        ns,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{LB_IFACE}.send_redirects=0"),
        ],
    )?;
    lab.exec(ns, &["nft", "-f", path.to_str().unwrap_or_default()])?;
    Ok(())
}

pub fn stop_nft(lab: &Lab) -> Result<()> {
    lab.exec(&lab.lb.ns, &["nft", "delete", "table", "ip", "fbbench"])?;
    Ok(())
}
