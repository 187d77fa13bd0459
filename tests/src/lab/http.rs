//! The HTTP checks lab tests make through a VIP: many short requests, all
//! answered, and a big download intact. One copy here, not one per test
//! file (they had been repeated in six).
use std::collections::BTreeMap;

use super::{run, Lab};

impl Lab {
    /// `n` requests from the client to `base` followed by `?[1-n]` (curl's
    /// URL range: `base` is e.g. `http://10.201.0.100/` or
    /// `http://[fd00:201::100]/peer`), each on a new connection, so each is
    /// a new flow; within 300 s. Every one must answer 200. Returns the
    /// bodies (one line each: the backends answer with their name) and how
    /// many requests got each.
    pub fn requests_all_ok(&self, base: &str, n: usize) -> BTreeMap<String, usize> {
        let url = format!("{base}?[1-{n}]");
        let out = self
            .output(
                &self.client.ns,
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "300",
                    "-H",
                    "Connection: close",
                    "-w",
                    "%{http_code}\n",
                    &url,
                ],
            )
            .expect("curl runs in the client namespace");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            2 * n,
            "one body line and one status line per request"
        );
        let mut served = BTreeMap::new();
        for pair in lines.chunks(2) {
            assert_eq!(pair[1], "200", "a request failed: {pair:?}");
            *served.entry(pair[0].to_owned()).or_insert(0) += 1;
        }
        served
    }

    /// Makes a `size`-byte file in the backends' web root and downloads it
    /// from the client as `base` + `big.bin` (within 120 s); panics unless
    /// the copy is intact (size and sha256).
    pub fn download_intact(&self, base: &str, size: usize) {
        let original = self
            .make_file("big.bin", size)
            .expect("the web root takes the file");
        let copy = self.dir.join("downloaded.bin");
        self.exec(
            &self.client.ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "120",
                "-o",
                copy.to_str().expect("a UTF-8 lab path"),
                &format!("{base}big.bin"),
            ],
        )
        .expect("the download completes");
        let hash = |p: &std::path::Path| {
            run(&["sha256sum", p.to_str().expect("a UTF-8 lab path")]).expect("sha256sum runs")
                [..64]
                .to_owned()
        };
        assert_eq!(
            std::fs::metadata(&copy).expect("the copy exists").len(),
            size as u64
        );
        assert_eq!(hash(&copy), hash(&original), "the download differs");
    }
}
