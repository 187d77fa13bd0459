//! What the systemd unit (examples/foobar.service) relies on, proven in the
//! netns lab without a running systemd: the daemon starts and forwards with
//! only the unit's CapabilityBoundingSet=, names the capability it lacks
//! when started with less, and speaks the sd_notify protocol to
//! $NOTIFY_SOCKET — READY=1 only once XDP is attached, RELOADING=1 then
//! READY=1 around a reload, STOPPING=1 at SIGTERM. Needs root; `cargo xtask
//! test` runs it so (under the lab lock).
use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use foobar_tests::lab::{self, Lab, LabOptions, LB_IFACE, VIP};
use foobar_tests::ops::{cli, foobar};

/// The capabilities of the unit's CapabilityBoundingSet= line, as setpriv
/// spells them ("bpf", "net_admin", ...).
fn unit_capabilities() -> Vec<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/foobar.service");
    let text = fs::read_to_string(&unit).expect("examples/foobar.service");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    line.split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .expect("capabilities are named CAP_*")
                .to_lowercase()
        })
        .collect()
}

/// A script that runs foobar as root with only `caps` in its bounding set
/// (so only those effective, as under the unit) and $NOTIFY_SOCKET set:
/// what systemd does, for `Lab::start_foobar`.
fn capped_foobar(dir: &Path, caps: &[String], notify: &Path) -> PathBuf {
    let bounding: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let script = dir.join("foobar-capped");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexport NOTIFY_SOCKET='{}'\nexec setpriv --bounding-set={bounding} \
             --inh-caps=-all -- '{}' \"$@\"\n",
            notify.display(),
            foobar().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// One notification and whether the lab's NIC had an XDP program the
/// moment it arrived.
struct Notice {
    text: String,
    attached: bool,
}

/// Receives the daemon's notifications on `socket` until the test ends
/// (the sender is dropped) or 60 s pass.
fn listen(socket: UnixDatagram, lb_ns: String) -> mpsc::Receiver<Notice> {
    let (tx, rx) = mpsc::channel();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = socket.recv(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let link = lab::run(&["ip", "-n", &lb_ns, "-d", "link", "show", "dev", LB_IFACE])
                .unwrap_or_default();
            let attached = link.contains("prog/xdp") || link.contains(" xdp");
            if tx.send(Notice { text, attached }).is_err() {
                return;
            }
        }
    });
    rx
}

fn next(rx: &mpsc::Receiver<Notice>, what: &str) -> Notice {
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no {what} notification within 20 s"))
}

/// The CapEff of a running process.
fn effective_caps(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    foobar::caps::CapSet::parse_status(&status).unwrap().0
}

#[test]
fn runs_with_only_the_units_capabilities_and_notifies_systemd() {
    let mut lab = Lab::start(&LabOptions {
        backends: 2,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let notify = lab.dir.join("notify.sock");
    let rx = listen(UnixDatagram::bind(&notify).unwrap(), lab.lb.ns.clone());
    let caps = unit_capabilities();
    let wrapper = capped_foobar(&lab.dir, &caps, &notify);
    let config = lab.config();
    lab.start_foobar(&wrapper, &config)
        .expect("foobar starts with the unit's capabilities only");

    let ready = next(&rx, "READY");
    assert!(ready.text.lines().any(|l| l == "READY=1"), "{}", ready.text);
    assert!(
        ready.attached,
        "READY=1 came before the XDP program was attached"
    );
    assert!(
        lab.foobar_log().contains("attached; forwarding"),
        "READY=1 before the attach was logged"
    );
    assert!(
        ready.text.contains("STATUS=forwarding on eth0"),
        "{}",
        ready.text
    );

    // The bounding set held: nothing beyond the unit's capabilities.
    let pid = lab.foobar_pid().unwrap();
    let have = effective_caps(pid);
    let cap_dac_override = 1u64 << 1;
    assert_eq!(have & cap_dac_override, 0, "CapEff {have:x}");
    assert_eq!(have.count_ones() as usize, caps.len(), "CapEff {have:x}");
    // ... and it forwards.
    let page = lab
        .curl(&format!("http://{VIP}/"))
        .expect("a request through the VIP");
    assert!(page.starts_with("be"), "a backend answered: {page}");

    let (ok, out, err) = cli(&lab, &["reload"]);
    assert!(ok, "foobar reload: {out}{err}");
    let reloading = next(&rx, "RELOADING");
    assert!(
        reloading.text.lines().any(|l| l == "RELOADING=1"),
        "{}",
        reloading.text
    );
    assert!(
        reloading.text.contains("MONOTONIC_USEC="),
        "{}",
        reloading.text
    );
    let ready = next(&rx, "READY after the reload");
    assert!(ready.text.lines().any(|l| l == "READY=1"), "{}", ready.text);

    let (ok, _) = lab.stop_foobar().unwrap();
    assert!(ok, "foobar exits cleanly: {}", lab.foobar_log());
    let stopping = next(&rx, "STOPPING");
    assert!(
        stopping.text.lines().any(|l| l == "STOPPING=1"),
        "{}",
        stopping.text
    );
    lab.detach_foobar(&foobar()).unwrap();
}

#[test]
fn without_cap_sys_admin_the_start_is_refused_by_name_and_never_ready() {
    let mut lab = Lab::start(&LabOptions {
        backends: 1,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let notify = lab.dir.join("notify.sock");
    let rx = listen(UnixDatagram::bind(&notify).unwrap(), lab.lb.ns.clone());
    let caps: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|c| c != "sys_admin")
        .collect();
    let wrapper = capped_foobar(&lab.dir, &caps, &notify);
    let config = lab.config();
    let err = lab
        .start_foobar(&wrapper, &config)
        .expect_err("foobar refuses to start without CAP_SYS_ADMIN");
    let log = lab.foobar_log();
    assert!(
        log.contains("missing: CAP_SYS_ADMIN."),
        "only what is missing, by name: {err:#}\n{log}"
    );
    assert!(!lab.xdp_attached().unwrap(), "nothing attached");
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "no notification from a daemon that never started"
    );
}
