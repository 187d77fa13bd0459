//! `foobar detach`: stop forwarding for good. Removes the pinned XDP link
//! and maps of an interface (see `datapath::pin`): the program detaches,
//! flows, affinity and counters are gone, and the next `foobar run` starts
//! afresh. `foobar run` exiting (SIGTERM, crash) leaves them pinned, so a
//! restart is hitless; this is the explicit way out. Refused while a daemon
//! answers on the control socket: it holds the link open, so it would keep
//! forwarding with maps nobody could adopt — stop it first.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::{
    config,
    datapath::{PinDir, DEFAULT_PIN_ROOT},
};

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Interface to detach; default: `datapath.interface` of the config.
    #[arg(long)]
    pub iface: Option<String>,
    /// Config file (read for the interface and the control socket).
    #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// bpffs directory the datapath is pinned under (as `foobar run`'s).
    #[arg(long, env = "FOOBAR_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
}

pub fn detach(socket: &Path, args: DetachArgs) -> anyhow::Result<()> {
    // The capabilities `foobar run` needs (the pins are opened and removed
    // on bpffs, the XDP link detached), not root as such: the systemd
    // unit's ExecStopPost or an operator's shell with the unit's set work.
    let have = crate::caps::CapSet::effective()
        .context("reading this process's capabilities (/proc/self/status)")?;
    let missing = crate::caps::missing_for_run(have, false);
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|c| c.1).collect();
        bail!(
            "foobar detach needs root or the capabilities CAP_SYS_ADMIN and CAP_NET_ADMIN \
             (to open and remove the BPF pins and detach the XDP link); missing: {}. Run it \
             with sudo",
            names.join(", ")
        );
    }
    let mut sockets = vec![socket.to_owned()];
    let iface = match args.iface {
        Some(i) => i,
        None => {
            let config = config::load(&args.config)?;
            sockets.push(config.socket.clone());
            config.datapath.interface.with_context(|| {
                format!(
                    "no interface: give --iface IF or set datapath.interface in {}",
                    args.config.display()
                )
            })?
        }
    };
    if let Some(live) = sockets
        .iter()
        .find(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
    {
        bail!(
            "a foobar daemon is running (it answers on {}); it holds the XDP link open, so \
             detaching now would not stop forwarding. Stop it first (`systemctl stop foobar` \
             or SIGTERM: forwarding goes on without it), then run `foobar detach` again",
            live.display()
        );
    }
    let pins = PinDir::new(&args.pin_root, &iface);
    // A daemon with another control socket still holds the pins' lock.
    if pins.exists() && pins.try_lock()?.is_none() {
        bail!(
            "a foobar daemon serves {} (it holds its lock): stop it first, then run \
             `foobar detach` again",
            pins.path().display()
        );
    }
    if pins
        .remove()
        .with_context(|| format!("removing the pins in {}", pins.path().display()))?
    {
        println!(
            "detached: {iface} no longer forwards; removed {}",
            pins.path().display()
        );
    } else {
        println!(
            "nothing pinned for {iface} in {}: nothing to detach",
            pins.path().display()
        );
    }
    Ok(())
}
