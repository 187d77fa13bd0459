//! What an operator does against a lab's running daemon, shared by the
//! lab tests: the `foobar` CLI, `foobar status --json`, one new client
//! connection through the VIP, long downloads, and bounded waiting for a
//! condition.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::lab::{self, Lab, VIP};

/// The foobar binary the lab runs (`FOOBAR_BIN` or the workspace build).
pub fn foobar() -> PathBuf {
    lab::foobar_bin().expect("the foobar binary is built (cargo xtask test builds it)")
}

/// `foobar ARGS` against the lab's daemon: (success, stdout, stderr).
pub fn cli(lab: &Lab, args: &[&str]) -> (bool, String, String) {
    let out = lab
        .foobar_cli(&foobar(), args)
        .expect("running the foobar CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `foobar status --json`, parsed.
pub fn status(lab: &Lab) -> Value {
    let (ok, out, err) = cli(lab, &["status", "--json"]);
    assert!(ok, "foobar status: {err}");
    serde_json::from_str(&out).expect("foobar status --json prints JSON")
}

/// The first VIP's backend with `address` in a status document.
pub fn backend<'a>(status: &'a Value, address: &str) -> Option<&'a Value> {
    status["vips"][0]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == address)
}

/// One new connection to the VIP from namespace `client_ns` (1 s limit):
/// the name of the backend that served it, or why it failed.
pub fn request(client_ns: &str) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", client_ns, "curl", "-sS", "--max-time", "1"])
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

/// Polls `done` every 25 ms until it holds (returns how long that took) or
/// `limit` passes (panics naming `what`).
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what}: not within {limit:?}");
}

/// Starts `n` downloads of `www/FILE` through the VIP from the client
/// (60 s limit each); `finish_downloads` checks them.
pub fn start_downloads(lab: &Lab, file: &str, n: usize) -> Vec<Child> {
    (0..n)
        .map(|_| {
            Command::new("ip")
                .args(["netns", "exec", &lab.client.ns, "curl", "-sS"])
                .args(["--max-time", "60", "-o", "/dev/null", "-D", "-"])
                .args(["-w", "result %{http_code} %{size_download}\n"])
                .arg(format!("http://{VIP}/{file}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting curl")
        })
        .collect()
}

/// Waits for the downloads of `start_downloads` and panics unless each
/// got a 200 and all `bytes`; returns the backend that served each.
pub fn finish_downloads(downloads: Vec<Child>, bytes: usize) -> Vec<String> {
    downloads
        .into_iter()
        .map(|d| {
            let out = d.wait_with_output().expect("waiting for curl");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "a download failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.contains(&format!("result 200 {bytes}")),
                "a download was cut: {text}"
            );
            text.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("x-backend")
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_else(|| panic!("no X-Backend header: {text}"))
        })
        .collect()
}
