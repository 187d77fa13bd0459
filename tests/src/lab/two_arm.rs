//! The two-arm lab (`LabOptions::two_arm`, docs/TOPOLOGY.md): the client
//! on the client-side bridge `br0` (10.201.0.0/24), the backends on a
//! bridge of their own, `br1` (10.201.2.0/24), and the LB node on both:
//! `eth0` (client side, holds the VIP) and `eth1` (backend side, at
//! 10.201.2.2). A gateway namespace `gw` with a leg on each bridge routes
//! between the subnets, as the network around a real two-arm LB does: the
//! client reaches the backends' own addresses through it (nginx checks),
//! and DSR backends send their replies to the client through it, never
//! through the LB.
//!
//! What the kernel needs for the redirect (docs/LAB.md, "veth"): a veth
//! delivers frames redirected into it (ndo_xdp_xmit) only when its peer
//! has an XDP program, as for XDP_TX: the LB's `eth1` peer on `br1` gets
//! the XDP_PASS program like the `eth0` peer.
use std::net::Ipv4Addr;

use anyhow::Result;

use super::{attach_pass_in, run, Host, Lab, NET};

/// The backend-side subnet of a two-arm lab (only inside the lab).
pub(super) const BACKEND_NET: [u8; 3] = [10, 201, 2];
/// The LB node's backend-side interface inside its namespace.
pub const LB_BACKEND_IFACE: &str = "eth1";
/// The LB node's address on the backend side.
pub const LB_BACKEND_ADDR: Ipv4Addr =
    Ipv4Addr::new(BACKEND_NET[0], BACKEND_NET[1], BACKEND_NET[2], 2);
/// The gateway's address on each side (.1).
const GW_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(NET[0], NET[1], NET[2], 1);
const GW_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(BACKEND_NET[0], BACKEND_NET[1], BACKEND_NET[2], 1);

/// The bridge a host's `eth0` is on: the backends' own in a two-arm lab.
pub(super) fn bridge_of(lab: &Lab, host: &Host) -> &'static str {
    if lab.two_arm && lab.backends.iter().any(|b| b.name == host.name) {
        "br1"
    } else {
        "br0"
    }
}

/// A veth from bridge `br` in the switch namespace (port `port`) to `iface`
/// in `ns` with `addr`/24, both ends up.
fn leg(lab: &Lab, br: &str, port: &str, ns: &str, iface: &str, addr: Ipv4Addr) -> Result<()> {
    let sw = &lab.switch_ns;
    run(&[
        "ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", iface, "netns", ns,
    ])?;
    run(&["ip", "-n", sw, "link", "set", port, "master", br, "up"])?;
    run(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        iface,
    ])?;
    run(&["ip", "-n", ns, "link", "set", iface, "up"])?;
    Ok(())
}

impl Lab {
    /// The backend-side bridge, before the hosts' ports are added.
    pub(super) fn build_backend_bridge(&mut self) -> Result<()> {
        let sw = self.switch_ns.clone();
        run(&["ip", "-n", &sw, "link", "add", "br1", "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", "br1", "up"])?;
        Ok(())
    }

    /// The LB node's backend-side leg (and its peer's XDP_PASS program),
    /// the gateway and the routes through it.
    pub(super) fn build_two_arm(&mut self) -> Result<()> {
        let lb = self.lb.clone();
        leg(
            self,
            "br1",
            "p-lb-b",
            &lb.ns,
            LB_BACKEND_IFACE,
            LB_BACKEND_ADDR,
        )?;
        let pass = attach_pass_in(&self.switch_ns, "p-lb-b")?;
        self.pass.push(pass);
        let gw = format!("{}-gw", self.id);
        self.add_namespace(&gw)?;
        leg(self, "br0", "p-gw", &gw, "eth0", GW_CLIENT_SIDE)?;
        leg(self, "br1", "p-gw-b", &gw, "eth1", GW_BACKEND_SIDE)?;
        self.exec(&gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let backend_net = format!(
            "{}.{}.{}.0/24",
            BACKEND_NET[0], BACKEND_NET[1], BACKEND_NET[2]
        );
        let client_net = format!("{}.{}.{}.0/24", NET[0], NET[1], NET[2]);
        run(&[
            "ip",
            "-n",
            &self.client.ns,
            "route",
            "add",
            &backend_net,
            "via",
            &GW_CLIENT_SIDE.to_string(),
        ])?;
        for b in self.backends.clone() {
            run(&[
                "ip",
                "-n",
                &b.ns,
                "route",
                "add",
                &client_net,
                "via",
                &GW_BACKEND_SIDE.to_string(),
            ])?;
        }
        // The LB node reaches both subnets on its own links: no route.
        Ok(())
    }
}
