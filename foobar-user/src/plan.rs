//! What the maps must hold: VIP keys and services, backend entries by id,
//! rings. `State::plan` derives it; the `datapath` module writes it. Plain
//! data that depends on nothing of foobar but the shared map types, so
//! neither side needs the other.
use std::{collections::BTreeMap, collections::BTreeSet, collections::HashMap};

use foobar_common::{Backend, NatVip, Service, VipAddrKey, VipAddrKey6, VipKey};

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
    /// Every (address, VLAN) that has a VIP or is a VIP's SNAT address,
    /// with its ADDR_* flags.
    pub addresses: HashMap<VipAddrKey, u32>,
    /// Every (IPv6 address, VLAN) that has a VIP, with its ADDR_* flags.
    pub addresses6: HashMap<VipAddrKey6, u32>,
    /// NAT settings of every NAT VIP, by VIP id.
    pub nat_vips: BTreeMap<u32, NatVip>,
    /// Backend id -> the port NAT sends to (network order), for backends
    /// of NAT VIPs with a `port`; absent: the port the client asked for.
    pub backend_ports: BTreeMap<u32, u16>,
    /// Addresses (network order) of the backends of dnat VIPs: their
    /// replies come to the LB addressed to clients (DNAT_SRC_BITS).
    pub dnat_sources: BTreeSet<u32>,
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
