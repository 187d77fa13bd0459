//! VIP churn between the fuzzer's frames: VIPs removed and re-added (under
//! their old id or another one), ids moved and swapped between VIPs,
//! exact-port VIPs shadowing a port-0 VIP for their port and going away
//! again, services changed in place (scheduler, affinity, forwarding
//! mode), a VIP moved to another VLAN. Flows
//! made before a change meet it on their next frames, which is where the
//! datapath's flow-first path (a flow entry trusted while its VIP's
//! generation is unchanged) would part from the reference model if
//! userspace missed a generation bump. Pure: it only makes plans.
use std::collections::{BTreeSet, HashMap};

use foobar::plan::{Plan, PlannedVip};
use foobar_common::{
    NatVip, VipAddrKey, VipKey, ADDR_PASS_CLOSED_PORTS, ADDR_SNAT, ADDR_SNAT_ONLY, FWD_DNAT,
    FWD_DSR, FWD_IPIP, FWD_NAT, SCHED_MAGLEV, SCHED_RR, SERVICE_AFFINITY,
};

use super::Rng;

/// Ids the churn hands out: few, so removed VIPs' ids are reused often.
const CHURN_IDS: u32 = 14;

/// Exact-port VIPs that shadow a port-0 VIP of the fuzz config for a port
/// the frames aim at: (name, address, protocol, port).
const SHADOWS: &[(&str, [u8; 4], u8, u16)] = &[
    ("shadow-smtp", [192, 0, 2, 20], 6, 25),
    ("shadow-mdns", [192, 0, 2, 20], 17, 5353),
];

/// The plan after one random change to `current`; `base` is the aged
/// plan every VIP and backend comes from.
pub fn churn(base: &Plan, current: &Plan, rng: &mut Rng) -> Plan {
    let mut vips = current.vips.clone();
    match rng.below(6) {
        0 => toggle_base_vip(base, &mut vips, rng),
        1 => move_id(&mut vips, rng),
        2 => swap_ids(&mut vips, rng),
        3 => toggle_shadow(base, &mut vips, rng),
        4 => change_service(&mut vips, rng),
        _ => move_vlan(&mut vips, rng),
    }
    plan_of(base, vips)
}

/// Removes a VIP of the base plan, or puts a missing one back (under its
/// base id if that is free, else another free id).
fn toggle_base_vip(base: &Plan, vips: &mut Vec<PlannedVip>, rng: &mut Rng) {
    let v = rng.pick(&base.vips).clone();
    if let Some(i) = vips.iter().position(|x| x.name == v.name) {
        vips.remove(i);
        return;
    }
    let mut v = v;
    if vips.iter().any(|x| x.service.vip_id == v.service.vip_id) {
        match free_id(vips, rng) {
            Some(id) => v.service.vip_id = id,
            None => return,
        }
    }
    // The base key may be taken by a shadow VIP: the shadow goes.
    vips.retain(|x| x.key != v.key);
    vips.push(v);
}

/// A VIP keeps its key and service but takes another (free) id.
fn move_id(vips: &mut [PlannedVip], rng: &mut Rng) {
    if vips.is_empty() {
        return;
    }
    let Some(id) = free_id(vips, rng) else { return };
    let i = rng.below(vips.len() as u64) as usize;
    vips[i].service.vip_id = id;
}

/// Two VIPs exchange their ids.
fn swap_ids(vips: &mut [PlannedVip], rng: &mut Rng) {
    if vips.len() < 2 {
        return;
    }
    let a = rng.below(vips.len() as u64) as usize;
    let b = rng.below(vips.len() as u64) as usize;
    let (ia, ib) = (vips[a].service.vip_id, vips[b].service.vip_id);
    vips[a].service.vip_id = ib;
    vips[b].service.vip_id = ia;
}

/// Adds or removes an exact-port VIP on a port-0 VIP's address, with the
/// ring of a VIP of the base plan.
fn toggle_shadow(base: &Plan, vips: &mut Vec<PlannedVip>, rng: &mut Rng) {
    let &(name, addr, proto, port) = rng.pick(SHADOWS);
    if let Some(i) = vips.iter().position(|x| x.name == name) {
        vips.remove(i);
        return;
    }
    let key = VipKey {
        addr_be: [u32::from_ne_bytes(addr), 0, 0, 0],
        port_be: port.to_be(),
        proto,
        family: foobar_common::AF_INET,
        vlan: 0,
        _pad: 0,
    };
    if vips.iter().any(|x| x.key == key) {
        return;
    }
    let Some(id) = free_id(vips, rng) else { return };
    let like = rng.pick(&base.vips).clone();
    let mut service = like.service;
    service.vip_id = id;
    vips.push(PlannedVip {
        name: name.to_owned(),
        key,
        service,
        backend_ids: like.backend_ids,
        ring: like.ring,
    });
}

/// Changes a VIP's service in place: scheduler, source affinity or
/// forwarding mode (a VIP that becomes `nat` gets its base NAT settings,
/// or those of the node's SNAT address; one that becomes `dnat` its own
/// dnat settings or a dnat VIP's timeouts; replies from backends outside
/// the base plan's dnat source set pass, on both sides).
fn change_service(vips: &mut [PlannedVip], rng: &mut Rng) {
    if vips.is_empty() {
        return;
    }
    let i = rng.below(vips.len() as u64) as usize;
    let s = &mut vips[i].service;
    if rng.chance(40) {
        let others: Vec<u8> = [FWD_DSR, FWD_NAT, FWD_IPIP, FWD_DNAT]
            .into_iter()
            .filter(|&m| m != s.forward_mode)
            .collect();
        s.forward_mode = *rng.pick(&others);
    } else if rng.chance(50) {
        s.scheduler = if s.scheduler == SCHED_MAGLEV {
            SCHED_RR
        } else {
            SCHED_MAGLEV
        };
    } else {
        s.flags ^= SERVICE_AFFINITY;
        s.affinity_timeout_s = if s.flags & SERVICE_AFFINITY != 0 {
            3600
        } else {
            0
        };
    }
}

/// Moves a VIP to another VLAN the frames use (0, 100 or 200), if no VIP
/// holds its key there.
fn move_vlan(vips: &mut [PlannedVip], rng: &mut Rng) {
    if vips.is_empty() {
        return;
    }
    let i = rng.below(vips.len() as u64) as usize;
    let vlan = *rng.pick(&[0u16, 100, 200]);
    let key = VipKey {
        vlan,
        ..vips[i].key
    };
    if !vips.iter().any(|x| x.key == key) {
        vips[i].key = key;
    }
}

/// A random id below CHURN_IDS that no VIP of `vips` holds.
fn free_id(vips: &[PlannedVip], rng: &mut Rng) -> Option<u32> {
    let used: BTreeSet<u32> = vips.iter().map(|v| v.service.vip_id).collect();
    let free: Vec<u32> = (0..CHURN_IDS).filter(|i| !used.contains(i)).collect();
    (!free.is_empty()).then(|| *rng.pick(&free))
}

/// A plan of `vips` with the base plan's backends and backend ports, and
/// the addresses of `vips`, each with the closed-port flag its VIP's
/// address has in the base plan (the flags of the untagged address for a
/// VIP the base plan lacks); NAT settings for the `nat` VIPs under their
/// current ids (the base ones of the VIP's name, else those of the node's
/// SNAT address) and their SNAT addresses, as `State::plan` makes them.
fn plan_of(base: &Plan, vips: Vec<PlannedVip>) -> Plan {
    let mut addresses = HashMap::new();
    let mut nat_vips = std::collections::BTreeMap::new();
    let node_snat = u32::from_ne_bytes([10, 0, 0, 1]);
    let fallback: Option<NatVip> = base
        .nat_vips
        .values()
        .find(|c| c.snat_addr_be == node_snat)
        .copied();
    // A dnat VIP's settings: timeouts, no SNAT address.
    let dnat_fallback: Option<NatVip> = base
        .nat_vips
        .values()
        .find(|c| c.snat_addr_be == 0)
        .copied();
    for v in &vips {
        let dnat = match v.service.forward_mode {
            FWD_NAT => false,
            FWD_DNAT => true,
            _ => continue,
        };
        // Its own base settings if they are of its mode (a dnat VIP's
        // have no SNAT address), else the node's of that mode.
        let own = base
            .vips
            .iter()
            .find(|b| b.name == v.name)
            .and_then(|b| base.nat_vips.get(&b.service.vip_id))
            .copied()
            .filter(|c| (c.snat_addr_be == 0) == dnat);
        if let Some(cfg) = own.or(if dnat { dnat_fallback } else { fallback }) {
            nat_vips.insert(v.service.vip_id, cfg);
        }
    }
    for v in &vips {
        let base_vlan = base
            .vips
            .iter()
            .find(|b| b.name == v.name)
            .map_or(0, |b| b.key.vlan);
        let flags = base
            .addresses
            .get(&VipAddrKey {
                addr_be: v.key.addr_be[0],
                vlan: base_vlan,
                _pad: 0,
            })
            .copied()
            .unwrap_or(0)
            & ADDR_PASS_CLOSED_PORTS;
        let key = VipAddrKey {
            addr_be: v.key.addr_be[0],
            vlan: v.key.vlan,
            _pad: 0,
        };
        *addresses.entry(key).or_insert(0) |= flags;
    }
    for v in &vips {
        // A dnat VIP's settings name no SNAT address.
        let Some(cfg) = nat_vips
            .get(&v.service.vip_id)
            .filter(|c| c.snat_addr_be != 0)
        else {
            continue;
        };
        let key = VipAddrKey {
            addr_be: cfg.snat_addr_be,
            vlan: v.key.vlan,
            _pad: 0,
        };
        *addresses.entry(key).or_insert(ADDR_SNAT_ONLY) |= ADDR_SNAT;
    }
    Plan {
        vips,
        backends: base.backends.clone(),
        addresses,
        addresses6: base.addresses6.clone(),
        nat_vips,
        backend_ports: base.backend_ports.clone(),
        dnat_sources: base.dnat_sources.clone(),
    }
}
