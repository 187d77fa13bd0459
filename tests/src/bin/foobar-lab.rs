//! Runs foobar in the netns lab for a person: `demo` (what `cargo xtask
//! demo` runs) and `up` (a lab to explore until Ctrl-C). Ctrl-C or SIGTERM
//! removes the lab on the way out.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use foobar_tests::lab::{self, Lab, LabOptions, LB_IFACE, VIP};

#[derive(Parser)]
#[command(about = "foobar in a network-namespace lab")]
struct Cli {
    /// The foobar binary (default: next to this one).
    #[arg(long, global = true)]
    foobar: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab, run foobar, send HTTP requests through the VIP, print
    /// who served them and foobar's counters, remove the lab.
    Demo {
        #[arg(long, default_value_t = 300)]
        requests: usize,
        #[arg(long, default_value_t = 3)]
        backends: usize,
    },
    /// Build the lab and run foobar in it until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 3)]
        backends: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: removing the lab");
        lab::cleanup_all();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root (sudo)");
    }
    let foobar = match cli.foobar {
        Some(p) => p,
        None => lab::foobar_bin()?,
    };
    match cli.command {
        Cmd::Demo { requests, backends } => demo(&foobar, requests, backends),
        Cmd::Up { backends } => up(&foobar, backends),
    }
}

fn start(foobar: &std::path::Path, backends: usize) -> Result<Lab> {
    // Plain nginx backends (no VIP on lo, no ARP sysctls): `nat`, the
    // default mode, needs nothing of them.
    let mut lab = Lab::start(&LabOptions {
        backends,
        plain_backends: true,
        ..LabOptions::default()
    })?;
    println!(
        "lab {}: client {}, LB node {} (holds VIP {VIP}), {} nginx backends {}",
        lab.id,
        lab.client.addr,
        lab.lb.addr,
        lab.backends.len(),
        lab.backends
            .iter()
            .map(|b| format!("{}={}", b.name, b.addr))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // The lab's VIP without `forwarding`: nat, the default, with the LB
    // node's own address as the SNAT address (no snat_address set).
    let config = lab.config().replace("forwarding = \"dsr\"\n", "");
    lab.start_foobar(foobar, &config)?;
    println!(
        "foobar run: attached to {LB_IFACE} of the LB node (native XDP, nat, round-robin; \
         backends see the LB's {} as the client)",
        lab.lb.addr
    );
    Ok(lab)
}

fn demo(foobar: &std::path::Path, requests: usize, backends: usize) -> Result<()> {
    let mut lab = start(foobar, backends)?;
    let url = format!("http://{VIP}/?[1-{requests}]");
    let out = lab.output(
        &lab.client.ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "120",
            "-H",
            "Connection: close",
            "-w",
            "%{http_code}\n",
            &url,
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let mut ok = 0;
    for pair in lines.chunks(2) {
        if pair.len() == 2 && pair[1] == "200" {
            ok += 1;
            *served.entry(pair[0].to_owned()).or_default() += 1;
        }
    }
    println!("\n{requests} HTTP requests from the client to http://{VIP}/ (a new connection each): {ok} OK");
    for (backend, n) in &served {
        println!(
            "  {backend}: {n:>5} ({:.1}%)",
            100.0 * *n as f64 / requests.max(1) as f64
        );
    }
    let (clean, counters) = lab.stop_foobar()?;
    println!("\nfoobar stopped (SIGTERM); its {counters}");
    let reason = |name: &str| -> u64 {
        counters
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("reason {name} "))?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let (to_backends, replies) = (reason("forwarded"), reason("forwarded_reply"));
    println!(
        "NAT: {to_backends} packets translated to the backends (forwarded), {replies} replies \
         translated back to the client (forwarded_reply)"
    );
    println!(
        "XDP still attached to {LB_IFACE} (pinned; a restart adopts it): {}",
        lab.xdp_attached()?
    );
    let (detached, text) = lab.detach_foobar(&lab::foobar_bin()?)?;
    print!("foobar detach: {text}");
    println!("XDP still attached to {LB_IFACE}: {}", lab.xdp_attached()?);
    drop(lab);
    println!("lab removed");
    if ok != requests || !clean || !detached || replies == 0 {
        bail!(
            "demo failed: {ok} of {requests} requests OK, foobar exited cleanly: {clean}, \
             {replies} replies translated"
        );
    }
    Ok(())
}

fn up(foobar: &std::path::Path, backends: usize) -> Result<()> {
    let lab = start(foobar, backends)?;
    println!(
        "\ntry:  sudo ip netns exec {} curl http://{VIP}/\nlog:  {}\nCtrl-C removes the lab",
        lab.client.ns,
        lab.dir.join("foobar.log").display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
