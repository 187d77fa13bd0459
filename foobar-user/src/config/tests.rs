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
    assert_eq!(web.forwarding, Forwarding::Dsr);
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
        [[vip]]
        name = "a"
        address = "192.0.2.1"
        port = 80
        scheduler = "maglev"
        maglev_table_size = 4099
        persistence = { timeout = "5m" }
        [[vip]]
        name = "b"
        address = "192.0.2.2"
        port = 80
        scheduler = "wlc"
    "#,
    )
    .unwrap();
    assert_eq!(c.datapath.hash_seed, 7);
    assert_eq!(c.vips[0].scheduler, Scheduler::Maglev);
    assert_eq!(c.vips[0].maglev_table_size, 4099);
    assert_eq!(c.vips[0].affinity_timeout_s, Some(300));
    assert_eq!(c.vips[1].scheduler, Scheduler::LeastConn);
    assert_eq!(c.vips[1].affinity_timeout_s, None);

    let mut got = keys(
        r#"
        [datapath]
        wlc_period_ms = 5
        [[vip]]
        name = "a"
        address = "192.0.2.1"
        port = 80
        scheduler = "maglev"
        maglev_table_size = 65536
        persistence = { timeout = "forever" }
        [[vip]]
        name = "b"
        address = "192.0.2.2"
        port = 80
        maglev_table_size = 4099
        persistence = { timeout = "0s" }
    "#,
    );
    got.sort();
    assert_eq!(
        got,
        vec![
            "datapath.wlc_period_ms",
            "vip[0].maglev_table_size",
            "vip[0].persistence.timeout",
            "vip[1].maglev_table_size",
            "vip[1].persistence.timeout",
        ]
    );
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
        [[vip]]
        name = "a"
        address = "192.0.2.1"
        port = 80
        [[vip]]
        name = "b"
        address = "192.0.2.1"
        port = 80
        protocol = "udp"
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
fn unknown_keys_and_syntax_errors_name_the_line() {
    let p = problems("[datapath]\ninterface = \"eth0\"\nspeed = 10\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key, "line 3, column 1");
    assert!(
        p[0].message.contains("unknown field `speed`"),
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
        [[vip]]
        name = "mc"
        address = "224.0.0.18"
        port = 80
    "#;
    let p = problems(text);
    assert!(p[0].message.contains("IPv6 is not supported yet"), "{p:?}");
    assert!(p[1].message.contains("multicast"), "{p:?}");
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
        problems: problems("[[vip]]\nname = \"x\"\naddress = \"nope\"\nport = 1\n"),
    };
    let text = err.to_string();
    assert!(text.contains("1 problem; nothing was applied"), "{text}");
    assert!(
        text.contains("/etc/foobar/foobar.toml: vip[0].address: \"nope\" is not an IPv4 address"),
        "{text}"
    );
}
