//! The control plane against local users, in the netns lab: idle clients of
//! the metrics port cannot take backends down, a user other than root
//! cannot use the control socket, the socket never replaces a file that is
//! not a socket, and the last backend of a VIP leaves only on purpose.
//! Health checks in the lab run every 300 ms with fall 2 and rise 2.
//! Needs root; `cargo xtask test` runs it so.
use std::{
    fs,
    net::SocketAddrV4,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::PermissionsExt as _,
    },
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use foobar_tests::lab::{self, Lab, LabOptions, VIP};
use foobar_tests::ops::{cli, foobar, status};
use serde_json::Value;

/// Where the lab's config puts the metrics listener (in the LB namespace).
const METRICS: &str = "127.0.0.1:9183";
/// systemd's default soft limit on open files for a service.
const SERVICE_NOFILE: u64 = 1024;
/// Idle connections a local user opens to the metrics port: enough to
/// exhaust a daemon without a connection cap (measured before the cap:
/// ~1000 took every backend down within 0.6 s).
const IDLE_CLIENTS: usize = 1200;

/// `foobar ARGS` as uid/gid 65534 (nobody) on the LB node.
fn cli_as_nobody(lab: &Lab, args: &[&str]) -> (bool, String) {
    let bin = foobar();
    let socket = lab.socket();
    let mut full = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    let out = lab.output(&lab.lb.ns, &full).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (address, health) of every backend of the web VIP.
fn health(lab: &Lab) -> Vec<(String, String)> {
    status(lab)["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["health"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// One new connection to the VIP from the client: who served it.
fn request(lab: &Lab) -> Result<String, String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client.ns,
            "curl",
            "-sS",
            "--max-time",
            "1",
        ])
        .args(["-H", "Connection: close", &format!("http://{VIP}/")])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// One scrape from the LB node itself.
fn scrape(lab: &Lab) -> Result<String, String> {
    let out = lab
        .output(
            &lab.lb.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "2",
                &format!("http://{METRICS}/metrics"),
            ],
        )
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    (limit.rlim_cur, limit.rlim_max)
}

fn set_nofile(soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Starts foobar as a systemd service would run it: 1024 open files.
fn start_as_service(lab: &mut Lab, config: &str) {
    let (soft, hard) = nofile();
    set_nofile(SERVICE_NOFILE.min(hard), hard);
    let started = lab.start_foobar(&foobar(), config);
    set_nofile(soft, hard);
    started.expect("foobar run attaches");
}

/// The pid of the lab's foobar daemon (the one process named foobar in
/// the LB namespace).
fn daemon_pid(lab: &Lab) -> u32 {
    let pids = lab::run(&["ip", "netns", "pids", &lab.lb.ns]).unwrap();
    let found: Vec<u32> = pids
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "foobar")
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "foobar processes in the LB namespace: {found:?}"
    );
    found[0]
}

fn open_files(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Starts `n` TCP connections to `addr` from inside namespace `ns` and
/// keeps every socket open, connected or still trying: an idle local user.
/// (A socket stays in the namespace it was made in.)
fn hold_connections(ns: &str, addr: SocketAddrV4, n: usize) -> Vec<OwnedFd> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let netns = fs::File::open(&path).unwrap();
        // This thread only: the test's other threads stay where they are.
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        (0..n)
            .map(|_| {
                // SAFETY: plain socket calls on a socket we own.
                unsafe {
                    let fd = libc::socket(
                        libc::AF_INET,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    );
                    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
                    let rc = libc::connect(
                        fd,
                        &sin as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    );
                    let err = std::io::Error::last_os_error();
                    assert!(
                        rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
                        "connect: {err}"
                    );
                    OwnedFd::from_raw_fd(fd)
                }
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// How many of `fds` completed their handshake.
fn connected(fds: &[OwnedFd]) -> usize {
    fds.iter()
        .filter(|fd| {
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: getpeername writes at most `len` bytes into `addr`.
            unsafe {
                libc::getpeername(
                    fd.as_raw_fd(),
                    &mut addr as *mut _ as *mut libc::sockaddr,
                    &mut len,
                ) == 0
            }
        })
        .count()
}

#[test]
fn idle_clients_of_the_metrics_port_take_no_backend_down_and_vip_traffic_flows() {
    // Room for our own sockets; the daemon gets a service's 1024.
    let (soft, hard) = nofile();
    if soft < 4096 {
        set_nofile(4096.min(hard), hard);
    }
    let mut lab = Lab::start(&LabOptions::default()).expect("lab starts");
    let config = lab.config();
    start_as_service(&mut lab, &config);
    let pid = daemon_pid(&lab);
    lab::wait_for("every backend up", Duration::from_secs(10), || {
        Ok(health(&lab).iter().all(|(_, h)| h == "up"))
    })
    .unwrap();
    assert!(scrape(&lab).unwrap().contains("foobar_backend_up"));
    let files_before = open_files(pid);

    // A local user's idle connections, held for 10 s.
    // More than a service's 1024 files. Beyond the daemon's 64 and the
    // listen backlog (128), connects keep retrying their SYN: they are held
    // too, as an attacker's would be.
    let idle = hold_connections(&lab.lb.ns, METRICS.parse().unwrap(), IDLE_CLIENTS);
    let held = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let established = connected(&idle);
    assert!(
        established > 64,
        "only {established} connections established: the test does not reach the cap"
    );
    let mut served = Vec::new();
    let mut failed = Vec::new();
    let mut most_files = 0;
    // Bounded: one probe round takes at most ~2.5 s.
    while held.elapsed() < Duration::from_secs(10) {
        match request(&lab) {
            Ok(who) => served.push(who),
            Err(e) => failed.push((held.elapsed(), e)),
        }
        let down: Vec<_> = health(&lab)
            .into_iter()
            .filter(|(_, h)| h != "up")
            .collect();
        assert!(
            down.is_empty(),
            "backends not up {:?} into the hold: {down:?}\nlog:\n{}",
            held.elapsed(),
            lab.foobar_log()
        );
        most_files = most_files.max(open_files(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);

    assert!(failed.is_empty(), "VIP requests failed: {failed:?}");
    assert!(served.len() >= 10, "only {} probes in 10 s", served.len());
    for be in ["be1", "be2", "be3"] {
        assert!(
            served.iter().any(|w| w == be),
            "{be} served none: {served:?}"
        );
    }
    // The cap, seen from the daemon's side: 64 connections, not all.
    assert!(
        most_files <= files_before + 64 + 16,
        "the daemon held {most_files} files (before: {files_before})"
    );
    let log = lab.foobar_log();
    assert!(
        !log.lines()
            .any(|l| l.contains("health changed") && l.contains("down")),
        "{log}"
    );

    // Once they are gone, scrapes are answered again.
    let gone = Instant::now();
    lab::wait_for("metrics answer again", Duration::from_secs(15), || {
        Ok(scrape(&lab).is_ok_and(|m| m.contains("foobar_backend_up")))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", lab.foobar_log()));
    eprintln!(
        "{established} of {IDLE_CLIENTS} idle connections established; metrics answered {:?} after \
         they left; {} probes, max {most_files} files (before {files_before})",
        gone.elapsed(),
        served.len()
    );
}

#[test]
fn only_root_may_use_the_control_socket() {
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let config = lab.config();
    lab.start_foobar(&foobar(), &config)
        .expect("foobar run attaches");
    let socket = lab.socket();
    let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The file mode keeps nobody out...
    let (ok, err) = cli_as_nobody(&lab, &["status"]);
    assert!(!ok);
    assert!(err.contains("the control socket is root-only"), "{err}");

    // ...and if an operator opens the mode up, the peer check still does.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, err) = cli_as_nobody(&lab, &["backend", "drain", "web", "10.201.0.11"]);
    assert!(!ok);
    assert!(
        err.contains("serves root only (you are uid 65534)"),
        "{err}"
    );
    let log = lab.foobar_log();
    assert!(
        log.lines()
            .any(|l| l.contains("control connection refused") && l.contains("uid=65534")),
        "{log}"
    );
    // Nothing changed, and root is served.
    let s = status(&lab);
    assert_eq!(s["vips"][0]["backends"][0]["admin"], "enabled", "{s}");
}

#[test]
fn a_file_at_the_socket_path_is_never_deleted() {
    let lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts");
    // api.socket pointing at the config file itself.
    let conf = lab.dir.join("self.toml");
    let text = lab
        .config()
        .replace(&lab.socket().display().to_string(), conf.to_str().unwrap());
    fs::write(&conf, &text).unwrap();
    let out = lab
        .output(
            &lab.lb.ns,
            &[
                foobar().to_str().unwrap(),
                "run",
                "--config",
                conf.to_str().unwrap(),
            ],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        text,
        "the config is intact"
    );
    assert!(!lab.xdp_attached().unwrap(), "nothing attached");
}

#[test]
fn the_last_backend_taking_new_flows_leaves_only_with_force() {
    let mut lab = Lab::start(&LabOptions {
        backends: 2,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let config = lab.config();
    lab.start_foobar(&foobar(), &config)
        .expect("foobar run attaches");
    let be1 = lab.backends[0].addr.to_string();
    let be2 = lab.backends[1].addr.to_string();
    lab::wait_for("both backends up", Duration::from_secs(10), || {
        Ok(health(&lab).iter().all(|(_, h)| h == "up"))
    })
    .unwrap();

    // be2 drained: be1 is the only one taking new flows.
    assert!(cli(&lab, &["backend", "drain", "web", &be2]).0);
    let (ok, _, err) = cli(&lab, &["backend", "remove", "web", &be1]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{be1} is the last backend of VIP web that takes new flows"
        )) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(request(&lab).as_deref(), Ok("be1"), "still served");
    assert_eq!(
        status(&lab)["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // With another one serving, removal is ordinary.
    assert!(cli(&lab, &["backend", "enable", "web", &be2]).0);
    let (ok, out, err) = cli(&lab, &["backend", "remove", "web", &be1]);
    assert!(ok, "{err}");
    assert!(out.contains("removed"), "{out}");
    assert!(!err.contains("warning"), "{err}");

    // The last one: refused, then --force with a warning on both sides.
    let (ok, _, err) = cli(&lab, &["backend", "remove", "web", &be2, "--json"]);
    assert!(!ok, "{err}");
    let (ok, out, err) = cli(
        &lab,
        &["backend", "remove", "web", &be2, "--force", "--json"],
    );
    assert!(ok, "{err}");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["vip_drops_new_flows"], true, "{out}");
    assert!(
        err.contains("warning: VIP web has no backend left"),
        "{err}"
    );
    let log = lab.foobar_log();
    assert!(
        log.lines()
            .any(|l| l.contains("last backend removed (--force)")),
        "{log}"
    );
    assert!(request(&lab).is_err(), "the VIP has no backend");
}
