//! SNAT addresses against the interface: every address a `nat` VIP uses
//! as its source must be an address of the LB's interface (backends reply
//! to it, and the node must answer ARP for it), and a `nat` VIP without
//! one (neither its own nor `[datapath] snat_address`) uses the
//! interface's primary IPv4 address, as HAProxy and IPVS full-NAT use the
//! LB's own. Reads the addresses over rtnetlink in this process's network
//! namespace; never changes them.
use std::net::{IpAddr, Ipv4Addr};

use crate::{
    config::{Config, Forwarding, Problem},
    state::SavedVip,
};

/// The IPv4 addresses of one interface, in the kernel's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceAddrs {
    pub iface: String,
    /// (address, prefix length, primary: not IFA_F_SECONDARY)
    pub addrs: Vec<(Ipv4Addr, u8, bool)>,
}

/// Reads the IPv4 addresses of interface `ifindex` (named `iface`).
pub async fn read(ifindex: u32, iface: &str) -> anyhow::Result<IfaceAddrs> {
    use anyhow::Context as _;
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
    let (conn, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket to read addresses")?;
    let conn = tokio::spawn(conn);
    let mut stream = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    let mut addrs = Vec::new();
    let result = async {
        while let Some(msg) = stream.try_next().await? {
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
                _ => None,
            });
            if let Some(a) = local {
                let primary = !msg.header.flags.contains(AddressHeaderFlags::Secondary);
                addrs.push((a, msg.header.prefix_len, primary));
            }
        }
        anyhow::Ok(())
    }
    .await;
    conn.abort();
    result.with_context(|| format!("listing the addresses of {iface} (netlink)"))?;
    Ok(IfaceAddrs {
        iface: iface.to_owned(),
        addrs,
    })
}

impl IfaceAddrs {
    /// The interface's primary IPv4 address: its first primary address
    /// that is not one of `vips` (a VIP held on the interface, by VRRP or
    /// by hand, is not the node's own address).
    pub fn primary(&self, vips: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        self.addrs
            .iter()
            .find(|(a, _, primary)| *primary && !vips.contains(a))
            .map(|(a, _, _)| *a)
    }

    pub fn has(&self, a: Ipv4Addr) -> bool {
        self.addrs.iter().any(|(x, _, _)| *x == a)
    }

    /// The command that adds `a` to the interface: with the prefix of the
    /// interface's subnet that holds it, else as a /32.
    pub fn add_command(&self, a: Ipv4Addr) -> String {
        let prefix = self
            .addrs
            .iter()
            .find(|(x, len, _)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                *len > 0 && u32::from(*x) & mask == u32::from(a) & mask
            })
            .map_or(32, |(_, len, _)| *len);
        format!("ip addr add {a}/{prefix} dev {}", self.iface)
    }

    /// Every SNAT address of `uses` ((config key, address)) that is not
    /// an address of the interface, as a problem that says what to run.
    pub fn problems(&self, uses: &[(String, Ipv4Addr)]) -> Vec<Problem> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for (key, a) in uses {
            if self.has(*a) || seen.contains(a) {
                continue;
            }
            seen.push(*a);
            out.push(Problem {
                key: key.clone(),
                message: self.missing_message(*a),
            });
        }
        out
    }

    /// Why `a` cannot be an SNAT address here, and what to do.
    pub fn missing_message(&self, a: Ipv4Addr) -> String {
        let have: Vec<String> = self.addrs.iter().map(|(x, _, _)| x.to_string()).collect();
        format!(
            "SNAT address {a} is not an address of {}, so the backends' replies to it would \
             never reach foobar; add it: `{}` (and to the distribution's network config), or \
             use one it has ({})",
            self.iface,
            self.add_command(a),
            if have.is_empty() {
                "none".to_owned()
            } else {
                have.join(", ")
            }
        )
    }
}

/// Gives the `nat` VIPs of `config` that have no SNAT address (neither
/// their own nor the node's) the interface's primary one, and records it as
/// the node's default for VIPs added at run time. Err: a problem (no
/// primary address) for the first such VIP.
pub fn fill_default(config: &mut Config, addrs: &IfaceAddrs) -> Result<(), Problem> {
    let needs = config.vips.iter().any(|v| {
        v.forwarding == Forwarding::Nat && v.nat.is_some_and(|n| n.snat_address.is_unspecified())
    });
    if config.datapath.nat.snat_address.is_some() {
        return Ok(());
    }
    let vips: Vec<Ipv4Addr> = config
        .vips
        .iter()
        .filter_map(|v| match v.address {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let Some(primary) = addrs.primary(&vips) else {
        if !needs {
            return Ok(());
        }
        return Err(Problem {
            key: "datapath.snat_address".into(),
            message: format!(
                "missing, and {} has no IPv4 address of its own to use instead; set it, \
                 or add one: `ip addr add ADDRESS/PREFIX dev {}`",
                addrs.iface, addrs.iface
            ),
        });
    };
    config.datapath.nat.snat_address = Some(primary);
    for v in &mut config.vips {
        if let Some(n) = v.nat.as_mut().filter(|n| n.snat_address.is_unspecified()) {
            n.snat_address = primary;
        }
    }
    Ok(())
}

/// The SNAT addresses `vips` use, each with the config key that set it:
/// `datapath.snat_address` for the node's, `vip[N].snat_address` for a
/// VIP's own (N: its place in `config`), or the VIP's name for one added at
/// run time.
pub fn uses(config: &Config, vips: &[SavedVip]) -> Vec<(String, Ipv4Addr)> {
    vips.iter()
        .filter(|v| v.spec.forwarding == Forwarding::Nat)
        .filter_map(|v| {
            let a = v.spec.nat?.snat_address;
            let key = if config.datapath.nat.snat_address == Some(a) {
                "datapath.snat_address".to_owned()
            } else {
                match config.vips.iter().position(|c| c.name == v.spec.name) {
                    Some(i) => format!("vip[{i}].snat_address"),
                    None => format!("VIP {} (added at run time): snat_address", v.spec.name),
                }
            };
            Some((key, a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth0() -> IfaceAddrs {
        IfaceAddrs {
            iface: "eth0".into(),
            addrs: vec![
                ("10.0.0.100".parse().unwrap(), 32, true),
                ("10.0.0.2".parse().unwrap(), 24, true),
                ("10.0.0.5".parse().unwrap(), 24, false),
            ],
        }
    }

    #[test]
    fn the_primary_is_the_first_primary_address_that_is_no_vip() {
        let vip: Ipv4Addr = "10.0.0.100".parse().unwrap();
        assert_eq!(eth0().primary(&[vip]), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(eth0().primary(&[]), Some(vip));
        assert_eq!(IfaceAddrs::default().primary(&[]), None);
    }

    #[test]
    fn a_missing_address_is_refused_with_the_command_that_adds_it() {
        let uses = vec![
            (
                "datapath.snat_address".to_owned(),
                "10.0.0.5".parse().unwrap(),
            ),
            (
                "vip[1].snat_address".to_owned(),
                "10.0.0.9".parse().unwrap(),
            ),
            (
                "vip[2].snat_address".to_owned(),
                "10.0.0.9".parse().unwrap(),
            ),
            (
                "vip[3].snat_address".to_owned(),
                "192.0.2.1".parse().unwrap(),
            ),
        ];
        let p = eth0().problems(&uses);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].key, "vip[1].snat_address");
        assert!(
            p[0].message.contains("`ip addr add 10.0.0.9/24 dev eth0`"),
            "{}",
            p[0].message
        );
        assert!(
            p[0].message.contains("10.0.0.2, 10.0.0.5"),
            "{}",
            p[0].message
        );
        assert!(
            p[1].message.contains("`ip addr add 192.0.2.1/32 dev eth0`"),
            "{}",
            p[1].message
        );
    }

    #[test]
    fn a_nat_vip_without_an_address_gets_the_primary_and_the_node_keeps_it() {
        let text = "[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\n\
                    [[vip.backend]]\naddress = \"10.0.0.11\"\n\
                    [[vip]]\nname = \"own\"\naddress = \"10.0.0.101\"\nport = 80\n\
                    snat_address = \"10.0.0.5\"\n[[vip.backend]]\naddress = \"10.0.0.11\"\n";
        let mut c = crate::config::parse(text).unwrap();
        fill_default(&mut c, &eth0()).unwrap();
        let primary: Ipv4Addr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            c.vips[0].nat.unwrap().snat_address,
            primary,
            "not the VIP on eth0"
        );
        assert_eq!(
            c.vips[1].nat.unwrap().snat_address,
            "10.0.0.5".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            c.datapath.nat.snat_address,
            Some(primary),
            "for runtime VIPs"
        );
        // An interface without an address: a config problem naming the key.
        let mut c = crate::config::parse(text).unwrap();
        let none = IfaceAddrs {
            iface: "eth0".into(),
            addrs: vec![],
        };
        let p = fill_default(&mut c, &none).unwrap_err();
        assert_eq!(p.key, "datapath.snat_address");
        assert!(p.message.contains("ip addr add"), "{}", p.message);
    }
}
