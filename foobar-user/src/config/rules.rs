//! Rules one value must follow wherever it comes from: the config file
//! (`foobar check` and `foobar run`) and the run-time operations of
//! `State` (`foobar vip add`, `foobar backend add`). One function per rule,
//! so the file and the control socket can never accept different things.
//! Each returns the problem as text, to be put after `KEY: `; the bad value
//! is quoted with Rust's escaping, so a control character shows as `\n`,
//! never raw on the operator's terminal.
use std::net::{IpAddr, Ipv6Addr};

/// Longest name (VIP names end up in Prometheus labels, logs, JSON).
pub const NAME_MAX: usize = 64;
/// Longest `http_path` / `http_host`.
pub const HTTP_FIELD_MAX: usize = 1024;
/// Least average number of Maglev slots per backend. Maglev's paper
/// (Eisenbud et al., NSDI 2016, §3.4) keeps M > 100·N for < 1 % imbalance;
/// below 10·N the imbalance exceeds ~10 % and light backends may get no
/// slot at all, so foobar refuses it.
pub const MAGLEV_SLOTS_PER_BACKEND: u64 = 10;

/// A name: 1 to 64 of `A-Z a-z 0-9 . _ -`. It reaches Prometheus labels,
/// log lines, the terminal and the state file, so nothing needs escaping.
pub fn name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty; use 1 to 64 letters, digits, '.', '_' or '-'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    if name.len() > NAME_MAX {
        return Err(format!(
            "{name:?} has {} characters; at most {NAME_MAX}",
            name.len()
        ));
    }
    Ok(())
}

/// A Linux interface name as the kernel accepts it (`dev_valid_name`),
/// printable ASCII only.
pub fn interface(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || !name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':'))
    {
        return Err(format!(
            "{name:?} is not a valid interface name (1 to 15 printable characters, \
             no '/', ':' or spaces; see `ip link`)"
        ));
    }
    Ok(())
}

/// Addresses that can be a VIP: a unicast address the NIC can receive.
pub fn vip_address(a: IpAddr) -> Result<(), String> {
    let a = match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => return vip_address6(a),
    };
    let why = if a.is_unspecified() || a.octets()[0] == 0 {
        "in 0.0.0.0/8 (unspecified)"
    } else if a.is_broadcast() {
        "the broadcast address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if a.is_loopback() {
        "a loopback address, which never reaches the NIC"
    } else {
        return Ok(());
    };
    Err(format!("{a} cannot be a VIP: it is {why}"))
}

fn vip_address6(a: Ipv6Addr) -> Result<(), String> {
    let why = if a.is_unspecified() {
        "the unspecified address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if a.is_loopback() {
        "a loopback address, which never reaches the NIC"
    } else if a.to_ipv4_mapped().is_some() {
        "an IPv4-mapped address; write the IPv4 address itself"
    } else {
        return Ok(());
    };
    Err(format!("{a} cannot be a VIP: it is {why}"))
}

/// Addresses that can be a backend of a VIP at `vip`: a unicast address of
/// another host, one the LB can resolve a MAC for and send frames to, of
/// the VIP's family (the datapath forwards a packet in its own family).
pub fn backend_address(a: IpAddr, vip: IpAddr) -> Result<(), String> {
    let (a, vip) = match (a, vip) {
        (IpAddr::V4(a), IpAddr::V4(vip)) => (a, vip),
        (IpAddr::V6(a), IpAddr::V6(vip)) => return backend_address6(a, vip),
        (a, vip) => {
            return Err(format!(
                "{a} cannot be a backend of VIP {vip}: the families differ (IPv4 and IPv6 \
                 cannot be mixed within one VIP); give an {} backend address, or add a \
                 second VIP of the other family",
                if vip.is_ipv4() { "IPv4" } else { "IPv6" }
            ))
        }
    };
    let why = if a.is_unspecified() || a.octets()[0] == 0 {
        "in 0.0.0.0/8 (unspecified)"
    } else if a.is_broadcast() {
        "the broadcast address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if a.is_loopback() {
        "a loopback address (the LB node itself)"
    } else if a.octets()[0] >= 240 {
        "in the reserved 240.0.0.0/4"
    } else if a == vip {
        "the VIP's own address (the traffic would loop)"
    } else {
        return Ok(());
    };
    Err(format!(
        "{a} cannot be a backend: it is {why}; give a server's unicast address"
    ))
}

fn backend_address6(a: Ipv6Addr, vip: Ipv6Addr) -> Result<(), String> {
    let why = if a.is_unspecified() {
        "the unspecified address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if a.is_loopback() {
        "a loopback address (the LB node itself)"
    } else if a.is_unicast_link_local() {
        "a link-local address (fe80::/10 is ambiguous without an interface); give the          server's global or unique-local address"
    } else if a == vip {
        "the VIP's own address (the traffic would loop)"
    } else {
        return Ok(());
    };
    Err(format!(
        "{a} cannot be a backend: it is {why}; give a server's unicast address"
    ))
}

/// A backend address is one host on one L2 segment: its MAC is resolved,
/// and its health checked, by address. So an address that backs a VIP on
/// `vlan` must not also back a VIP (`other`) on `other_vlan`.
pub fn backend_vlan(
    a: IpAddr,
    vlan: Option<u16>,
    other: &str,
    other_vlan: Option<u16>,
) -> Result<(), String> {
    if vlan == other_vlan {
        return Ok(());
    }
    let on = |v: Option<u16>| v.map_or("untagged".to_owned(), |v| format!("on VLAN {v}"));
    Err(format!(
        "{a} is a backend of VIP {other} {}, and this VIP is {}: one address is one host on \
         one segment (its MAC and health are found by address); use the address the server \
         has on this VIP's segment",
        on(other_vlan),
        on(vlan)
    ))
}

/// The path of an HTTP check: starts with '/', visible ASCII only (a space
/// or CR/LF would break the request line; percent-encode them).
pub fn http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    http_text(path)
}

/// The Host header of an HTTP check: non-empty, visible ASCII, no '/'.
pub fn http_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty; leave it out to send the backend's address".into());
    }
    if host.contains('/') {
        return Err(format!("{host:?} is a host name, it cannot contain '/'"));
    }
    http_text(host)
}

fn http_text(text: &str) -> Result<(), String> {
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{text:?} contains {c:?}; only visible ASCII is allowed \
             (percent-encode anything else, e.g. %20 for a space)"
        ));
    }
    if text.len() > HTTP_FIELD_MAX {
        return Err(format!(
            "{} characters; at most {HTTP_FIELD_MAX}",
            text.len()
        ));
    }
    Ok(())
}

/// Whether a Maglev table of `size` slots holds backends of `weights`:
/// at least `MAGLEV_SLOTS_PER_BACKEND` slots per backend on average, and
/// every backend of weight > 0 entitled to at least one whole slot
/// (`size × weight / total weight ≥ 1`), or it would get no traffic.
pub fn maglev_table(size: u32, weights: impl IntoIterator<Item = u32>) -> Result<(), String> {
    let weights: Vec<u64> = weights.into_iter().map(u64::from).collect();
    let size = u64::from(size);
    let n = weights.len() as u64;
    if size < MAGLEV_SLOTS_PER_BACKEND * n {
        return Err(format!(
            "{size} slots for {n} backends; Maglev needs at least \
             {MAGLEV_SLOTS_PER_BACKEND} per backend ({}): raise maglev_table_size \
             (a prime such as 65537) or use fewer backends",
            MAGLEV_SLOTS_PER_BACKEND * n
        ));
    }
    let total: u64 = weights.iter().sum();
    if let Some(&lightest) = weights.iter().filter(|&&w| w > 0).min() {
        if size * lightest < total {
            return Err(format!(
                "{size} slots cannot give a backend of weight {lightest} a slot \
                 when the weights add up to {total}: raise maglev_table_size or \
                 bring the weights closer"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn names_are_a_restricted_charset() {
        for good in ["web", "api-v2.prod_1", &"x".repeat(NAME_MAX)] {
            assert_eq!(name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "my web",
            "web\n",
            "a\"b",
            "tab\there",
            "esc\u{1b}[31m",
            "café",
            &"x".repeat(NAME_MAX + 1),
        ] {
            let err = name(bad).expect_err(bad);
            assert!(
                !err.contains(['\n', '\t', '\u{1b}']),
                "control characters are escaped: {err}"
            );
        }
    }

    #[test]
    fn backend_addresses_must_be_another_hosts_unicast() {
        let vip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(
            backend_address(Ipv4Addr::new(10, 0, 0, 11).into(), vip),
            Ok(())
        );
        for (bad, why) in [
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("127.0.0.1", "loopback"),
            ("127.1.2.3", "loopback"),
            ("224.0.0.18", "multicast"),
            ("239.1.1.1", "multicast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.10", "VIP's own address"),
        ] {
            let err = backend_address(bad.parse().unwrap(), vip).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(vip_address(Ipv4Addr::LOCALHOST.into()).is_err());
        assert!(vip_address(Ipv4Addr::new(198, 51, 100, 1).into()).is_ok());
    }

    #[test]
    fn v6_addresses_follow_the_same_rules_and_families_do_not_mix() {
        let vip: IpAddr = "2001:db8::10".parse().unwrap();
        assert_eq!(backend_address("fd00::11".parse().unwrap(), vip), Ok(()));
        for (bad, why) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("fe80::1", "link-local"),
            ("2001:db8::10", "VIP's own address"),
            ("10.0.0.11", "families differ"),
        ] {
            let err = backend_address(bad.parse().unwrap(), vip).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err = backend_address("fd00::11".parse().unwrap(), "192.0.2.10".parse().unwrap())
            .unwrap_err();
        assert!(err.contains("give an IPv4 backend address"), "{err}");
        assert!(vip_address("::1".parse().unwrap()).is_err());
        assert!(vip_address("::ffff:192.0.2.1".parse().unwrap()).is_err());
        assert!(vip_address("2001:db8::10".parse().unwrap()).is_ok());
    }

    #[test]
    fn http_fields_refuse_spaces_and_control_characters() {
        assert_eq!(http_path("/healthz?full=1"), Ok(()));
        assert_eq!(http_host("www.example.com:8080"), Ok(()));
        for bad in ["healthz", "/a b", "/a\r\nX-Evil: 1", "/\u{0}", "/é"] {
            assert!(http_path(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "a b", "a\r\nb", "a/b", "\t"] {
            assert!(http_host(bad).is_err(), "{bad:?}");
        }
        assert!(http_path(&format!("/{}", "a".repeat(HTTP_FIELD_MAX))).is_err());
    }

    #[test]
    fn maglev_tables_must_hold_their_backends() {
        assert_eq!(maglev_table(65537, [1; 4096]), Ok(()));
        assert_eq!(maglev_table(31, [1, 1, 1]), Ok(()));
        assert!(maglev_table(29, [1, 1, 1]).is_err(), "< 10 slots each");
        assert!(
            maglev_table(7, [1; 8]).is_err(),
            "fewer slots than backends"
        );
        assert!(
            maglev_table(101, [256, 1]).is_err(),
            "weight 1 gets no slot"
        );
        assert_eq!(maglev_table(257, [256, 1]), Ok(()));
        assert_eq!(maglev_table(101, [0, 5]), Ok(()), "weight 0 needs no slot");
        assert_eq!(maglev_table(2, []), Ok(()));
    }
}
