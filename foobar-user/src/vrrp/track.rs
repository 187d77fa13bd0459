//! Tracking: what this node knows about its own ability to serve, turned
//! into the priority its VRRP instances advertise (keepalived's weighted
//! track scripts, built in). The daemon publishes `Conditions`; each
//! instance computes its effective priority with `effective`, a pure
//! function. It never decides a transition: the state machine does, from
//! the priority it is given.
use std::collections::BTreeSet;

/// What the daemon currently knows about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// The XDP program is not on the datapath's interface: this node
    /// cannot forward for any VIP.
    pub detached: bool,
    /// `[[vip]]` names with no backend that is up, resolved and enabled
    /// (all down, unresolved or drained).
    pub without_backend: BTreeSet<String>,
}

/// How much each condition takes off an instance's priority (0: not
/// tracked). Configured as negative weights (`track_detached = -100`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weights {
    pub detached: u8,
    pub no_backend: u8,
}

/// The effective priority of an instance configured with `configured`,
/// holding the VIPs named `vips`, and why it differs (one sentence per
/// condition that applies). Never below 1: 0 means "resigning" on the
/// wire. Validation refuses tracking on an address owner (255), whose
/// priority RFC 5798 fixes.
pub fn effective(
    configured: u8,
    weights: Weights,
    vips: &[String],
    conditions: &Conditions,
) -> (u8, Vec<String>) {
    let mut priority = configured;
    let mut why = Vec::new();
    if weights.detached > 0 && conditions.detached {
        priority = priority.saturating_sub(weights.detached);
        why.push(format!(
            "the datapath is not attached (-{})",
            weights.detached
        ));
    }
    if weights.no_backend > 0 {
        let empty: Vec<&str> = vips
            .iter()
            .filter(|v| conditions.without_backend.contains(*v))
            .map(String::as_str)
            .collect();
        if !empty.is_empty() {
            priority = priority.saturating_sub(weights.no_backend);
            why.push(format!(
                "no healthy backend for {} (-{})",
                empty.join(", "),
                weights.no_backend
            ));
        }
    }
    (priority.max(1), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn each_condition_takes_its_weight_once() {
        let w = Weights {
            detached: 100,
            no_backend: 50,
        };
        let vips = names(&["web", "dns"]);
        let mut c = Conditions::default();
        assert_eq!(effective(150, w, &vips, &c), (150, vec![]));
        // A VIP this instance does not hold changes nothing.
        c.without_backend.insert("mail".into());
        assert_eq!(effective(150, w, &vips, &c).0, 150);
        // Two empty VIPs cost the weight once, as one condition.
        c.without_backend.insert("web".into());
        c.without_backend.insert("dns".into());
        let (p, why) = effective(150, w, &vips, &c);
        assert_eq!(p, 100);
        assert_eq!(why, vec!["no healthy backend for web, dns (-50)"]);
        c.detached = true;
        let (p, why) = effective(150, w, &vips, &c);
        assert_eq!(p, 1, "150 - 100 - 50 = 0, kept at 1 (0 means resigning)");
        assert_eq!(why.len(), 2);
        assert_eq!(why[0], "the datapath is not attached (-100)");
    }

    #[test]
    fn untracked_conditions_change_nothing() {
        let c = Conditions {
            detached: true,
            without_backend: ["web".to_owned()].into(),
        };
        assert_eq!(
            effective(200, Weights::default(), &names(&["web"]), &c),
            (200, vec![])
        );
        let only_detached = Weights {
            detached: 10,
            no_backend: 0,
        };
        assert_eq!(effective(200, only_detached, &names(&["web"]), &c).0, 190);
    }
}
