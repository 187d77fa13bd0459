//! The `restart` section: what clients see while foobar restarts and
//! adopts its pinned state.
use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use foobar_tests::lab::{self, Lab, LabOptions, VIP};

/// One probe of the restart section: when it started (since the stream
/// began) and whether a backend answered it.
pub struct Probe {
    at: Duration,
    ok: bool,
}

/// A new TCP connection to the VIP every 10 ms from the client's
/// namespace, each a `GET /` that a backend must answer (the LB node's own
/// nginx answering "lb" counts as lost: that is the fail-open a detached
/// program shows). Runs until `stop`; bounded to 10 minutes.
pub fn probe_stream(client_ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Probe>> {
    use std::io::{Read as _, Write as _};
    let path = format!("/var/run/netns/{client_ns}");
    std::thread::spawn(move || {
        let mut probes = Vec::new();
        let Ok(file) = std::fs::File::open(&path) else {
            return probes;
        };
        if nix::sched::setns(
            std::os::fd::AsFd::as_fd(&file),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .is_err()
        {
            return probes;
        }
        let to = std::net::SocketAddr::from((VIP, 80));
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600) {
            let at = start.elapsed();
            let ok = (|| -> std::io::Result<bool> {
                let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200))?;
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
                let mut answer = Vec::new();
                s.read_to_end(&mut answer)?;
                Ok(answer.windows(6).any(|w| w == b"\r\n\r\nbe"))
            })()
            .unwrap_or(false);
            probes.push(Probe { at, ok });
            if let Some(rest) = Duration::from_millis(10).checked_sub(start.elapsed() - at) {
                std::thread::sleep(rest);
            }
        }
        probes
    })
}

/// The daemon's own start-to-forwarding figure: `elapsed_ms` on the last
/// "attached; forwarding" line of its log.
pub fn logged_elapsed_ms(log: &str) -> Option<f64> {
    log.lines()
        .rfind(|l| l.contains("attached; forwarding"))?
        .split("elapsed_ms=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Restarts under a probe stream: start to "adopted and serving" (the
/// daemon's `elapsed_ms`, and as the lab sees it: spawn until attached and
/// logged), and the probes lost from each stop to 0.5 s after the next
/// start, for kill -9 and SIGTERM. Forwarding that stops entirely (no
/// probe answered in a restart window) is an error; anything less is a
/// figure.
pub fn restart(quick: bool) -> Result<String> {
    let (times, without_daemon) = if quick {
        (1, Duration::from_millis(500))
    } else {
        (3, Duration::from_secs(2))
    };
    let mut lab = Lab::start(&LabOptions::default())?;
    let foobar = lab::foobar_bin()?;
    let config = lab.config();
    let fresh = Instant::now();
    lab.start_foobar(&foobar, &config)?;
    let fresh_wall = fresh.elapsed().as_secs_f64() * 1e3;
    let fresh_logged = logged_elapsed_ms(&lab.foobar_log());
    let stop = Arc::new(AtomicBool::new(false));
    let stream = probe_stream(&lab.client.ns, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    // (kind, stop instant, serving instant, daemon's ms, lab's ms)
    let mut windows: Vec<(&str, Instant, Instant, Option<f64>, f64)> = Vec::new();
    let t0 = Instant::now();
    let mut run = || -> Result<()> {
        for _ in 0..times {
            for kind in ["kill -9", "SIGTERM"] {
                let stopped = Instant::now();
                if kind == "kill -9" {
                    lab.kill_foobar()?;
                } else {
                    lab.stop_foobar()?;
                }
                std::thread::sleep(without_daemon);
                let started = Instant::now();
                lab.start_foobar(&foobar, &config)?;
                let serving = Instant::now();
                let log = lab.foobar_log();
                ensure!(
                    log.lines()
                        .rfind(|l| l.contains("attached; forwarding"))
                        .is_some_and(|l| l.contains("adopted (program replaced in place)")),
                    "the restart did not adopt the pinned link:\n{log}"
                );
                windows.push((
                    kind,
                    stopped,
                    serving,
                    logged_elapsed_ms(&log),
                    (serving - started).as_secs_f64() * 1e3,
                ));
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    };
    let ran = run();
    stop.store(true, Ordering::Relaxed);
    let probes = stream
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    let _ = lab.stop_and_detach_foobar();
    ran?;
    ensure!(!probes.is_empty(), "the probe stream sent nothing");

    let mut out = String::new();
    writeln!(out, "\n## Restart (netns lab)\n")?;
    writeln!(
        out,
        "foobar (native XDP, rr, 3 backends) restarted {times} time(s) each way, {} ms without \
         a daemon each time, under a stream of new connections to the VIP (one `GET /` every \
         10 ms from the client; a probe is lost when no backend answers it within 0.7 s). \
         Window: from the stop to 0.5 s after the new daemon logged \"attached; forwarding\". \
         Start to serving: the daemon's own `elapsed_ms`, and the lab's view (spawn until the \
         program is attached and the line logged, polled every 100 ms). A fresh start (nothing \
         pinned) took {} ms (lab: {fresh_wall:.0} ms).\n",
        without_daemon.as_millis(),
        fresh_logged.map_or("?".to_owned(), |v| format!("{v:.0}")),
    )?;
    writeln!(
        out,
        "| restart | start to serving, daemon (ms) | lab (ms) | probes in window | lost | longest gap (ms) |\n\
         |---|---:|---:|---:|---:|---:|"
    )?;
    let mut total_lost = 0;
    for (kind, stopped, serving, logged, wall) in &windows {
        let (from, to) = (
            stopped.duration_since(t0),
            serving.duration_since(t0) + Duration::from_millis(500),
        );
        let window: Vec<&Probe> = probes
            .iter()
            .filter(|p| p.at + Duration::from_millis(700) >= from && p.at <= to)
            .collect();
        let lost = window.iter().filter(|p| !p.ok).count();
        ensure!(
            window.iter().any(|p| p.ok),
            "{kind}: no probe answered from the stop to after the restart: forwarding stopped"
        );
        // The longest run of lost probes, from its first to the next answer.
        let (mut gap, mut first_lost) = (Duration::ZERO, None);
        for p in &window {
            match (p.ok, first_lost) {
                (false, None) => first_lost = Some(p.at),
                (true, Some(f)) => {
                    gap = gap.max(p.at - f);
                    first_lost = None;
                }
                _ => {}
            }
        }
        total_lost += lost;
        writeln!(
            out,
            "| {kind} | {} | {wall:.0} | {} | {lost} | {:.0} |",
            logged.map_or("?".to_owned(), |v| format!("{v:.0}")),
            window.len(),
            gap.as_secs_f64() * 1e3
        )?;
    }
    writeln!(
        out,
        "\n{} probes in all, {} lost ({total_lost} in the restart windows).",
        probes.len(),
        probes.iter().filter(|p| !p.ok).count()
    )?;
    Ok(out)
}
