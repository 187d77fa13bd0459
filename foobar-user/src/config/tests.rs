use super::*;
use foobar_common::FLOW_TABLE_DEFAULT;

const GOOD: &str = r#"
    [datapath]
    interface = "eth0"
    xdp_mode = "skb"
    flow_table_size = 4096

    [[vip]]
    name = "web"
    address = "192.0.2.10"
    port = 80

    [[vip.backend]]
    address = "10.0.0.11"

    [[vip.backend]]
    address = "10.0.0.12"
    weight = 3

    [[vip]]
    name = "dns"
    address = "192.0.2.10"
    port = 0
    protocol = "udp"

    [[vip.backend]]
    address = "10.0.0.21"
"#;

fn problems(text: &str) -> Vec<Problem> {
    parse(text).expect_err("config should be rejected")
}

fn keys(text: &str) -> Vec<String> {
    problems(text).into_iter().map(|p| p.key).collect()
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.datapath.interface.as_deref(), Some("eth0"));
    assert_eq!(c.datapath.xdp_mode, AttachMode::Skb);
    assert_eq!(c.datapath.flow_table_size, 4096);
    assert_eq!(c.vips.len(), 2);
    let web = &c.vips[0];
    assert_eq!(web.address, Ipv4Addr::new(192, 0, 2, 10));
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.scheduler, Scheduler::RoundRobin);
    // nat is the default; its SNAT address is the interface's primary,
    // which only `foobar run` knows (unspecified until then).
    assert_eq!(web.forwarding, Forwarding::Nat);
    assert!(web.nat.is_some_and(|n| n.snat_address.is_unspecified()));
    assert_eq!(web.backends[0].weight, 1);
    assert_eq!(web.backends[1].weight, 3);
    assert_eq!(c.vips[1].port, 0);
    assert_eq!(c.vips[1].protocol, Protocol::Udp);
}

#[test]
fn backend_health_keys_override_the_vip_defaults_one_by_one() {
    let c = parse(
        r#"
        [api]
        socket = "/tmp/x.sock"
        [metrics]
        listen = "off"
        [[vip]]
        name = "web"
        address = "192.0.2.10"
        port = 8080
        [vip.health]
        check = "http"
        http_path = "/healthz"
        interval_ms = 500
        fall = 2
        [[vip.backend]]
        address = "10.0.0.11"
        [[vip.backend]]
        address = "10.0.0.12"
        [vip.backend.health]
        check = "tcp"
        port = 9000
    "#,
    )
    .unwrap();
    assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
    assert_eq!(c.metrics_listen, None);
    let web = &c.vips[0];
    assert_eq!(web.health.interval_ms, 500);
    let first = &web.backends[0].health;
    assert_eq!(
        first.check,
        Check::Http {
            path: "/healthz".into(),
            host: None,
            status_min: 200,
            status_max: 399
        }
    );
    assert_eq!(
        (first.interval_ms, first.timeout_ms, first.rise, first.fall),
        (500, 500, 2, 2),
        "an unset timeout is capped by the interval"
    );
    assert_eq!(first.port_for(web.port), 8080);
    let second = &web.backends[1].health;
    assert_eq!(second.check, Check::Tcp, "the backend's own check wins");
    assert_eq!(second.port_for(web.port), 9000);
    assert_eq!(
        second.interval_ms, 500,
        "other keys still come from the VIP"
    );
}

#[test]
fn health_api_and_metrics_problems_name_their_keys() {
    let mut got = keys(
        r#"
        [api]
        socket = "relative.sock"
        [metrics]
        listen = "everywhere"
        [[vip]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        [vip.health]
        check = "ping"
        rise = 0
        timeout_ms = 5000
        [[vip.backend]]
        address = "10.0.0.11"
        [vip.backend.health]
        check = "tcp"
        http_status = [200, 299]
    "#,
    );
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        vec![
            "api.socket",
            "metrics.listen",
            "vip[0].backend[0].health",
            "vip[0].backend[0].health.rise",
            "vip[0].backend[0].health.timeout_ms",
            "vip[0].health.check",
            "vip[0].health.rise",
            "vip[0].health.timeout_ms",
        ]
    );
}

#[test]
fn scheduler_keys_are_validated() {
    let c = parse(
        r#"
        [datapath]
        hash_seed = 7
        retire_idle = "2s"
        [[vip]]
        name = "a"
        address = "192.0.2.1"
        port = 80
        scheduler = "maglev"
        maglev_table_size = 4099
        persistence = { timeout = "5m" }
        [[vip.backend]]
        address = "10.0.0.1"
        [[vip]]
        name = "b"
        address = "192.0.2.2"
        port = 80
        scheduler = "wlc"
        [[vip.backend]]
        address = "10.0.0.1"
    "#,
    )
    .unwrap();
    assert_eq!(c.datapath.hash_seed, 7);
    assert_eq!(c.datapath.retire_idle, std::time::Duration::from_secs(2));
    assert_eq!(c.vips[0].scheduler, Scheduler::Maglev);
    assert_eq!(c.vips[0].maglev_table_size, 4099);
    assert_eq!(c.vips[0].affinity_timeout_s, Some(300));
    assert_eq!(c.vips[1].scheduler, Scheduler::LeastConn);
    assert_eq!(c.vips[1].affinity_timeout_s, None);

    let mut got = keys(
        r#"
        [datapath]
        wlc_period_ms = 5
        retire_idle = "0s"
        [[vip]]
        name = "a"
        address = "192.0.2.1"
        port = 80
        scheduler = "maglev"
        maglev_table_size = 65536
        persistence = { timeout = "forever" }
        [[vip.backend]]
        address = "10.0.0.1"
        [[vip]]
        name = "b"
        address = "192.0.2.2"
        port = 80
        maglev_table_size = 4099
        persistence = { timeout = "0s" }
        [[vip.backend]]
        address = "10.0.0.1"
    "#,
    );
    got.sort();
    assert_eq!(
        got,
        vec![
            "datapath.retire_idle",
            "datapath.wlc_period_ms",
            "vip[0].maglev_table_size",
            "vip[0].persistence.timeout",
            "vip[1].maglev_table_size",
            "vip[1].persistence.timeout",
        ]
    );
    for bad in ["25h", "soon", "-1s"] {
        let text = format!(
            "[datapath]\nretire_idle = \"{bad}\"\n[[vip]]\nname = \"a\"\n\
             address = \"192.0.2.1\"\nport = 80\n[[vip.backend]]\naddress = \"10.0.0.1\"\n"
        );
        assert_eq!(keys(&text), vec!["datapath.retire_idle"], "{bad}");
    }
    assert_eq!(parse_duration_s("90"), Ok(90));
    assert_eq!(parse_duration_s("2h"), Ok(7200));
    assert!(parse_duration_s("5d").is_err());
}

#[test]
fn the_documented_example_is_valid() {
    let c = parse(include_str!("../../../examples/foobar.toml")).unwrap();
    assert_eq!(c.datapath.interface.as_deref(), Some("eth0"));
    assert_eq!(c.vips.len(), 1);
    assert_eq!(c.vips[0].backends.len(), 2);
}

#[test]
fn empty_config_is_valid_and_defaults_to_native() {
    let c = parse("").unwrap();
    assert_eq!(c.datapath.xdp_mode, AttachMode::Native);
    assert_eq!(c.datapath.flow_table_size, FLOW_TABLE_DEFAULT);
    assert!(c.vips.is_empty());
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = r#"
        [datapath]
        xdp_mode = "fast"
        flow_table_size = 10

        [[vip]]
        address = "192.0.2.300"
        port = 70000
        protocol = "sctp"
        scheduler = "random"
        forwarding = "tunnel"

        [[vip.backend]]
        address = "10.0.0.1"
        weight = 999

        [[vip.backend]]
        address = "10.0.0.1"
    "#;
    let mut got = keys(text);
    got.sort();
    let mut want = vec![
        "datapath.flow_table_size",
        "datapath.xdp_mode",
        "vip[0].address",
        "vip[0].backend[0].weight",
        "vip[0].backend[1].address",
        "vip[0].forwarding",
        "vip[0].name",
        "vip[0].port",
        "vip[0].protocol",
        "vip[0].scheduler",
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn duplicate_names_and_services_are_rejected() {
    let text = r#"
        [[vip]]
        name = "a"
        address = "192.0.2.1"
        port = 80
        backend = [{ address = "10.0.0.1" }]
        [[vip]]
        name = "a"
        address = "192.0.2.1"
        port = 80
        backend = [{ address = "10.0.0.1" }]
        [[vip]]
        name = "b"
        address = "192.0.2.1"
        port = 80
        protocol = "udp"
        backend = [{ address = "10.0.0.1" }]
    "#;
    let p = problems(text);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].key, "vip[1].name");
    assert_eq!(p[1].key, "vip[1]");
    assert!(
        p[1].message.contains("192.0.2.1:80/tcp"),
        "{}",
        p[1].message
    );
}

#[test]
fn backend_interface_makes_a_two_arm_node_of_another_interface() {
    let c = parse("[datapath]\ninterface = \"eth0\"\nbackend_interface = \"eth1\"\n").unwrap();
    assert_eq!(c.datapath.backend_interface.as_deref(), Some("eth1"));
    assert_eq!(parse("").unwrap().datapath.backend_interface, None);
    let p = problems("[datapath]\ninterface = \"eth0\"\nbackend_interface = \"eth0\"\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "datapath.backend_interface");
    assert!(p[0].message.contains("two interfaces"), "{}", p[0].message);
    let p = problems(
        "[datapath]\ninterface = \"eth0\"\nbackend_interface = \"eth1\"\n\
         [[vip]]\nname = \"w6\"\naddress = \"2001:db8::10\"\nport = 80\nforwarding = \"dsr\"\n\
         [[vip.backend]]\naddress = \"2001:db8::11\"\n",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "vip[0].address");
    assert!(p[0].message.contains("IPv4-only"), "{}", p[0].message);
    let p = problems("[datapath]\nbackend_interface = \"a b\"\n");
    assert_eq!(p[0].key, "datapath.backend_interface");
}

#[test]
fn unknown_keys_and_syntax_errors_name_the_key_and_line() {
    let p = problems("[datapath]\ninterface = \"eth0\"\nspeed = 10\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "datapath.speed");
    assert!(
        p[0].message.contains("unknown field `speed`") && p[0].message.contains("line 3, column 1"),
        "{}",
        p[0].message
    );

    let p = problems("[[vip]\n");
    assert!(p[0].key.starts_with("line 1"), "{:?}", p[0]);
}

#[test]
fn ipv6_and_special_addresses_get_specific_messages() {
    let text = r#"
        [[vip]]
        name = "v6"
        address = "2001:db8::1"
        port = 80
        backend = [{ address = "10.0.0.1" }]
        [[vip]]
        name = "mc"
        address = "224.0.0.18"
        port = 80
        backend = [{ address = "10.0.0.1" }]
    "#;
    let p = problems(text);
    // An IPv6 VIP is served (docs/IPV6.md), but not with nat, the default,
    // nor with IPv4 backends.
    assert_eq!(p[0].key, "vip[0].forwarding", "{p:?}");
    assert!(p[1].message.contains("families differ"), "{p:?}");
    assert!(p[2].message.contains("multicast"), "{p:?}");
}

#[test]
fn rings_larger_than_the_datapath_are_rejected() {
    // 256 backends of co-prime weights 256 and 255 need > 65537 slots.
    let mut text = String::from("[[vip]]\nname = \"big\"\naddress = \"192.0.2.1\"\nport = 80\n");
    for i in 0..300u32 {
        let w = if i % 2 == 0 { 256 } else { 255 };
        text.push_str(&format!(
            "[[vip.backend]]\naddress = \"10.{}.{}.1\"\nweight = {w}\n",
            i / 256,
            i % 256
        ));
    }
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "vip[0].backend");
}

#[test]
fn error_display_names_file_key_and_problem() {
    let err = ConfigError {
        file: "/etc/foobar/foobar.toml".into(),
        problems: problems(
            "[[vip]]\nname = \"x\"\naddress = \"nope\"\nport = 1\n\
             [[vip.backend]]\naddress = \"10.0.0.1\"\n",
        ),
    };
    let text = err.to_string();
    assert!(text.contains("1 problem; nothing was applied"), "{text}");
    assert!(
        text.contains(
            "/etc/foobar/foobar.toml: vip[0].address: \"nope\" is not an IPv4 or IPv6 address"
        ),
        "{text}"
    );
}

/// One VIP "web" on 192.0.2.10:80 with `vip` extra keys and backend keys
/// `backend` (a second, good backend follows unless `backend` is empty).
fn one_vip(vip: &str, backend: &str) -> String {
    let mut text = format!("[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n{vip}\n");
    if !backend.is_empty() {
        text.push_str(&format!("[[vip.backend]]\n{backend}\n"));
        text.push_str("[[vip.backend]]\naddress = \"10.0.0.12\"\n");
    }
    text
}

/// Every bad input the issue lists: rejected, at the key it names, with a
/// message an operator can act on.
#[test]
fn bad_configs_are_rejected_at_their_key() {
    let ok_backend = "address = \"10.0.0.11\"";
    let http = |key: &str, value: &str| {
        one_vip(
            &format!("[vip.health]\ncheck = \"http\"\n{key} = {value}"),
            ok_backend,
        )
    };
    let backend = |address: &str| one_vip("", &format!("address = \"{address}\""));
    let cases: Vec<(&str, String, &str, &str)> =
        vec![
        (
            "http_path with a space",
            http("http_path", r#""/a b""#),
            "vip[0].health.http_path",
            "contains ' '",
        ),
        (
            "http_path with CR/LF",
            http("http_path", r#""/a\r\nX-Evil: 1""#),
            "vip[0].health.http_path",
            "contains '\\r'",
        ),
        (
            "http_path with a NUL",
            http("http_path", r#""/\u0000""#),
            "vip[0].health.http_path",
            "contains '\\0'",
        ),
        (
            "http_path not from /",
            http("http_path", r#""healthz""#),
            "vip[0].health.http_path",
            "must start with '/'",
        ),
        (
            "http_host with a space",
            http("http_host", r#""a b""#),
            "vip[0].health.http_host",
            "contains ' '",
        ),
        (
            "http_host with LF",
            http("http_host", r#""a\nb""#),
            "vip[0].health.http_host",
            "contains '\\n'",
        ),
        (
            "http_host empty",
            http("http_host", r#""""#),
            "vip[0].health.http_host",
            "empty",
        ),
        (
            "backend's own http_path",
            one_vip(
                "",
                "address = \"10.0.0.11\"\nhealth = { check = \"http\", http_path = \"/a\\tb\" }",
            ),
            "vip[0].backend[0].health.http_path",
            "contains '\\t'",
        ),
        (
            "backend 0.0.0.0",
            backend("0.0.0.0"),
            "vip[0].backend[0].address",
            "unspecified",
        ),
        (
            "backend broadcast",
            backend("255.255.255.255"),
            "vip[0].backend[0].address",
            "broadcast",
        ),
        (
            "backend loopback",
            backend("127.0.0.1"),
            "vip[0].backend[0].address",
            "loopback",
        ),
        (
            "backend multicast",
            backend("224.0.0.1"),
            "vip[0].backend[0].address",
            "multicast",
        ),
        (
            "backend = the VIP",
            backend("192.0.2.10"),
            "vip[0].backend[0].address",
            "VIP's own address",
        ),
        (
            "VIP name with a space",
            one_vip("", ok_backend).replace("\"web\"", "\"my web\""),
            "vip[0].name",
            "contains ' '",
        ),
        (
            "VIP name with a newline",
            one_vip("", ok_backend).replace("\"web\"", r#""web\nx""#),
            "vip[0].name",
            "contains '\\n'",
        ),
        (
            "VIP name with a quote",
            one_vip("", ok_backend).replace("\"web\"", r#""we\"b""#),
            "vip[0].name",
            "contains '\"'",
        ),
        (
            "VIP name with an escape",
            one_vip("", ok_backend).replace("\"web\"", r#""\u001b[31m""#),
            "vip[0].name",
            "contains '\\u{1b}'",
        ),
        (
            "VIP name too long",
            one_vip("", ok_backend).replace("\"web\"", &format!("\"{}\"", "w".repeat(65))),
            "vip[0].name",
            "at most 64",
        ),
        (
            "interface with a newline",
            format!(
                "[datapath]\ninterface = \"eth0\\n\"\n{}",
                one_vip("", ok_backend)
            ),
            "datapath.interface",
            "not a valid interface name",
        ),
        (
            "VIP without backends",
            one_vip("", ""),
            "vip[0].backend",
            "drops all its traffic",
        ),
        (
            "VIP whose backends all have weight 0",
            one_vip("", "address = \"10.0.0.11\"\nweight = 0")
                .replace("address = \"10.0.0.12\"", "address = \"10.0.0.12\"\nweight = 0"),
            "vip[0].backend",
            "every backend has weight 0",
        ),
        (
            "Maglev table smaller than its backends",
            one_vip("scheduler = \"maglev\"\nmaglev_table_size = 13", ok_backend),
            "vip[0].maglev_table_size",
            "at least 10 per backend",
        ),
        (
            "Maglev table too small for a light weight",
            one_vip(
                "scheduler = \"maglev\"\nmaglev_table_size = 251",
                "address = \"10.0.0.11\"\nweight = 256",
            )
            .replace(
                "address = \"10.0.0.12\"",
                "address = \"10.0.0.12\"\nweight = 1",
            ),
            "vip[0].maglev_table_size",
            "weight 1",
        ),
        (
            "weight of the wrong type",
            one_vip("", "address = \"10.0.0.11\"\nweight = \"heavy\""),
            "vip[0].backend[0].weight",
            "expected an integer, found a string \"heavy\"",
        ),
        (
            "port of the wrong type",
            one_vip("", ok_backend).replace("port = 80", "port = \"80\""),
            "vip[0].port",
            "expected an integer, found a string",
        ),
        (
            "VLAN id out of range",
            one_vip("vlan = 4095", ok_backend),
            "vip[0].vlan",
            "is not a VLAN id",
        ),
        (
            "closed_ports neither drop nor pass",
            one_vip("closed_ports = \"open\"", ok_backend),
            "vip[0].closed_ports",
            "is not a choice",
        ),
        (
            "two VIPs of one address disagree on closed ports",
            format!(
                "{}{}",
                one_vip("closed_ports = \"pass\"", ok_backend),
                one_vip("", ok_backend)
                    .replace("name = \"web\"", "name = \"web2\"")
                    .replace("port = 80", "port = 443")
            ),
            "vip[1].closed_ports",
            "closed ports are a property of the address",
        ),
        (
            "affinity table of 0 entries",
            format!("[datapath]\naffinity_table_size = 0\n{}", one_vip("", ok_backend)),
            "datapath.affinity_table_size",
            "out of range",
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, key, message) in &cases {
        match parse(text) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(p) => {
                if !p
                    .iter()
                    .any(|p| p.key == *key && p.message.contains(message))
                {
                    failures.push(format!("{name}: want {key}: ..{message}.., got {p:?}"));
                }
                if let Some(raw) = p
                    .iter()
                    .find(|p| p.message.contains(['\n', '\r', '\u{1b}']))
                {
                    failures.push(format!("{name}: raw control character in {raw:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn type_errors_name_the_full_key_path() {
    let text = "[[vip]]\nname = \"a\"\naddress = \"192.0.2.1\"\nport = 80\n\
                [[vip.backend]]\naddress = \"10.0.0.1\"\n\
                [[vip]]\nname = \"b\"\naddress = \"192.0.2.2\"\nport = 80\n\
                [[vip.backend]]\naddress = \"10.0.0.1\"\nweight = \"heavy\"\n";
    let p = problems(text);
    assert_eq!(
        p,
        vec![Problem {
            key: "vip[1].backend[0].weight".into(),
            message: "expected an integer, found a string \"heavy\" (at line 13, column 10)".into(),
        }]
    );
    let p = problems("[[vip]]\nname = \"x\"\n[vip.health]\nhttp_status = [\"a\"]\n");
    assert_eq!(p[0].key, "vip[0].health.http_status[0]");
    let p = problems("[datapath]\nflow_table_size = 1.5\n");
    assert_eq!(p[0].key, "datapath.flow_table_size");
    assert!(
        p[0].message
            .starts_with("expected an integer, found a float 1.5"),
        "{p:?}"
    );
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("foobar-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `load` on another thread, so a regression that blocks fails the test
/// instead of hanging it.
fn load_within(path: &Path, limit: std::time::Duration) -> Result<Config, ConfigError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(load(&path));
    });
    rx.recv_timeout(limit)
        .expect("load must return at once, whatever the file is")
}

#[test]
fn only_small_regular_files_are_read() {
    let dir = TempDir::new("files");
    let limit = std::time::Duration::from_secs(5);
    let fifo = dir.0.join("fifo.toml");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let big = dir.0.join("big.toml");
    std::fs::write(&big, "#".repeat(MAX_FILE_SIZE as usize + 1)).unwrap();
    let cases = [
        (fifo.as_path(), "is a FIFO"),
        (Path::new("/dev/zero"), "is a device"),
        (dir.0.as_path(), "is a directory"),
        (big.as_path(), "larger than 1048576 bytes"),
    ];
    for (path, want) in cases {
        let err = load_within(path, limit).expect_err("refused").to_string();
        assert!(
            err.contains(&format!("{}: (file): {want}", path.display())),
            "{}: {err}",
            path.display()
        );
    }
    let good = dir.0.join("good.toml");
    std::fs::write(&good, GOOD).unwrap();
    let (config, text) = load_with_text(&good).unwrap();
    assert_eq!((config, text.as_str()), (parse(GOOD).unwrap(), GOOD));
}

/// `foobar run` builds its state from the validated config with the same
/// checks `foobar vip add` / `backend add` use: whatever `check` accepts,
/// that build accepts too (only host facts, such as MACs, can still fail).
#[test]
fn run_accepts_every_config_check_accepts() {
    let mut many = String::from(
        "[[vip]]\nname = \"m\"\naddress = \"192.0.2.1\"\nport = 0\nscheduler = \"maglev\"\n",
    );
    for i in 0..1024 {
        many.push_str(&format!(
            "[[vip.backend]]\naddress = \"10.{}.{}.1\"\nweight = {}\n",
            i / 256,
            i % 256,
            if i == 0 { 16 } else { 1 },
        ));
    }
    let corpus = [
        GOOD.to_owned(),
        include_str!("../../../examples/foobar.toml").to_owned(),
        one_vip("scheduler = \"maglev\"\nmaglev_table_size = 31", "address = \"10.0.0.11\"\nweight = 3"),
        one_vip(
            "[vip.health]\ncheck = \"http\"\nhttp_path = \"/health%20z?x=1\"\nhttp_host = \"www.example.com\"",
            "address = \"10.0.0.11\"",
        )
        .replace("\"web\"", &format!("\"{}\"", "a.b_c-D9".repeat(8))),
        many,
    ];
    // `foobar run` resolves nat VIPs' SNAT address on its interface first.
    let eth0 = crate::snat::IfaceAddrs {
        iface: "eth0".into(),
        addrs: vec![(Ipv4Addr::new(10, 0, 0, 2), 24, true)],
    };
    for text in &corpus {
        let mut config = parse(text).unwrap_or_else(|p| panic!("{p:?}\n{text}"));
        crate::snat::fill_default(&mut config, &eth0).unwrap();
        let saved = crate::state::saved_from_config(&config);
        let macs = config
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.address, [2, 0, 0, 0, 0, 1])))
            .collect();
        crate::state::State::build(&saved, &macs)
            .unwrap_or_else(|e| panic!("check accepted what run refuses: {e}\n{text}"));
    }
}

/// `foobar vip add` and `foobar backend add` refuse what the file refuses,
/// through the same rule functions.
#[test]
fn runtime_operations_apply_the_same_rules() {
    use crate::state::{Admin, BackendSpec, State, StateError, VipSpec};
    let config = parse(&one_vip("forwarding = \"dsr\"", "address = \"10.0.0.11\"")).unwrap();
    let spec = VipSpec::from_config(&config.vips[0]);
    let mut state = State::default();
    for bad in ["my web", "web\n", "a\"b", "\u{1b}[2J", ""] {
        let err = state
            .add_vip(VipSpec {
                name: bad.into(),
                ..spec.clone()
            })
            .expect_err(bad);
        assert!(
            matches!(&err, StateError::Invalid(m) if m.starts_with("VIP name") && !m.contains(['\n', '\u{1b}'])),
            "{bad:?}: {err}"
        );
    }
    let err = state
        .add_vip(VipSpec {
            address: Ipv4Addr::LOCALHOST.into(),
            ..spec.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    state.add_vip(spec.clone()).unwrap();

    let backend = |address: &str, weight: u32| BackendSpec {
        port: None,
        address: address.parse().unwrap(),
        weight,
        admin: Admin::Enabled,
        health: HealthSpec::default(),
    };
    for (address, why) in [
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.5", "multicast"),
        ("192.0.2.10", "VIP's own address"),
    ] {
        let err = state
            .check_add_backend("web", &backend(address, 1))
            .expect_err(address);
        assert!(err.to_string().contains(why), "{address}: {err}");
    }
    state
        .check_add_backend("web", &backend("10.0.0.11", 1))
        .unwrap();

    // A Maglev VIP of 13 slots holds one backend (10 slots each), not two.
    let maglev = VipSpec {
        name: "m".into(),
        address: Ipv4Addr::new(192, 0, 2, 20).into(),
        scheduler: Scheduler::Maglev,
        maglev_table_size: 13,
        ..spec
    };
    state.add_vip(maglev).unwrap();
    state
        .add_backend("m", backend("10.0.0.21", 1), [2, 0, 0, 0, 0, 21])
        .unwrap();
    let err = state
        .check_add_backend("m", &backend("10.0.0.22", 1))
        .unwrap_err();
    assert!(err.to_string().contains("maglev_table_size"), "{err}");
}

#[test]
fn vlan_and_closed_ports_are_read_and_one_address_may_serve_each_vlan() {
    let text = format!(
        "{}{}",
        one_vip(
            "vlan = 100\nclosed_ports = \"pass\"",
            "address = \"10.0.0.11\""
        ),
        one_vip("", "address = \"10.0.0.21\"")
            .replace("name = \"web\"", "name = \"web-untagged\"")
            .replace("10.0.0.12", "10.0.0.22")
    );
    let c = parse(&text).expect("the same service on another VLAN is another VIP");
    assert_eq!(c.vips[0].vlan, Some(100));
    assert!(c.vips[0].pass_closed_ports);
    assert_eq!(c.vips[1].vlan, None);
    assert!(
        !c.vips[1].pass_closed_ports,
        "closed ports are dropped by default"
    );
}

#[test]
fn a_backend_address_is_on_one_vlan_only() {
    // 10.0.0.11 backs "web" on VLAN 100 and "web-untagged" untagged: its
    // MAC and health are found by address, so it cannot be both hosts.
    let text = format!(
        "{}{}",
        one_vip("vlan = 100", "address = \"10.0.0.11\""),
        one_vip("", "address = \"10.0.0.11\"")
            .replace("name = \"web\"", "name = \"web-untagged\"")
            .replace("10.0.0.12", "10.0.0.22")
    );
    let problems = parse(&text).unwrap_err();
    assert!(
        problems.iter().any(|p| p.key == "vip[1].backend[0].address"
            && p.message.starts_with(
                "10.0.0.11 is a backend of VIP web on VLAN 100, and this VIP is untagged"
            )),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    // The same address on the same VLAN, in two VIPs, is one host: fine.
    let same = format!(
        "{}{}",
        one_vip("vlan = 100", "address = \"10.0.0.11\""),
        one_vip("vlan = 100", "address = \"10.0.0.11\"")
            .replace("name = \"web\"", "name = \"web2\"")
            .replace("port = 80", "port = 443")
    );
    parse(&same).expect("one host behind two VIPs of its VLAN");
}

#[test]
fn backend_add_keeps_an_address_on_one_vlan() {
    use crate::state::{Admin, BackendSpec, State, StateError, VipSpec};
    let config = parse(&one_vip(
        "vlan = 100\nforwarding = \"dsr\"",
        "address = \"10.0.0.11\"",
    ))
    .unwrap();
    let web100 = VipSpec {
        name: "web100".into(),
        ..VipSpec::from_config(&config.vips[0])
    };
    let mut state = State::default();
    state.add_vip(web100.clone()).unwrap();
    state
        .add_vip(VipSpec {
            name: "web".into(),
            vlan: None,
            ..web100
        })
        .unwrap();
    let spec = BackendSpec {
        address: "10.0.0.11".parse().unwrap(),
        weight: 1,
        port: None,
        admin: Admin::Enabled,
        health: HealthSpec::default(),
    };
    state.add_backend("web100", spec.clone(), None).unwrap();
    let err = state.add_backend("web", spec, None).unwrap_err();
    assert!(
        matches!(&err, StateError::Invalid(m)
            if m.starts_with("10.0.0.11 is a backend of VIP web100 on VLAN 100, and this VIP is untagged")),
        "{err}"
    );
}

#[test]
fn vrrp_instances_resolve_vip_names_to_distinct_addresses() {
    let text = format!(
        "{GOOD}
    [[vrrp]]
    vrid = 51
    priority = 150
    advert_interval_ms = 100
    preempt_delay_ms = 5000
    vips = [\"web\", \"dns\"]

    [[vrrp]]
    vrid = 52
    interface = \"eth1\"
    preempt = false
    vips = []
"
    );
    // The second has no VIPs: refused, with the key.
    assert_eq!(keys(&text), vec!["vrrp[1].vips"]);
    let text = text.replace("vips = []", "vips = [\"other\"]")
        + "[[vip]]\nname = \"other\"\naddress = \"192.0.2.20\"\nport = 443\n\
           [[vip.backend]]\naddress = \"10.0.0.31\"\n";
    let config = parse(&text).expect("valid");
    assert_eq!(
        config.vrrp,
        vec![
            VrrpInstance {
                vrid: 51,
                interface: None,
                priority: 150,
                advert_interval_cs: 10,
                preempt: true,
                preempt_delay: std::time::Duration::from_secs(5),
                vip_names: vec!["web".into(), "dns".into()],
                // web and dns share 192.0.2.10: held once.
                addresses: vec!["192.0.2.10".parse().unwrap()],
                track: Default::default(),
                unicast_peers: vec![],
                unicast_source: None,
                garp: Default::default(),
                use_vmac: false,
            },
            VrrpInstance {
                vrid: 52,
                interface: Some("eth1".into()),
                priority: 100,
                advert_interval_cs: 100,
                preempt: false,
                preempt_delay: std::time::Duration::ZERO,
                vip_names: vec!["other".into()],
                addresses: vec!["192.0.2.20".parse().unwrap()],
                track: Default::default(),
                unicast_peers: vec![],
                unicast_source: None,
                garp: Default::default(),
                use_vmac: false,
            },
        ]
    );
    let spec = config.vrrp[0].spec("eth0");
    assert_eq!(spec.iface, "eth0");
    assert_eq!(
        spec.vips,
        vec!["192.0.2.10".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(config.vrrp[1].spec("eth0").iface, "eth1");
}

#[test]
fn vrrp_problems_are_all_reported_at_their_keys() {
    let text = format!(
        "{GOOD}
    [[vrrp]]
    vrid = 0
    priority = 0
    advert_interval_ms = 15
    preempt_delay_ms = -1
    interface = \"\"
    vips = [\"web\", \"nope\"]

    [[vrrp]]
    priority = 256
    advert_interval_ms = 40960
    vips = [\"dns\"]

    [[vrrp]]
    vrid = 7
    preempt = false
    preempt_delay_ms = 10
    vips = [\"web\"]

    [[vrrp]]
    vrid = 7
    vips = [\"web\"]
"
    );
    let mut got = keys(&text);
    got.sort();
    let mut want = vec![
        "vrrp[0].vrid",
        "vrrp[0].priority",
        "vrrp[0].advert_interval_ms",
        "vrrp[0].preempt_delay_ms",
        "vrrp[0].interface",
        "vrrp[0].vips[1]",
        "vrrp[1].vrid",
        "vrrp[1].priority",
        "vrrp[1].advert_interval_ms",
        // dns has web's address, which vrrp[0] holds.
        "vrrp[1].vips[0]",
        "vrrp[2].preempt_delay_ms",
        "vrrp[2].vips[0]",
        "vrrp[3].vrid",
        "vrrp[3].vips[0]",
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(problems(&text)
        .iter()
        .any(|p| p.key == "vrrp[0].vips[1]" && p.message.contains("no [[vip]] is named \"nope\"")));
}

#[test]
fn vrrp_unknown_keys_are_refused() {
    let text = format!("{GOOD}\n[[vrrp]]\nvrid = 1\nvips = [\"web\"]\nunicast_peer = []\n");
    assert_eq!(keys(&text), vec!["vrrp[0].unicast_peer"]);
}

#[test]
fn ipip_needs_a_source_and_the_source_is_an_address_or_a_prefix() {
    let vip = r#"
        [[vip]]
        name = "t"
        address = "192.0.2.40"
        port = 80
        forwarding = "ipip"
        backend = [{ address = "10.0.0.41" }]
    "#;
    assert_eq!(keys(vip), vec!["vip[0].forwarding"]);
    let with = |source: &str| format!("[datapath]\nipip_source = \"{source}\"\n{vip}");
    let ok = parse(&with("10.9.0.0/24")).expect("a /24 is valid");
    assert_eq!(ok.vips[0].forwarding, Forwarding::Ipip);
    assert_eq!(
        ok.datapath.ipip_source,
        Some((Ipv4Addr::new(10, 9, 0, 0), 24))
    );
    assert_eq!(
        parse(&with("10.9.0.7")).unwrap().datapath.ipip_source,
        Some((Ipv4Addr::new(10, 9, 0, 7), 32))
    );
    for bad in [
        "10.9.0.1/24",
        "10.9.0.0/8",
        "10.9.0.0/33",
        "0.0.0.0",
        "nope",
        "::1",
    ] {
        assert_eq!(
            keys(&with(bad)),
            vec!["datapath.ipip_source"],
            "{bad} must be refused"
        );
    }
    // A dsr-only config needs no source.
    assert!(parse(&vip.replace("\"ipip\"", "\"dsr\"")).is_ok());
}

#[test]
fn nat_vips_get_their_own_or_the_node_snat_address_and_the_node_settings() {
    let text = r#"
        [datapath]
        snat_address = "10.0.0.1"
        snat_ports = "30000-39999"
        nat_tcp_idle = "10m"
        nat_udp_idle = "45s"
        nat_linger = "5s"

        [[vip]]
        name = "node"
        address = "192.0.2.10"
        port = 80
        forwarding = "nat"
        [[vip.backend]]
        address = "10.0.0.11"
        port = 8080

        [[vip]]
        name = "own"
        address = "192.0.2.11"
        port = 80
        forwarding = "nat"
        snat_address = "10.0.0.2"
        [[vip.backend]]
        address = "10.0.0.12"

        [[vip]]
        name = "dsr"
        address = "192.0.2.12"
        port = 80
        forwarding = "dsr"
        [[vip.backend]]
        address = "10.0.0.13"
    "#;
    let c = parse(text).expect("valid");
    let want = NatSettings {
        snat_address: "10.0.0.1".parse().unwrap(),
        port_min: 30000,
        port_max: 39999,
        tcp_idle_s: 600,
        udp_idle_s: 45,
        linger_s: 5,
    };
    assert_eq!(c.vips[0].forwarding, Forwarding::Nat);
    assert_eq!(c.vips[0].nat, Some(want));
    assert_eq!(c.vips[0].backends[0].port, Some(8080));
    assert_eq!(
        c.vips[1].nat,
        Some(NatSettings {
            snat_address: "10.0.0.2".parse().unwrap(),
            ..want
        })
    );
    assert_eq!(c.vips[2].nat, None);
    // The defaults, documented in examples/foobar.toml and docs/NAT.md.
    let d = parse("").expect("valid").datapath.nat;
    assert_eq!(d.snat_address, None);
    assert_eq!((d.settings.port_min, d.settings.port_max), (1024, 32767));
    assert_eq!(
        (
            d.settings.tcp_idle_s,
            d.settings.udp_idle_s,
            d.settings.linger_s
        ),
        (300, 30, 2)
    );
}

#[test]
fn nat_keys_are_refused_where_they_cannot_work() {
    let vip = |extra: &str, backend: &str| {
        format!(
            "[[vip]]\nname = \"a\"\naddress = \"192.0.2.10\"\nport = 80\n{extra}\n\
             [[vip.backend]]\naddress = \"10.0.0.11\"\n{backend}\n"
        )
    };
    // A nat VIP without any SNAT address is valid: `foobar run` gives it
    // the interface's primary address.
    let c = parse(&vip("", "")).expect("valid");
    assert!(c.vips[0]
        .nat
        .is_some_and(|n| n.snat_address.is_unspecified()));
    // An SNAT address or a backend port on a DSR VIP.
    assert_eq!(
        keys(&vip(
            "forwarding = \"dsr\"\nsnat_address = \"10.0.0.1\"",
            ""
        )),
        vec!["vip[0].snat_address"]
    );
    assert_eq!(
        keys(&vip("forwarding = \"dsr\"", "port = 8080")),
        vec!["vip[0].backend[0].port"]
    );
    assert_eq!(
        keys(&vip(
            "forwarding = \"nat\"\nsnat_address = \"10.0.0.1\"",
            "port = 0"
        )),
        vec!["vip[0].backend[0].port"]
    );
    assert_eq!(
        keys(&vip(
            "forwarding = \"nat\"\nsnat_address = \"224.0.0.1\"",
            ""
        )),
        vec!["vip[0].snat_address"]
    );
    for bad in ["80-90", "30000", "40000-30000", "a-b", "20000-70000"] {
        let text = format!("[datapath]\nsnat_ports = \"{bad}\"\n{}", vip("", ""));
        assert_eq!(keys(&text), vec!["datapath.snat_ports"], "{bad}");
    }
    for key in ["nat_tcp_idle", "nat_udp_idle", "nat_linger"] {
        let text = format!("[datapath]\n{key} = \"0s\"\n{}", vip("", ""));
        assert_eq!(keys(&text), vec![format!("datapath.{key}")], "{key}");
    }
}

#[test]
fn flow_table_mode_defaults_to_shared_and_takes_per_cpu() {
    assert_eq!(
        parse("").unwrap().datapath.flow_table,
        FlowTableMode::Shared
    );
    let c = parse("[datapath]\nflow_table = \"per-cpu\"\n").unwrap();
    assert_eq!(c.datapath.flow_table, FlowTableMode::PerCpu);
    let c = parse("[datapath]\nflow_table = \"shared\"\n").unwrap();
    assert_eq!(c.datapath.flow_table, FlowTableMode::Shared);
    let p = problems("[datapath]\nflow_table = \"percpu\"\n");
    assert_eq!(p[0].key, "datapath.flow_table");
    assert!(p[0].message.contains("\"per-cpu\""), "{}", p[0].message);
}

const V6: &str = r#"
    [datapath]
    ipip_source6 = "2001:db8:9::1"

    [[vip]]
    name = "web6"
    address = "2001:db8::10"
    port = 80
    forwarding = "dsr"

    [[vip.backend]]
    address = "fd00::11"

    [[vip]]
    name = "tun6"
    address = "2001:db8::20"
    port = 443
    forwarding = "ipip"

    [[vip.backend]]
    address = "fd00::21"

    [[vip]]
    name = "web4"
    address = "192.0.2.10"
    port = 80

    [[vip.backend]]
    address = "10.0.0.11"
"#;

#[test]
fn a_dual_stack_config_parses() {
    let c = parse(V6).unwrap();
    let a = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(c.vips[0].address, a("2001:db8::10"));
    assert_eq!(c.vips[0].backends[0].address, a("fd00::11"));
    assert_eq!(c.vips[0].forwarding, Forwarding::Dsr);
    assert_eq!(c.vips[1].forwarding, Forwarding::Ipip);
    assert_eq!(c.vips[2].address, a("192.0.2.10"));
    assert_eq!(c.vips[2].forwarding, Forwarding::Nat);
}

#[test]
fn an_ipv6_vip_must_name_dsr_or_ipip() {
    let implicit = V6.replacen("forwarding = \"dsr\"\n", "", 1);
    let p = problems(&implicit);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "vip[0].forwarding");
    assert!(
        p[0].message.contains("forwarding = \"dsr\"") && p[0].message.contains("\"ipip\""),
        "{}",
        p[0].message
    );
    let nat = V6.replacen("forwarding = \"dsr\"", "forwarding = \"nat\"", 1);
    let p = problems(&nat);
    assert_eq!(keys(&nat), ["vip[0].forwarding"]);
    assert!(p[0].message.contains("IPv4-only"), "{}", p[0].message);
    let dnat = V6.replacen("forwarding = \"dsr\"", "forwarding = \"dnat\"", 1);
    let p = problems(&dnat);
    assert!(
        keys(&dnat).contains(&"vip[0].forwarding".to_string()),
        "{p:?}"
    );
    assert!(p.iter().any(|p| p.message.contains("IPv4-only")), "{p:?}");
}

#[test]
fn families_do_not_mix_within_a_vip() {
    let mixed = V6.replacen("address = \"fd00::11\"", "address = \"10.0.0.99\"", 1);
    let p = problems(&mixed);
    assert_eq!(keys(&mixed), ["vip[0].backend[0].address"]);
    assert!(p[0].message.contains("families differ"), "{}", p[0].message);
    let mixed = V6.replacen("address = \"10.0.0.11\"", "address = \"fd00::99\"", 1);
    assert_eq!(keys(&mixed), ["vip[2].backend[0].address"]);
}

#[test]
fn ipv6_ipip_needs_the_ipv6_outer_source() {
    let without = V6.replacen("ipip_source6 = \"2001:db8:9::1\"", "", 1);
    let p = problems(&without);
    assert_eq!(keys(&without), ["vip[1].forwarding"]);
    assert!(p[0].message.contains("ipip_source6"), "{}", p[0].message);
}

#[test]
fn ipv6_vips_stay_out_of_vrrp() {
    let text = format!(
        "{V6}\n[[vrrp]]\nvrid = 7\ninterface = \"eth0\"\npriority = 100\nvips = [\"web4\", \"web6\"]\n"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].message.contains("VRRP here is IPv4 only"),
        "{}",
        p[0].message
    );
}
