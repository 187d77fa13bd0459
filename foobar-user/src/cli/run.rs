//! `foobar run`: validate the config, restore runtime changes from the
//! state file (in /var/lib/foobar unless told otherwise), resolve backend MACs, load the datapath with its maps pinned
//! in bpffs — adopting the pinned maps and link of an earlier run on the
//! same interface, if any — reconcile and attach it, then serve the control
//! API, metrics and health checks until SIGINT or SIGTERM (SIGHUP reloads
//! the config, as `foobar reload`); then exit and leave the datapath
//! forwarding (`foobar detach` stops it). Every refusal happens before
//! anything is attached.
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    api, caps,
    config::{self, Config},
    daemon::{self, Owner, NEIGH_TIMEOUT},
    datapath::{Arm, AttachMode, Datapath, LoadOptions, PinDir, Stats, DEFAULT_PIN_ROOT},
    metrics, neigh, snat,
    state::{SavedVip, State},
    state_file,
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML; see examples/foobar.toml).
    #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Directory of the state file (runtime changes, kept as
    /// NAME.state.json for config NAME.toml; created 0700 if missing).
    /// Default: $STATE_DIRECTORY (set by systemd's StateDirectory=), else
    /// /var/lib/foobar. Example: --state-dir /var/lib/foobar
    #[arg(long, env = "FOOBAR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The state file itself, instead of DIR/NAME.state.json (wins over
    /// --state-dir). Its directory must be writable by root only.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// Interface to attach to; overrides `datapath.interface`.
    #[arg(long)]
    pub iface: Option<String>,
    /// Where XDP runs: native (driver) or skb (generic); overrides
    /// `datapath.xdp_mode`.
    #[arg(long, value_parser = ["native", "skb"])]
    pub xdp_mode: Option<String>,
    /// bpffs directory the datapath is pinned under, one subdirectory per
    /// interface (bpffs is mounted at /sys/fs/bpf first if absent).
    #[arg(long, env = "FOOBAR_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
}

/// `loaded`: the config file `args.config` as `config::load_with_text`
/// read it (once, by the caller, for the log settings).
pub fn run(
    args: RunArgs,
    loaded: Result<(Config, String), config::ConfigError>,
) -> anyhow::Result<()> {
    info!(
        version = crate::build_info::VERSION,
        revision = crate::build_info::REVISION,
        config = %args.config.display(),
        "foobar starting"
    );
    // The same entry point as `foobar check`: what one accepts, so does the other.
    let (mut config, text) = loaded?;
    let iface = args
        .iface
        .clone()
        .or_else(|| config.datapath.interface.clone())
        .context("no interface: give --iface IF or set datapath.interface in the config")?;
    let mode = match args.xdp_mode.as_deref() {
        Some("skb") => AttachMode::Skb,
        Some(_) => AttachMode::Native,
        None => config.datapath.xdp_mode,
    };
    check_capabilities(!config.vrrp.is_empty())?;
    let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
        .map_err(|_| anyhow::anyhow!("interface {iface} does not exist (see `ip link`)"))?;
    // Two-arm (docs/TOPOLOGY.md): the backend-side interface.
    let arm = match config.datapath.backend_interface.clone() {
        Some(name) => {
            let i = nix::net::if_::if_nametoindex(name.as_str()).map_err(|_| {
                anyhow::anyhow!(
                    "datapath.backend_interface: interface {name} does not exist (see `ip link`)"
                )
            })?;
            Some((i, name))
        }
        None => None,
    };
    let state_file = state_file_path(&args);
    prepare_state_dir(&state_file);
    info!(file = %state_file.display(), "state file");
    let digest = daemon::config_digest(&text);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // NAT VIPs without an SNAT address get the interface's primary one;
    // every SNAT address in use must be on the interface (the backend-side
    // one, two-arm: backends' replies come in there).
    let (snat_ifindex, snat_iface) = match &arm {
        Some((i, name)) => (*i, name.as_str()),
        None => (ifindex, iface.as_str()),
    };
    let addrs = runtime.block_on(snat::read(snat_ifindex, snat_iface))?;
    let invalid = |problems| config::ConfigError {
        file: args.config.clone(),
        problems,
    };
    snat::fill_default(&mut config, &addrs).map_err(|p| invalid(vec![p]))?;
    // Never fails: a bad state file is kept aside and the config used.
    let (saved, _) = state_file::restore(&config, &state_file, &digest);
    let problems = addrs.problems(&snat::uses(&config, &saved));
    if !problems.is_empty() {
        return Err(invalid(problems).into());
    }
    let pins = PinDir::new(&args.pin_root, &iface);
    let result = runtime.block_on(serve(
        config,
        args.config.clone(),
        saved,
        iface,
        ifindex,
        arm,
        mode,
        pins,
        state_file,
        digest,
    ));
    // A flow-table walk still running on a blocking thread holds nothing
    // but its own map handle: do not wait for it to finish.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    config: Config,
    config_path: PathBuf,
    saved: Vec<SavedVip>,
    iface: String,
    ifindex: u32,
    arm: Option<(u32, String)>,
    mode: AttachMode,
    pins: PinDir,
    state_file: PathBuf,
    digest: String,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Before anything slow: SIGHUP's default action would end the daemon.
    // Signals that arrive before the API serves wait in the stream.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    // Each backend on its VIP's VLAN (its MAC is looked up on the VLAN's
    // interface).
    let mut wanted: Vec<neigh::Wanted> = saved
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| (v.spec.vlan, b.address)))
        .collect();
    wanted.sort_by_key(|(v, a)| (*a, *v));
    wanted.dedup_by_key(|(_, a)| *a);
    // Backends still unresolved after NEIGH_TIMEOUT (or on a VLAN without
    // an interface here) start down; the daemon keeps resolving them in
    // the background.
    let arm_ifindex = arm.as_ref().map(|(i, _)| *i);
    let resolved = neigh::resolve(ifindex, arm_ifindex, &wanted, NEIGH_TIMEOUT).await?;
    let mut state = State::build_unresolved(&saved, &resolved.macs).with_context(|| {
        format!(
            "the saved runtime state in {} does not apply",
            state_file.display()
        )
    })?;
    for (address, egress) in &resolved.egress {
        state.set_egress(*address, Some(*egress));
    }
    let vlan_interfaces = resolved.vlan_interfaces;

    // Sockets first: a second daemon is refused before it touches the NIC.
    let api_listener = api::bind(&config.socket)?;
    let _socket = RemoveOnDrop(config.socket.clone());
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };

    let lb_mac = interface_mac(&iface)?;
    // ipip packets leave toward backends: two-arm, the smaller MTU of the
    // two interfaces bounds them.
    let mut mtu = interface_mtu(&iface)?;
    let arm_opts = match &arm {
        Some((i, name)) => {
            mtu = mtu.min(interface_mtu(name)?);
            Some(Arm {
                ifindex: *i,
                mac: interface_mac(name)?,
            })
        }
        None => None,
    };
    // Source affinity needs a table only if a VIP uses it.
    let affinity_table_size = config.datapath.affinity_table_size.unwrap_or(
        if state
            .vips()
            .iter()
            .any(|v| v.spec.affinity_timeout_s.is_some())
        {
            config.datapath.flow_table_size
        } else {
            1
        },
    );
    let had_pins = pins.exists();
    let datapath = Datapath::load_pinned(
        &LoadOptions {
            flow_table_size: config.datapath.flow_table_size,
            flow_table: config.datapath.flow_table,
            affinity_table_size,
            hash_seed: config.datapath.hash_seed,
            lb_mac,
            ipip_source: config.datapath.ipip_source,
            ipip_source6: config.datapath.ipip_source6,
            mtu,
            vmac_vrids: config
                .vrrp
                .iter()
                .filter(|v| v.use_vmac)
                .map(|v| v.vrid)
                .collect(),
            // The dnat reply check only when a VIP needs it (the pass path
            // skips it otherwise); `vip add`/`reload` of a dnat VIP without
            // it are refused with "restart".
            dnat_replies: state
                .vips()
                .iter()
                .any(|v| v.spec.forwarding == crate::config::Forwarding::Dnat),
            lb_ifindex: ifindex,
            arm: arm_opts,
        },
        pins.clone(),
    )
    .with_context(|| {
        format!(
            "loading the XDP programs (pinned in {})",
            pins.path().display()
        )
    })?;
    // Pins this start created are removed again if it fails before the
    // program is attached; adopted ones keep forwarding, untouched.
    let mut fresh_pins = RemovePinsOnDrop((!had_pins).then(|| pins.clone()));
    if datapath.adopted() {
        let content = datapath
            .read_back()
            .context("reading the adopted BPF maps back")?;
        let a = state.adopt(&content);
        info!(
            dir = %pins.path().display(),
            vips_kept = a.vips_kept,
            backends_kept = a.backends_kept,
            backends_new = a.backends_new,
            retired = a.retired,
            next_gen = a.next_gen,
            "adopting the pinned datapath: flows, affinity and counters kept"
        );
    }
    let mut owner = Owner::new(
        state,
        datapath,
        iface.clone(),
        ifindex,
        state_file,
        digest,
        std::time::Duration::from_millis(config.datapath.wlc_period_ms),
    );
    owner.set_retire_idle(config.datapath.retire_idle);
    owner.set_config(config_path, &config, affinity_table_size > 1);
    owner.vlan_interfaces = vlan_interfaces;
    owner.arm = arm.clone();
    owner.start()?;
    let took_over = owner.datapath.attach(&iface, mode)?;
    if let Some((_, name)) = &arm {
        owner
            .datapath
            .attach_arm(name, mode)
            .with_context(|| format!("attaching to datapath.backend_interface {name}"))?;
        info!(iface = %name, "two-arm: attached to the backend-side interface too");
    }
    fresh_pins.0 = None;
    if took_over {
        warn_if_link_mode_differs(ifindex, &iface, mode).await;
    }
    info!(
        iface = %iface,
        mode = mode.name(),
        vips = owner.state.vips().len(),
        pins = %pins.path().display(),
        link = if took_over { "adopted (program replaced in place)" } else { "new" },
        elapsed_ms = started.elapsed().as_millis() as u64,
        "attached; forwarding"
    );
    for v in owner.state.vips() {
        info!(
            vip = %v.spec.name,
            address = %v.spec.address,
            port = v.spec.port,
            protocol = v.spec.protocol.name(),
            backends = v.backends.len(),
            "serving"
        );
    }

    // Requests reach the owner through a relay that tells systemd when a
    // reload (API or SIGHUP) starts and ends.
    let (owner_tx, api_rx) = mpsc::channel(16);
    let (api_tx, relay_rx) = mpsc::channel(16);
    let relay_task = tokio::spawn(notify_reloads(relay_rx, owner_tx));
    let (metrics_tx, metrics_rx) = mpsc::channel(4);
    let reload_task = tokio::spawn(reload_on_sighup(hangup, api_tx.clone()));
    let api_task = tokio::spawn(api::serve(api_listener, api_tx));
    info!(socket = %config.socket.display(), "control API listening");
    let metrics_task = metrics_listener.map(|l| {
        info!(listen = ?config.metrics_listen, "metrics listening on /metrics");
        tokio::spawn(metrics::serve(l, metrics_tx))
    });

    // Only now, forwarding: a node never holds a VIP it cannot serve.
    owner.start_vrrp(config.vrrp.iter().map(|v| v.spec(&iface)).collect());

    // Type=notify: the unit is started only now that the program is
    // attached, the maps written and the control socket answers.
    let status = format!(
        "forwarding on {iface} ({} mode), {} VIPs",
        mode.name(),
        owner.state.vips().len()
    );
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);

    let signal = owner
        .run(api_rx, metrics_rx, async {
            wait_for_shutdown().await.unwrap_or("signal handler failed")
        })
        .await;
    info!(signal, "shutting down");
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping; the XDP program stays attached"),
    ]);
    // The peer takes over after its Skew_Time, not Master_Down_Interval.
    owner.stop_vrrp(std::time::Duration::from_secs(2)).await;
    api_task.abort();
    reload_task.abort();
    relay_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    owner.stop();
    // The state (health included) is on disk already; the pinned link and
    // maps keep forwarding until the next start adopts them.
    info!(
        iface = %iface,
        pins = %pins.path().display(),
        "exiting; the XDP program stays attached and keeps forwarding with the last maps \
         (a restart adopts them; `foobar detach` stops forwarding)"
    );
    let stats = owner.read_stats().map_err(anyhow::Error::msg)?;
    print!("{}", render_stats(&owner.state, &stats));
    Ok(())
}

/// Where runtime state lives when neither --state-dir nor --state-file is
/// given and systemd sets no $STATE_DIRECTORY.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/foobar";

/// --state-file, else NAME.state.json in --state-dir, $STATE_DIRECTORY (its
/// first entry) or DEFAULT_STATE_DIR.
fn state_file_path(args: &RunArgs) -> PathBuf {
    if let Some(file) = &args.state_file {
        return file.clone();
    }
    let dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| {
                v.to_str()
                    .and_then(|s| s.split(':').next())
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    });
    daemon::state_file_for(&dir, &args.config)
}

/// Creates the state file's directory (0700, root's) when it is missing, as
/// systemd's StateDirectory= does; a failure is logged, never fatal: the
/// daemon serves and says at every change that it is not kept.
fn prepare_state_dir(state_file: &std::path::Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    let Some(dir) = state_file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    if dir.exists() {
        return;
    }
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => info!(dir = %dir.display(), "created the state directory"),
        Err(err) => warn!(dir = %dir.display(), %err, "cannot create the state directory"),
    }
}

/// The interface's own MAC: the only destination the datapath serves and
/// the source of every frame it sends. Asked of the kernel through
/// getifaddrs, not sysfs: under `nsenter --net` /sys still shows the
/// namespace that mounted it.
/// The interface's MTU (`ipip` packets that would exceed it once
/// encapsulated are answered with frag-needed or dropped), from the
/// SIOCGIFMTU ioctl: it answers for this process's network namespace,
/// where /sys/class/net may be another namespace's (after `nsenter --net`).
fn interface_mtu(iface: &str) -> anyhow::Result<u32> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        anyhow::bail!("interface name {iface:?} is too long");
    }
    for (dst, &b) in req.ifr_name.iter_mut().zip(name) {
        *dst = b as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("a socket to read the MTU of {iface}"));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifru_mtu of `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the MTU of {iface} (SIOCGIFMTU)"));
    }
    // SAFETY: the ioctl filled the union's MTU member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).with_context(|| format!("{iface} reports MTU {mtu}"))
}

fn interface_mac(iface: &str) -> anyhow::Result<[u8; 6]> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing the interfaces (getifaddrs)")?;
    for ifa in addrs {
        if ifa.interface_name != iface {
            continue;
        }
        if let Some(mac) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_link_addr())
            .and_then(|l| l.addr())
        {
            return Ok(mac);
        }
    }
    bail!("interface {iface} has no Ethernet MAC address (see `ip link show dev {iface}`)")
}

/// Removes pins a failed start created (None: nothing to remove).
struct RemovePinsOnDrop(Option<PinDir>);

impl Drop for RemovePinsOnDrop {
    fn drop(&mut self) {
        if let Some(pins) = self.0.take() {
            if let Err(err) = pins.remove() {
                warn!(%err, "removing the pins of a failed start");
            }
        }
    }
}

/// Removes the control socket however `serve` ends, errors included (and
/// only a socket: whatever else is at the path is not ours).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        use std::os::unix::fs::FileTypeExt as _;
        if std::fs::symlink_metadata(&self.0).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Refuses to start without the capabilities the datapath needs (see
/// `caps::missing_for_run`), naming the missing ones.
fn check_capabilities(vrrp: bool) -> anyhow::Result<()> {
    let have = caps::CapSet::effective()
        .context("reading this process's capabilities (/proc/self/status)")?;
    let missing = caps::missing_for_run(have, vrrp);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|c| c.1).collect();
    bail!(
        "foobar run needs root or the capabilities CAP_SYS_ADMIN and CAP_NET_ADMIN{} \
         (to load XDP programs, find their maps and attach them); missing: {}. Run it with \
         sudo, or as the systemd unit (examples/foobar.service grants these)",
        if vrrp {
            ", plus CAP_NET_RAW for VRRP"
        } else {
            ""
        },
        names.join(", ")
    )
}

/// Tells the service manager (`$NOTIFY_SOCKET`; nothing when unset, as
/// outside systemd) about a state change. A failure is logged only.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        warn!(%err, "cannot notify systemd ($NOTIFY_SOCKET)");
    }
}

/// Passes control requests on to the owner; around each reload, tells
/// systemd RELOADING=1 (with the monotonic time systemd ≥ 253 wants) and
/// READY=1 when it is answered, whatever the answer.
async fn notify_reloads(mut rx: mpsc::Receiver<api::Call>, owner: mpsc::Sender<api::Call>) {
    while let Some((request, caller, reply)) = rx.recv().await {
        if !matches!(request, api::Request::Reload) {
            if owner.send((request, caller, reply)).await.is_err() {
                return;
            }
            continue;
        }
        let mut states = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        notify(&states);
        let (tx, answer) = tokio::sync::oneshot::channel();
        if owner.send((request, caller, tx)).await.is_err() {
            return;
        }
        // Later requests wait behind the reload, as they do at the owner.
        if let Ok(response) = answer.await {
            let _ = reply.send(response);
        }
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("forwarding; config reloaded"),
        ]);
    }
}

/// SIGHUP is `foobar reload`: the same request, through the same queue,
/// answered into the log (the daemon logs every change and refusal).
async fn reload_on_sighup(mut hup: tokio::signal::unix::Signal, api_tx: mpsc::Sender<api::Call>) {
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the config");
        let (tx, rx) = tokio::sync::oneshot::channel();
        if api_tx
            .send((api::Request::Reload, api::Caller::Sighup, tx))
            .await
            .is_err()
        {
            return;
        }
        // The owner logs the outcome; wait for it so reloads never overlap.
        let _ = rx.await;
    }
}

async fn wait_for_shutdown() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// The counters as a plain table (the line formats are parsed by the demo
/// and the tests: `reason NAME PACKETS BYTES`, `vip NAME ...`,
/// `backend VIP ADDRESS ...`).
pub fn render_stats(state: &State, stats: &Stats) -> String {
    let mut out = String::from("final counters (packets bytes):\n");
    for (name, c) in &stats.reasons {
        out.push_str(&format!("reason {name} {} {}\n", c.packets, c.bytes));
    }
    for (name, n) in &stats.events {
        out.push_str(&format!("event {name} {n}\n"));
    }
    for v in state.vips() {
        let c = stats.vip(v.id);
        out.push_str(&format!("vip {} {} {}\n", v.spec.name, c.packets, c.bytes));
        for b in &v.backends {
            let c = stats.backend(b.id);
            out.push_str(&format!(
                "backend {} {} {} {}\n",
                v.spec.name, b.spec.address, c.packets, c.bytes
            ));
        }
    }
    out
}

/// An adopted link keeps the XDP mode it was attached in (BPF_LINK_UPDATE
/// swaps only the program): when that is not the configured mode, say so
/// and what to do. Reads the interface's attach mode over netlink; a
/// failed look is logged and changes nothing.
async fn warn_if_link_mode_differs(ifindex: u32, iface: &str, configured: AttachMode) {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};
    let attached = async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let conn = tokio::spawn(conn);
        let msg = handle
            .link()
            .get()
            .match_index(ifindex)
            .execute()
            .try_next()
            .await;
        conn.abort();
        let mode = msg?
            .into_iter()
            .flat_map(|m| m.attributes)
            .find_map(|a| match a {
                LinkAttribute::Xdp(xdp) => xdp.into_iter().find_map(|x| match x {
                    LinkXdp::Attached(XdpAttached::Driver) => Some(AttachMode::Native),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(AttachMode::Skb),
                    _ => None,
                }),
                _ => None,
            });
        anyhow::Ok(mode)
    };
    match attached.await {
        Ok(Some(pinned)) if pinned != configured => warn!(
            iface,
            pinned = pinned.name(),
            configured = configured.name(),
            "the adopted XDP link keeps its mode: it runs in {} mode, not the configured {}; \
             to change it, stop the daemon, run `foobar detach` (established flows are \
             rescheduled), then start it again",
            pinned.name(),
            configured.name()
        ),
        Ok(_) => {}
        Err(err) => warn!(iface, %err, "cannot read the adopted XDP link's mode"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let cli = crate::cli::Cli::try_parse_from(
            ["foobar", "run", "--config", "/etc/foobar/lb1.toml"]
                .iter()
                .chain(extra),
        )
        .unwrap();
        match cli.command {
            crate::cli::Command::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_state_file_is_named_after_the_config_in_the_state_dir() {
        // FOOBAR_STATE_DIR / STATE_DIRECTORY from the test's environment
        // would change the default: only the explicit forms are checked
        // when they are set.
        if std::env::var_os("FOOBAR_STATE_DIR").is_none()
            && std::env::var_os("STATE_DIRECTORY").is_none()
        {
            assert_eq!(
                state_file_path(&args(&[])),
                PathBuf::from("/var/lib/foobar/lb1.state.json")
            );
        }
        assert_eq!(
            state_file_path(&args(&["--state-dir", "/srv/lb"])),
            PathBuf::from("/srv/lb/lb1.state.json")
        );
        assert_eq!(
            state_file_path(&args(&[
                "--state-dir",
                "/srv/lb",
                "--state-file",
                "/x/s.json"
            ])),
            PathBuf::from("/x/s.json")
        );
    }
}
