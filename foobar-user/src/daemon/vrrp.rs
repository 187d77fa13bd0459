//! Where VRRP plugs into the daemon: the instances start after the attach
//! and follow the tracked conditions, which the owner republishes after
//! every event (backend health, drains, VIP changes) and a small task
//! keeps for the attachment. Nothing here decides a transition.
use std::{sync::Arc, time::Duration};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Owner;
use crate::{
    state::{Admin, State},
    vrrp::{
        task::{Running, Spec},
        track::Conditions,
    },
};

/// How often the attach watcher looks at the interface.
pub const ATTACH_POLL: Duration = Duration::from_secs(1);

impl Owner {
    /// Starts one VRRP task per instance, and the attach watcher when an
    /// instance tracks the attachment.
    pub fn start_vrrp(&mut self, specs: Vec<Spec>) {
        for s in &specs {
            info!(
                vrid = s.vrid,
                iface = %s.iface,
                priority = s.priority,
                advert_interval_ms = u64::from(s.advert_interval_cs) * 10,
                preempt = s.preempt,
                vips = ?s.vip_names,
                track_no_backend = -i16::from(s.track.no_backend),
                track_detached = -i16::from(s.track.detached),
                unicast_peers = ?s.unicast_peers,
                use_vmac = s.use_vmac,
                "VRRP instance starting"
            );
        }
        let conditions = Arc::new(watch::Sender::new(Conditions {
            detached: false,
            without_backend: without_backend(&self.state),
        }));
        if specs.iter().any(|s| s.track.detached > 0) {
            let tx = conditions.clone();
            let (ifindex, iface) = (self.ifindex, self.iface.clone());
            self.attach_watch = Some(tokio::spawn(watch_attached(ifindex, iface, tx)));
        }
        self.vrrp = Some(Running::spawn(specs, &conditions.subscribe()));
        self.vrrp_conditions = Some(conditions);
    }

    /// Republishes the VIPs without a usable backend (a no-op for the
    /// instances unless the set changed).
    pub(super) fn publish_tracking(&self) {
        if let Some(c) = &self.vrrp_conditions {
            let now = without_backend(&self.state);
            c.send_if_modified(|c| {
                let changed = c.without_backend != now;
                c.without_backend = now;
                changed
            });
        }
    }

    /// Resigns every instance (priority 0, VIPs removed), waiting at most
    /// `limit`, and stops the attach watcher.
    pub async fn stop_vrrp(&mut self, limit: Duration) {
        if let Some(t) = self.attach_watch.take() {
            t.abort();
        }
        if let Some(vrrp) = self.vrrp.take() {
            vrrp.stop(limit).await;
        }
    }
}

/// `[[vip]]` names none of whose backends is up, resolved and enabled.
pub(super) fn without_backend(state: &State) -> std::collections::BTreeSet<String> {
    state
        .vips()
        .iter()
        .filter(|v| {
            !v.backends
                .iter()
                .any(|b| b.up && b.mac.is_some() && b.spec.admin == Admin::Enabled)
        })
        .map(|v| v.spec.name.clone())
        .collect()
}

/// Whether an XDP program is attached to the interface, by netlink (the
/// daemon's link keeps any other program off it, so a program there is
/// ours). None: the question could not be asked.
async fn xdp_attached(handle: &rtnetlink::Handle, ifindex: u32) -> Option<bool> {
    let msg = handle
        .link()
        .get()
        .match_index(ifindex)
        .execute()
        .try_next()
        .await;
    let msg = match msg {
        Ok(Some(m)) => m,
        // The interface is gone: nothing is attached.
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => return Some(false),
        Err(_) => return None,
    };
    Some(msg.attributes.iter().any(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().any(|x| {
            matches!(
                x,
                LinkXdp::Attached(
                    XdpAttached::Driver
                        | XdpAttached::SocketBuffer
                        | XdpAttached::Hardware
                        | XdpAttached::Multiple
                )
            )
        }),
        _ => false,
    }))
}

/// Polls the attachment every ATTACH_POLL and publishes it.
async fn watch_attached(ifindex: u32, iface: String, conditions: Arc<watch::Sender<Conditions>>) {
    let (conn, handle, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            warn!(%iface, %e, "cannot watch the XDP attachment (netlink): track_detached stays inactive");
            return;
        }
    };
    let conn = tokio::spawn(conn);
    let mut tick = tokio::time::interval(ATTACH_POLL);
    loop {
        tick.tick().await;
        let Some(attached) = xdp_attached(&handle, ifindex).await else {
            continue;
        };
        conditions.send_if_modified(|c| {
            if c.detached != attached {
                return false;
            }
            c.detached = !attached;
            if attached {
                tracing::info!(%iface, "the XDP program is attached again");
            } else {
                warn!(%iface, "the XDP program is no longer attached: this node cannot forward");
            }
            true
        });
        if conn.is_finished() {
            warn!(%iface, "the netlink connection ended: track_detached stays as it is");
            return;
        }
    }
}
