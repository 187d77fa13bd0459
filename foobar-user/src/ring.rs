//! Expands backend weights into a ring of backend slots for round-robin.
//! Weights interleave smoothly (nginx's smooth weighted round-robin): with
//! weights 5,1,1 the ring is `a a b a c a a`, not `a a a a a b c`, so a
//! burst of new flows spreads over every backend. Pure; no I/O.

/// One ring entry per unit of weight, after dividing the weights by their
/// greatest common divisor (1,1,1 gives a ring of 3, not 3 × weight).
/// Backends with weight 0 get no slot. `members` are (backend id, weight).
pub fn round_robin(members: &[(u32, u32)]) -> Vec<u32> {
    let divisor = members
        .iter()
        .map(|&(_, w)| w)
        .filter(|&w| w > 0)
        .fold(0, gcd);
    if divisor == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = members
        .iter()
        .map(|&(_, w)| i64::from(w / divisor))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; members.len()];
    let mut ring = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (cur, w) in current.iter_mut().zip(&weights) {
            *cur += w;
        }
        // The first maximum wins ties: the result is deterministic.
        let best = (0..members.len())
            .max_by(|&a, &b| current[a].cmp(&current[b]).then(b.cmp(&a)))
            .expect("total > 0 implies a member");
        current[best] -= total;
        ring.push(members[best].0);
    }
    ring
}

/// Length of the ring `round_robin` builds for these weights.
pub fn round_robin_len(weights: impl IntoIterator<Item = u32>) -> u64 {
    let weights: Vec<u32> = weights.into_iter().filter(|&w| w > 0).collect();
    let divisor = weights.iter().copied().fold(0, gcd);
    if divisor == 0 {
        return 0;
    }
    weights.iter().map(|&w| u64::from(w / divisor)).sum()
}

/// Weighted least-connections as ring weights: each backend's weight
/// divided by its active connections + 1, scaled so the best backend gets
/// 64 slots (fewer when many backends would overflow the ring) and every
/// member at least one. `members` are (backend id, weight, active flows).
pub fn least_conn_weights(members: &[(u32, u32, u32)]) -> Vec<(u32, u32)> {
    let share = |w: u32, active: u32| f64::from(w) / (f64::from(active) + 1.0);
    let best = members
        .iter()
        .map(|&(_, w, a)| share(w, a))
        .fold(0.0, f64::max);
    if best == 0.0 {
        return members.iter().map(|&(id, _, _)| (id, 0)).collect();
    }
    let n = members.iter().filter(|m| m.1 > 0).count().max(1) as u32;
    let top = (foobar_common::RING_CAPACITY / n).clamp(1, 64);
    members
        .iter()
        .map(|&(id, w, a)| {
            let eff = if w == 0 {
                0
            } else {
                ((f64::from(top) * share(w, a) / best).round() as u32).max(1)
            };
            (id, eff)
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(ring: &[u32], id: u32) -> usize {
        ring.iter().filter(|&&x| x == id).count()
    }

    #[test]
    fn equal_weights_give_one_slot_each_in_order() {
        assert_eq!(round_robin(&[(7, 1), (8, 1), (9, 1)]), vec![7, 8, 9]);
        assert_eq!(round_robin(&[(7, 4), (8, 4), (9, 4)]), vec![7, 8, 9]);
    }

    #[test]
    fn slots_are_proportional_to_weights() {
        let members = [(0, 6), (1, 3), (2, 2), (3, 1)];
        let ring = round_robin(&members);
        assert_eq!(ring.len() as u64, round_robin_len(members.map(|m| m.1)));
        for (id, w) in members {
            assert_eq!(count(&ring, id), w as usize, "backend {id}");
        }
    }

    #[test]
    fn heavy_backend_is_interleaved_not_blocked() {
        let ring = round_robin(&[(0, 5), (1, 1), (2, 1)]);
        assert_eq!(ring, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn every_prefix_stays_within_one_slot_of_the_weight_share() {
        let members = [(0, 13), (1, 7), (2, 3), (3, 1), (4, 29)];
        let ring = round_robin(&members);
        let total: u32 = members.iter().map(|m| m.1).sum();
        for k in 1..=ring.len() {
            for (id, w) in members {
                let ideal = k as f64 * f64::from(w) / f64::from(total);
                let got = count(&ring[..k], id) as f64;
                assert!(
                    (got - ideal).abs() < 1.0 + 1e-9,
                    "prefix {k}: backend {id} has {got}, ideal {ideal:.2}"
                );
            }
        }
    }

    #[test]
    fn least_connections_favours_the_idle_backend() {
        let w = least_conn_weights(&[(0, 1, 0), (1, 1, 9), (2, 2, 9)]);
        assert_eq!(w, vec![(0, 64), (1, 6), (2, 13)]);
        let ring = round_robin(&w);
        assert!(count(&ring, 0) > 4 * count(&ring, 1), "{w:?}");
        // Equal load: plain weights.
        let even = least_conn_weights(&[(0, 1, 3), (1, 1, 3)]);
        assert_eq!(round_robin(&even), vec![0, 1]);
        // Weight 0 stays out; everything at 0 is an empty ring.
        assert_eq!(
            least_conn_weights(&[(0, 0, 0), (1, 1, 0)]),
            vec![(0, 0), (1, 64)]
        );
        assert!(round_robin(&least_conn_weights(&[(0, 0, 5)])).is_empty());
    }

    #[test]
    fn zero_weight_backends_get_no_slot() {
        assert_eq!(round_robin(&[(0, 0), (1, 2), (2, 0)]), vec![1]);
        assert!(round_robin(&[(0, 0)]).is_empty());
        assert!(round_robin(&[]).is_empty());
        assert_eq!(round_robin_len([0, 0]), 0);
    }
}
