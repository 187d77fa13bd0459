//! What the maps must hold: VIP keys and services, backend entries by id,
//! rings. `State::plan` derives it; the `datapath` module writes it. Pure.
use std::{collections::BTreeMap, collections::HashMap, net::Ipv4Addr};

use foobar_common::{Backend, Service, VipAddrKey, VipKey};

use crate::{
    config::Config,
    state::{self, BuildError, State},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedVip {
    pub name: String,
    pub key: VipKey,
    pub service: Service,
    /// Backend ids of this VIP, in config order.
    pub backend_ids: Vec<u32>,
    pub ring: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub vips: Vec<PlannedVip>,
    /// Every backend entry the datapath must hold, by id.
    pub backends: BTreeMap<u32, Backend>,
    /// Every (address, VLAN) that has a VIP, with its ADDR_* flags.
    pub addresses: HashMap<VipAddrKey, u32>,
}

/// What pinned maps hold, read back by a daemon that adopts them: the
/// inverse of a plan, for `State::adopt`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapsContent {
    pub vips: Vec<(VipKey, Service)>,
    /// Every backend entry with a generation (0: a free id).
    pub backends: BTreeMap<u32, Backend>,
    /// The live ring of each VIP id of `vips`.
    pub rings: HashMap<u32, Vec<u32>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no MAC address is known for backend {address} of VIP {vip}")]
pub struct MissingMac {
    pub vip: String,
    pub address: Ipv4Addr,
}

/// The plan of a config as it starts: ids in config order (VIPs from 0,
/// backends from 0 across VIPs; a server behind two VIPs gets two ids, so
/// its counters stay per VIP).
pub fn build(config: &Config, macs: &HashMap<Ipv4Addr, [u8; 6]>) -> Result<Plan, BuildError> {
    Ok(State::build(&state::saved_from_config(config), macs)?.plan())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use foobar_common::{BACKEND_NEW_FLOWS, BACKEND_UP};

    const TEXT: &str = r#"
        [[vip]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        [[vip.backend]]
        address = "10.0.0.11"
        weight = 2
        [[vip.backend]]
        address = "10.0.0.12"

        [[vip]]
        name = "all-udp"
        address = "192.0.2.10"
        port = 0
        protocol = "udp"
        [[vip.backend]]
        address = "10.0.0.12"
    "#;

    fn macs() -> HashMap<Ipv4Addr, [u8; 6]> {
        HashMap::from([
            ("10.0.0.11".parse().unwrap(), [2, 0, 0, 0, 0, 11]),
            ("10.0.0.12".parse().unwrap(), [2, 0, 0, 0, 0, 12]),
        ])
    }

    #[test]
    fn keys_are_in_network_byte_order_and_ids_follow_config_order() {
        let plan = build(&config::parse(TEXT).unwrap(), &macs()).unwrap();
        assert_eq!(plan.vips.len(), 2);
        let web = &plan.vips[0];
        assert_eq!(web.key.addr_be[0].to_ne_bytes(), [192, 0, 2, 10]);
        assert_eq!(web.key.port_be.to_ne_bytes(), [0, 80]);
        assert_eq!(web.key.proto, 6);
        assert_eq!(web.service.vip_id, 0);
        assert_eq!(web.backend_ids, vec![0, 1]);
        assert_eq!(web.ring, vec![0, 1, 0]);

        let udp = &plan.vips[1];
        assert_eq!(udp.key.port_be, 0);
        assert_eq!(udp.key.proto, 17);
        assert_eq!(udp.service.vip_id, 1);
        assert_eq!(udp.backend_ids, vec![2], "same server, its own id per VIP");

        assert_eq!(plan.backends.len(), 3);
        assert_eq!(plan.backends[&2].addr_be[0].to_ne_bytes(), [10, 0, 0, 12]);
        assert_eq!(plan.backends[&2].mac, [2, 0, 0, 0, 0, 12]);
        assert!(plan
            .backends
            .values()
            .all(|b| b.flags == BACKEND_UP | BACKEND_NEW_FLOWS));
    }

    #[test]
    fn a_backend_without_a_mac_is_an_error_naming_it() {
        let mut m = macs();
        m.remove(&"10.0.0.11".parse().unwrap());
        let err = build(&config::parse(TEXT).unwrap(), &m).unwrap_err();
        assert_eq!(
            err,
            BuildError::MissingMac(MissingMac {
                vip: "web".into(),
                address: "10.0.0.11".parse().unwrap()
            })
        );
    }
}
