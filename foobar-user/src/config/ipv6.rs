//! IPv6-only keys of the configuration: `datapath.ipip_source6`, the outer
//! source of IPv6-in-IPv6 (`ipip`) packets.
use std::net::Ipv6Addr;

/// Most host bits of `datapath.ipip_source6` the flow
/// hash fills: the datapath takes at most 32 host bits from the flow (the
/// last word of the address), and a /112 (65 536 sources) is plenty for RSS.
pub const IPIP_SOURCE6_MIN_PREFIX: u8 = 96;

/// `datapath.ipip_source6`: "ADDR" (one address, /128) or "ADDR/LEN" with
/// LEN in 96..=128 and no host bits set.
pub fn ipip_source6(text: &str) -> Result<(Ipv6Addr, u8), String> {
    let (addr, len) = match text.split_once('/') {
        None => (text, "128"),
        Some(parts) => parts,
    };
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("\"{text}\" is not an IPv6 address or ADDRESS/PREFIX"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| (IPIP_SOURCE6_MIN_PREFIX..=128).contains(l))
        .ok_or_else(|| {
            format!(
                "\"{text}\": the prefix length must be {IPIP_SOURCE6_MIN_PREFIX}..=128 \
                 (the flow fills at most the last 32 bits; a /120 gives 256 outer \
                 sources, plenty for RSS)"
            )
        })?;
    let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    if u128::from(addr) & host != 0 {
        return Err(format!(
            "\"{text}\" has host bits set; write the prefix as {}/{len}",
            Ipv6Addr::from(u128::from(addr) & !host)
        ));
    }
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!(
            "\"{text}\" cannot be a source; use an address (or prefix) of this node"
        ));
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipip_source6_takes_an_address_or_a_clean_prefix() {
        assert_eq!(
            ipip_source6("2001:db8:9::").unwrap(),
            ("2001:db8:9::".parse().unwrap(), 128)
        );
        assert_eq!(
            ipip_source6("2001:db8:9::/120").unwrap(),
            ("2001:db8:9::".parse().unwrap(), 120)
        );
        let e = ipip_source6("2001:db8:9::1/120").unwrap_err();
        assert!(
            e.contains("host bits") && e.contains("2001:db8:9::/120"),
            "{e}"
        );
        assert!(ipip_source6("2001:db8::/64")
            .unwrap_err()
            .contains("96..=128"));
        assert!(ipip_source6("10.0.0.1")
            .unwrap_err()
            .contains("not an IPv6"));
        assert!(ipip_source6("ff02::1")
            .unwrap_err()
            .contains("cannot be a source"));
    }
}
