//! `foobar reload` and SIGHUP in the netns lab, as an operator lives them:
//! edit the config under load, reload, and count what the clients saw —
//! wrk's keep-alive connections and a loop of new connections, none may
//! fail. A bad edit is refused whole and changes nothing. Needs root;
//! `cargo xtask test` runs it so.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use foobar_tests::lab::{self, Lab, LabOptions, VIP};
use foobar_tests::ops::{
    backend, cli, finish_downloads, foobar, request, start_downloads, status, wait_until,
};

fn lab_running(backends_in_config: usize) -> Lab {
    lab_running_with(backends_in_config, &LabOptions::default())
}

fn lab_running_with(backends_in_config: usize, opts: &LabOptions) -> Lab {
    let mut lab = Lab::start(opts).expect("lab starts");
    let config = lab.config_with_backends(backends_in_config);
    lab.start_foobar(&foobar(), &config)
        .expect("foobar run attaches");
    lab
}

/// Rewrites the daemon's config file (the one `foobar run` was given).
fn edit_config(lab: &Lab, text: &str) {
    std::fs::write(lab.dir.join("foobar.toml"), text).expect("writing the config");
}

/// `text` with a weight for the backend at `address`.
fn with_weight(text: &str, address: &str, weight: u32) -> String {
    let line = format!("address = \"{address}\"\n");
    assert!(text.contains(&line), "{address} is in the config");
    text.replace(&line, &format!("{line}weight = {weight}\n"))
}

/// New connections to the VIP from a thread (one every 20 ms) until
/// stopped: who served each, in order.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Result<String, String>>>,
}

impl Prober {
    fn start(client_ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag) = (client_ns.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seen = Vec::new();
            // Bounded whatever the test does: 5 minutes at most.
            while !flag.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(300) {
                seen.push(request(&ns));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        Prober { stop, thread }
    }

    fn finish(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("prober thread")
    }
}

/// The first VIP's backends as configuration: (address, id, weight, admin).
fn backends(lab: &Lab) -> Vec<(String, u64, u64, String)> {
    status(lab)["vips"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["id"].as_u64().unwrap(),
                b["weight"].as_u64().unwrap(),
                b["admin"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn failures(probes: &[Result<String, String>]) -> Vec<&String> {
    probes.iter().filter_map(|p| p.as_ref().err()).collect()
}

/// One new connection is served by `name` within `limit`.
fn served_by(lab: &Lab, name: &str, limit: Duration) -> Duration {
    wait_until(&format!("a new connection served by {name}"), limit, || {
        (0..6).any(|_| request(&lab.client.ns).is_ok_and(|s| s == name))
    })
}

/// Size of each long download: 10 s at the slow backends' 32 KB/s.
const DOWNLOAD_BYTES: usize = 320 * 1024;
const DOWNLOADS: usize = 20;

#[test]
fn reload_adds_reweighs_and_removes_backends_under_load_without_a_failed_request() {
    // Slow backends (32 KB/s per connection) keep the downloads running
    // through every reload; wrk's tiny responses do not notice the limit.
    let mut lab = lab_running_with(
        2,
        &LabOptions {
            slow: vec!["be1".into(), "be2".into(), "be3".into()],
            ..LabOptions::default()
        },
    );
    lab.make_file("long.bin", DOWNLOAD_BYTES).unwrap();
    let [be1, be2, be3] = [0, 1, 2].map(|i| lab.backends[i].addr.to_string());
    let base = lab.config_with_backends(2);
    let downloads = start_downloads(&lab, "long.bin", DOWNLOADS);
    let wrk = lab.start_wrk(&format!("http://{VIP}/"), 8, 14).unwrap();
    let prober = Prober::start(&lab.client.ns);
    std::thread::sleep(Duration::from_secs(1));

    // 1. A backend added to the file.
    let all = lab.config();
    edit_config(&lab, &all);
    let (ok, out, err) = cli(&lab, &["reload"]);
    assert!(ok, "reload: {err}");
    assert!(
        out.contains(&format!("applied: backend add web {be3}")),
        "{out}"
    );
    served_by(&lab, "be3", Duration::from_secs(10));

    // 2. A weight changed in the file.
    let weighted = with_weight(&all, &be2, 3);
    edit_config(&lab, &weighted);
    let (ok, out, err) = cli(&lab, &["reload"]);
    assert!(ok, "reload: {err}");
    assert!(
        out.contains(&format!("applied: backend weight web {be2} 3")),
        "{out}"
    );
    assert_eq!(backend(&status(&lab), &be2).unwrap()["weight"], 3);

    // 3. A backend removed from the file: drained first, as an operator
    // does, then reloaded away; its open connections finish on it.
    assert!(cli(&lab, &["backend", "drain", "web", &be1]).0);
    std::thread::sleep(Duration::from_secs(1));
    let without_be1 = weighted.replace(&format!("\n[[vip.backend]]\naddress = \"{be1}\"\n"), "");
    assert_ne!(without_be1, weighted);
    edit_config(&lab, &without_be1);
    let (ok, out, err) = cli(&lab, &["reload", "--json"]);
    assert!(ok, "reload: {err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["applied"],
        serde_json::json!([format!("backend remove web {be1}")]),
        "{answer}"
    );
    let s = status(&lab);
    assert!(backend(&s, &be1).is_none(), "{s}");
    assert_eq!(s["state_file"]["saved"], true, "{s}");
    let after_removal: Vec<_> = (0..20).map(|_| request(&lab.client.ns)).collect();

    let probes = prober.finish();
    let wrk = lab::finish_wrk(wrk).unwrap();
    // Every download ends whole, those on the removed be1 included (its
    // flows finish on it).
    let served = finish_downloads(downloads, DOWNLOAD_BYTES);
    let log = lab.foobar_log();
    let _ = lab.stop_foobar();
    eprintln!(
        "wrk: {} requests, {} socket errors, {} non-2xx; {} probes; downloads served by {served:?}",
        wrk.requests,
        wrk.socket_errors,
        wrk.non_2xx_3xx,
        probes.len()
    );
    assert!(
        served.iter().any(|b| b == "be1"),
        "some downloads ran on the removed backend: {served:?}"
    );
    assert!(wrk.requests > 1000, "{}", wrk.text);
    assert_eq!(wrk.socket_errors, 0, "{}", wrk.text);
    assert_eq!(wrk.non_2xx_3xx, 0, "{}", wrk.text);
    assert!(probes.len() > 20, "{}", probes.len());
    assert_eq!(
        failures(&probes),
        Vec::<&String>::new(),
        "failed new connections"
    );
    assert!(
        after_removal
            .iter()
            .all(|r| r.as_ref().is_ok_and(|s| s != "be1")),
        "after the reload no new connection goes to be1: {after_removal:?}"
    );
    // The base config is not edited back: the state file now belongs to
    // the reloaded config, so a restart keeps the reloaded backends.
    assert_ne!(base, without_be1);
    assert!(log.contains("reload applied"), "{log}");
}

#[test]
fn a_bad_config_on_reload_is_refused_whole_and_traffic_is_unaffected() {
    let mut lab = lab_running(3);
    let be1 = lab.backends[0].addr.to_string();
    let good = lab.config();
    let state_file = lab.dir.join("foobar.state.json");
    let state_before = std::fs::read_to_string(&state_file).unwrap();
    let backends_before = backends(&lab);
    assert_eq!(backends_before.len(), 3);
    let wrk = lab.start_wrk(&format!("http://{VIP}/"), 8, 6).unwrap();
    let prober = Prober::start(&lab.client.ns);
    std::thread::sleep(Duration::from_millis(500));

    // A valid change (be1's weight) next to two invalid ones: none applies.
    let bad = with_weight(&good, &be1, 5).replace("interval_ms = 300", "interval_ms = 0")
        + "\n[[vip.backend]]\naddress = \"10.201.0.250\"\nweight = 999\n";
    edit_config(&lab, &bad);
    let (ok, out, err) = cli(&lab, &["reload"]);
    assert!(!ok, "a bad config is refused: {out}");
    let file = lab.dir.join("foobar.toml").display().to_string();
    for expected in [
        format!("{file}: vip[0].health.interval_ms: 0 is out of range"),
        format!("{file}: vip[0].backend[3].weight: 999 is out of range"),
        "nothing was applied".to_owned(),
    ] {
        assert!(err.contains(&expected), "{expected:?} not in:\n{err}");
    }

    // SIGHUP with the same file: refused too, in the log.
    let pid = nix::unistd::Pid::from_raw(lab.foobar_pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_until(
        "the SIGHUP reload is refused",
        Duration::from_secs(5),
        || {
            let log = lab.foobar_log();
            log.contains("SIGHUP") && log.matches("control request refused").count() >= 2
        },
    );
    std::thread::sleep(Duration::from_millis(500));

    let probes = prober.finish();
    let wrk = lab::finish_wrk(wrk).unwrap();
    assert_eq!(backends(&lab), backends_before, "nothing changed");
    assert_eq!(std::fs::read_to_string(&state_file).unwrap(), state_before);
    let _ = lab.stop_foobar();
    assert!(wrk.requests > 100, "{}", wrk.text);
    assert_eq!(wrk.socket_errors, 0, "{}", wrk.text);
    assert_eq!(wrk.non_2xx_3xx, 0, "{}", wrk.text);
    assert_eq!(failures(&probes), Vec::<&String>::new());
    assert!(probes.len() > 5, "{}", probes.len());
}

#[test]
fn sighup_reloads_as_foobar_reload_does_and_keeps_run_time_changes() {
    let mut lab = lab_running(2);
    let [be1, _, be3] = [0, 1, 2].map(|i| lab.backends[i].addr.to_string());
    // Run-time changes: be1 drained.
    assert!(cli(&lab, &["backend", "drain", "web", &be1]).0);

    edit_config(&lab, &lab.config());
    let pid = nix::unistd::Pid::from_raw(lab.foobar_pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_until("be3 is added by SIGHUP", Duration::from_secs(5), || {
        backend(&status(&lab), &be3).is_some()
    });
    served_by(&lab, "be3", Duration::from_secs(10));
    let s = status(&lab);
    let log = lab.foobar_log();
    // Every later new connection avoids the drained be1.
    let later: Vec<_> = (0..12).map(|_| request(&lab.client.ns)).collect();
    // A restart now restores the reloaded state (the state file belongs to
    // the new config), drain included.
    let (ok, _) = lab.stop_foobar().unwrap();
    assert!(ok);
    lab.start_foobar(&foobar(), &lab.config()).unwrap();
    let restarted = status(&lab);
    let _ = lab.stop_foobar();

    assert_eq!(backend(&s, &be1).unwrap()["admin"], "drained", "{s}");
    assert!(
        log.contains(&format!("backend {be1} of VIP web stays drained")),
        "the kept run-time change is logged:\n{log}"
    );
    assert!(
        later.iter().all(|r| r.as_ref().is_ok_and(|n| n != "be1")),
        "{later:?}"
    );
    assert_eq!(backend(&restarted, &be1).unwrap()["admin"], "drained");
    assert!(backend(&restarted, &be3).is_some(), "{restarted}");
}

#[test]
fn a_truncated_state_file_does_not_stop_the_start() {
    let mut lab = lab_running(2);
    let be3 = lab.backends[2].addr.to_string();
    assert!(cli(&lab, &["backend", "add", "web", &be3]).0);
    let (ok, _) = lab.stop_foobar().unwrap();
    assert!(ok);
    // A crash or a full disk cut the file short.
    let state_file = lab.dir.join("foobar.state.json");
    let whole = std::fs::read_to_string(&state_file).unwrap();
    std::fs::write(&state_file, &whole[..whole.len() / 3]).unwrap();

    lab.start_foobar(&foobar(), &lab.config_with_backends(2))
        .expect("a bad state file never stops the start");
    let s = status(&lab);
    let served = request(&lab.client.ns);
    let log = lab.foobar_log();
    let kept: Vec<_> = std::fs::read_dir(&lab.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("foobar.state.json.corrupt-"))
        .collect();
    let _ = lab.stop_foobar();
    assert!(backend(&s, &be3).is_none(), "started from the config: {s}");
    assert!(served.is_ok(), "{served:?}");
    assert!(log.contains("THE STATE FILE IS NOT USED"), "{log}");
    assert_eq!(kept.len(), 1, "the bad file is kept aside");
    assert!(
        state_file.exists(),
        "a new state file is written from the config"
    );
}
