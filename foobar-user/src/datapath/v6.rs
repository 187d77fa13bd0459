//! The IPv6 maps: the IPv6 VIP-address table (VIP_ADDRS6) and its
//! prefilter bitmap (VIP_ADDR_BITS6), written from a plan's `addresses6`
//! in the order `apply` keeps for IPv4 (bits and addresses before the VIP
//! keys that need them, removed after); and the IPv6 flow table (FLOWS6),
//! read for tests. VIP keys, backends and rings of IPv6 VIPs are in the
//! shared maps, written by `apply` itself.
use aya::{
    maps::{Array, HashMap, Map, MapData, ProgramArray},
    Ebpf,
};
use foobar_common::{vip_addr_bit6, Flow, FlowKey6, VipAddrKey6, VIP_ADDR_BITMAP_WORDS};

use super::{Datapath, DatapathError, Result};
use crate::plan::Plan;

pub(super) struct Maps6 {
    addrs: HashMap<MapData, VipAddrKey6, u32>,
    bits: Array<MapData, u64>,
    flows: HashMap<MapData, FlowKey6, Flow>,
}

/// What the IPv6 address maps hold, as last written.
#[derive(Default)]
pub(super) struct Written6 {
    addrs: std::collections::HashMap<VipAddrKey6, u32>,
    /// Empty: all zero, as a fresh map is.
    bits: Vec<u64>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

pub(super) fn take(ebpf: &mut Ebpf) -> Result<Maps6> {
    let mut map = |name: &'static str| {
        ebpf.take_map(name)
            .ok_or(DatapathError::Missing { what: "map", name })
    };
    let addrs = HashMap::try_from(map("VIP_ADDRS6")?).map_err(map_err("VIP_ADDRS6"))?;
    let bits = Array::try_from(map("VIP_ADDR_BITS6")?).map_err(map_err("VIP_ADDR_BITS6"))?;
    let flows = match map("FLOWS6")? {
        // aya reads an LRU hash through its HashMap type.
        Map::LruHashMap(d) => HashMap::try_from(Map::HashMap(d)),
        other => HashMap::try_from(other),
    }
    .map_err(map_err("FLOWS6"))?;
    Ok(Maps6 { addrs, bits, flows })
}

/// The IPv6 pipeline program, tail-called by the load balancer for IPv6
/// frames (its stack would not fit beside the IPv4 pipeline's).
pub const IPV6_PROGRAM: &str = "foobar_ipv6";

/// Loads the IPv6 pipeline program and puts it in slot 0 of PIPELINE6 (the
/// load balancer's tail-call array; not pinned: every load fills its own).
pub(super) fn load_program(ebpf: &mut Ebpf) -> Result<()> {
    let prog = super::load::xdp_program(ebpf, IPV6_PROGRAM)?;
    prog.load().map_err(|source| DatapathError::Program {
        program: IPV6_PROGRAM,
        source,
    })?;
    let fd = prog
        .fd()
        .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
        .map_err(|source| DatapathError::Program {
            program: IPV6_PROGRAM,
            source,
        })?;
    let map = ebpf.map_mut("PIPELINE6").ok_or(DatapathError::Missing {
        what: "map",
        name: "PIPELINE6",
    })?;
    let mut slots = ProgramArray::try_from(map).map_err(map_err("PIPELINE6"))?;
    slots.set(0, &fd, 0).map_err(map_err("PIPELINE6"))
}

/// The IPv6 prefilter bitmap of a set of addresses (`vip_addr_bit6`).
fn addr_bits6<'a>(keys: impl IntoIterator<Item = &'a VipAddrKey6>) -> Vec<u64> {
    let mut bits = vec![0; VIP_ADDR_BITMAP_WORDS as usize];
    for key in keys {
        let (word, mask) = vip_addr_bit6(&key.addr_be);
        bits[word as usize] |= mask;
    }
    bits
}

impl Datapath {
    /// Adds the plan's IPv6 VIP addresses (bits first), keeping the old
    /// ones: called by `apply` before the VIP keys.
    pub(super) fn add_addresses6(&mut self, plan: &Plan) -> Result<()> {
        let mut bits = addr_bits6(plan.addresses6.keys());
        for (i, word) in bits.iter_mut().enumerate() {
            *word |= self.written6.bits.get(i).copied().unwrap_or(0);
        }
        self.write_bits6(&bits)?;
        for (key, flags) in &plan.addresses6 {
            if self.written6.addrs.get(key) != Some(flags) {
                self.maps6
                    .addrs
                    .insert(key, flags, 0)
                    .map_err(map_err("VIP_ADDRS6"))?;
                self.written6.addrs.insert(*key, *flags);
            }
        }
        Ok(())
    }

    /// Removes the IPv6 VIP addresses the plan no longer has (bits last):
    /// called by `apply` after the VIP keys.
    pub(super) fn remove_addresses6(&mut self, plan: &Plan) -> Result<()> {
        let stale: Vec<VipAddrKey6> = self
            .written6
            .addrs
            .keys()
            .filter(|k| !plan.addresses6.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            self.maps6
                .addrs
                .remove(&key)
                .map_err(map_err("VIP_ADDRS6"))?;
            self.written6.addrs.remove(&key);
        }
        let bits = addr_bits6(self.written6.addrs.keys());
        self.write_bits6(&bits)
    }

    /// Forgets what `apply` wrote to the IPv6 address maps and takes what
    /// they hold instead (`resync`).
    pub(super) fn reread6(&mut self) -> Result<()> {
        let addrs = self
            .maps6
            .addrs
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err("VIP_ADDRS6"))?;
        let bits = (0..VIP_ADDR_BITMAP_WORDS)
            .map(|i| {
                self.maps6
                    .bits
                    .get(&i, 0)
                    .map_err(map_err("VIP_ADDR_BITS6"))
            })
            .collect::<Result<_>>()?;
        self.written6 = Written6 { addrs, bits };
        Ok(())
    }

    fn write_bits6(&mut self, bits: &[u64]) -> Result<()> {
        for (i, &word) in bits.iter().enumerate() {
            if self.written6.bits.get(i).copied().unwrap_or(0) != word {
                self.maps6
                    .bits
                    .set(i as u32, word, 0)
                    .map_err(map_err("VIP_ADDR_BITS6"))?;
                if self.written6.bits.len() <= i {
                    self.written6.bits.resize(i + 1, 0);
                }
                self.written6.bits[i] = word;
            }
        }
        Ok(())
    }

    /// The IPv6 flow table's entry of a flow, if any (tests).
    pub fn flow6(&self, key: &FlowKey6) -> Result<Option<Flow>> {
        match self.maps6.flows.get(key, 0) {
            Ok(flow) => Ok(Some(flow)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                map: "FLOWS6",
                source,
            }),
        }
    }

    /// Entries of the IPv6 flow table (tests; a full walk).
    pub fn flows6_len(&self) -> usize {
        self.maps6.flows.keys().filter(|k| k.is_ok()).count()
    }
}
