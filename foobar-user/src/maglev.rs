//! Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016), weighted. Pure: no I/O.
//!
//! Each backend's preference list is a permutation of the table's slots,
//! derived from its *address* (never from a node-local id) with SHA-256, and
//! backends fill the table in rounds in address order. So every LB node with
//! the same backends and table size builds the same table, whatever order
//! its config lists them in — the property that lets a fleet agree on a
//! flow's backend without sharing state.
//!
//! Weights: in every round a backend earns `weight` credits and claims one
//! slot per `max weight` credits, so its share of the table follows its
//! weight (a backend of weight 0 gets none).
use std::net::IpAddr;

use sha2::Digest as _;

/// The default table size: prime, and ~65 slots per backend at 1000.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// A backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// What the table holds for it (the node's backend id).
    pub id: u32,
    pub weight: u32,
    /// Its identity across LB nodes: the permutation is derived from it.
    pub address: IpAddr,
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// (offset, skip) of a backend's permutation in a table of `size` slots:
/// it visits `offset, offset + skip, offset + 2·skip, ... (mod size)`, every
/// slot exactly once when `size` is prime.
pub fn permutation(address: IpAddr, size: u32) -> (u32, u32) {
    // IPv4 hashes its 4 octets (tables built before IPv6 stay the same),
    // IPv6 its 16.
    let digest = match address {
        IpAddr::V4(a) => sha2::Sha256::digest(a.octets()),
        IpAddr::V6(a) => sha2::Sha256::digest(a.octets()),
    };
    let h1 = u64::from_le_bytes(digest[0..8].try_into().expect("8 bytes"));
    let h2 = u64::from_le_bytes(digest[8..16].try_into().expect("8 bytes"));
    let size = u64::from(size);
    ((h1 % size) as u32, (h2 % (size - 1) + 1) as u32)
}

/// Builds the table: `size` slots (prime), each holding a member's id.
/// Empty when no member has weight. Deterministic in the member set.
pub fn table(members: &[Member], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} must be prime");
    let mut members: Vec<Member> = members.iter().copied().filter(|m| m.weight > 0).collect();
    if members.is_empty() {
        return Vec::new();
    }
    members.sort_by_key(|m| m.address);
    let max_weight = members.iter().map(|m| m.weight).max().expect("non-empty");
    let size64 = u64::from(size);
    // Next slot each member would try, and its skip.
    let mut next: Vec<(u64, u64)> = members
        .iter()
        .map(|m| {
            let (offset, skip) = permutation(m.address, size);
            (u64::from(offset), u64::from(skip))
        })
        .collect();
    let mut credit = vec![0u32; members.len()];
    const EMPTY: u32 = u32::MAX;
    let mut slots = vec![EMPTY; size as usize];
    let mut filled = 0u32;
    loop {
        for (i, m) in members.iter().enumerate() {
            credit[i] += m.weight;
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                let (pos, skip) = &mut next[i];
                // skip < size, so one conditional subtraction is the modulo
                // (a 64-bit division per probe was most of the build time).
                let step = |p: &mut u64| {
                    *p += *skip;
                    if *p >= size64 {
                        *p -= size64;
                    }
                };
                // A permutation of a prime-sized table reaches an empty slot
                // within `size` steps while any is left.
                while slots[*pos as usize] != EMPTY {
                    step(pos);
                }
                slots[*pos as usize] = m.id;
                step(pos);
                filled += 1;
                if filled == size {
                    return slots;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn members(n: u32, weight: impl Fn(u32) -> u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: i,
                weight: weight(i),
                address: std::net::Ipv4Addr::from(0x0a00_0000 + i + 1).into(),
            })
            .collect()
    }

    fn counts(t: &[u32]) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for id in t {
            *c.entry(*id).or_default() += 1;
        }
        c
    }

    #[test]
    fn primes_are_recognised() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(!is_prime(65535));
    }

    #[test]
    fn each_permutation_visits_every_slot_once() {
        for size in [13u32, 251, 65537] {
            for m in members(20, |_| 1) {
                let (offset, skip) = permutation(m.address, size);
                assert!(offset < size && (1..size).contains(&skip));
                let mut seen = vec![false; size as usize];
                let mut pos = u64::from(offset);
                for _ in 0..size {
                    assert!(!seen[pos as usize], "slot {pos} twice");
                    seen[pos as usize] = true;
                    pos = (pos + u64::from(skip)) % u64::from(size);
                }
                assert!(seen.iter().all(|&s| s));
            }
        }
    }

    #[test]
    fn equal_weights_give_each_backend_its_share_within_one_percent() {
        for n in [3u32, 10, 100, 1000] {
            let t = table(&members(n, |_| 1), DEFAULT_TABLE_SIZE);
            assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
            let c = counts(&t);
            assert_eq!(c.len(), n as usize, "every backend has slots");
            let ideal = f64::from(DEFAULT_TABLE_SIZE) / f64::from(n);
            for (id, &k) in &c {
                let dev = (k as f64 - ideal).abs() / ideal;
                assert!(
                    dev <= 0.01,
                    "n={n}: backend {id} has {k} slots, ideal {ideal:.1}"
                );
            }
        }
    }

    #[test]
    fn weighted_shares_follow_the_weights() {
        for n in [3u32, 10, 100, 1000] {
            let weight = |i: u32| i % 3 + 1;
            let m = members(n, weight);
            let t = table(&m, DEFAULT_TABLE_SIZE);
            let c = counts(&t);
            let total: u32 = m.iter().map(|m| m.weight).sum();
            for mem in &m {
                let ideal =
                    f64::from(DEFAULT_TABLE_SIZE) * f64::from(mem.weight) / f64::from(total);
                let k = c[&mem.id] as f64;
                // Within 1% of its weight share; at 1000 backends a weight-1
                // backend owns ~33 slots, so one slot is already 3%: there
                // the bound is the table's granularity, two slots.
                let bound = if n >= 1000 { 2.0 } else { 0.01 * ideal };
                assert!(
                    (k - ideal).abs() <= bound,
                    "n={n}: backend {} (weight {}) has {k} slots, ideal {ideal:.1}",
                    mem.id,
                    mem.weight
                );
            }
        }
    }

    #[test]
    fn the_table_does_not_depend_on_member_order_or_ids_order() {
        let m = members(50, |i| i % 4 + 1);
        let mut reversed = m.clone();
        reversed.reverse();
        assert_eq!(table(&m, 4099), table(&reversed, 4099));
    }

    fn changed(a: &[u32], b: &[u32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn removing_or_adding_one_backend_moves_few_other_slots() {
        for n in [3u32, 10, 100, 1000] {
            let all = members(n + 1, |_| 1);
            let before = table(&all[..n as usize], DEFAULT_TABLE_SIZE);
            let after_add = table(&all, DEFAULT_TABLE_SIZE);
            let add = changed(&before, &after_add);
            assert!(
                add <= 1.0 / f64::from(n + 1) + 0.02,
                "n={n}: adding one remapped {add:.4}"
            );

            let without_first = table(&all[1..n as usize], DEFAULT_TABLE_SIZE);
            let remove = changed(&before, &without_first);
            assert!(
                remove <= 1.0 / f64::from(n) + 0.02,
                "n={n}: removing one remapped {remove:.4}"
            );
        }
    }

    #[test]
    fn weight_zero_backends_get_no_slot_and_none_at_all_is_empty() {
        let m = members(4, |i| u32::from(i != 2));
        let c = counts(&table(&m, 251));
        assert!(!c.contains_key(&2));
        assert_eq!(c.len(), 3);
        assert!(table(&members(3, |_| 0), 251).is_empty());
    }
}
