//! Prometheus text exposition (prometheus-client) of the datapath counters,
//! backend health and flow-table occupancy, served over HTTP (hyper) at
//! `/metrics`. Each scrape asks the state owner for a fresh snapshot; this
//! module only formats and serves it.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, Semaphore},
};

/// Everything one scrape reports, as read by the state owner.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// (reason, packets, bytes)
    pub reasons: Vec<(&'static str, u64, u64)>,
    /// (event, packets)
    pub events: Vec<(&'static str, u64)>,
    /// (vip, packets, bytes)
    pub vips: Vec<(String, u64, u64)>,
    pub backends: Vec<BackendSample>,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    /// Health checks that could not run for a local reason (EMFILE, ...).
    pub health_checks_not_run: u64,
}

#[derive(Clone, Debug)]
pub struct BackendSample {
    pub vip: String,
    pub backend: String,
    pub packets: u64,
    pub bytes: u64,
    pub up: bool,
    pub enabled: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    vip: String,
    backend: String,
}

/// The snapshot in Prometheus text format.
pub fn render(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("foobar");
    let counter_family = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<BackendLabels, Counter>::default();
        registry.register(name, help, f.clone());
        f
    };

    let build_info = Family::<BuildLabels, Gauge>::default();
    registry.register(
        "build_info",
        "Always 1: the version and git revision of the running foobar",
        build_info.clone(),
    );
    build_info
        .get_or_create(&BuildLabels {
            version: crate::build_info::VERSION.to_owned(),
            revision: crate::build_info::REVISION.to_owned(),
        })
        .set(1);

    let reason_packets = Family::<ReasonLabels, Counter>::default();
    let reason_bytes = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "datapath_packets",
        "Packets the XDP program saw, by the reason of its verdict",
        reason_packets.clone(),
    );
    registry.register(
        "datapath_bytes",
        "Bytes the XDP program saw, by the reason of its verdict",
        reason_bytes.clone(),
    );
    for (reason, packets, bytes) in &s.reasons {
        let l = ReasonLabels {
            reason: (*reason).to_owned(),
        };
        reason_packets.get_or_create(&l).inc_by(*packets);
        reason_bytes.get_or_create(&l).inc_by(*bytes);
    }

    let events = Family::<EventLabels, Counter>::default();
    registry.register(
        "datapath_events",
        "Datapath events counted besides the verdict (midflow_miss: a TCP segment \
         without SYN found no flow entry, e.g. evicted from a full flow table)",
        events.clone(),
    );
    for (event, packets) in &s.events {
        let l = EventLabels {
            event: (*event).to_owned(),
        };
        events.get_or_create(&l).inc_by(*packets);
    }

    let vip_packets = Family::<VipLabels, Counter>::default();
    let vip_bytes = Family::<VipLabels, Counter>::default();
    registry.register(
        "vip_packets",
        "Packets forwarded for the VIP",
        vip_packets.clone(),
    );
    registry.register(
        "vip_bytes",
        "Bytes forwarded for the VIP",
        vip_bytes.clone(),
    );
    for (vip, packets, bytes) in &s.vips {
        let l = VipLabels { vip: vip.clone() };
        vip_packets.get_or_create(&l).inc_by(*packets);
        vip_bytes.get_or_create(&l).inc_by(*bytes);
    }

    let backend_packets = counter_family(
        &mut registry,
        "backend_packets",
        "Packets forwarded to the backend",
    );
    let backend_bytes = counter_family(
        &mut registry,
        "backend_bytes",
        "Bytes forwarded to the backend",
    );
    let backend_up = Family::<BackendLabels, Gauge>::default();
    let backend_enabled = Family::<BackendLabels, Gauge>::default();
    registry.register(
        "backend_up",
        "1 if the backend's health checks pass",
        backend_up.clone(),
    );
    registry.register(
        "backend_enabled",
        "1 if the backend takes new flows (0: drained)",
        backend_enabled.clone(),
    );
    for b in &s.backends {
        let l = BackendLabels {
            vip: b.vip.clone(),
            backend: b.backend.clone(),
        };
        backend_packets.get_or_create(&l).inc_by(b.packets);
        backend_bytes.get_or_create(&l).inc_by(b.bytes);
        backend_up.get_or_create(&l).set(i64::from(b.up));
        backend_enabled.get_or_create(&l).set(i64::from(b.enabled));
    }

    let entries = Gauge::<i64>::default();
    let capacity = Gauge::<i64>::default();
    registry.register(
        "flow_table_entries",
        "Entries in the flow table",
        entries.clone(),
    );
    registry.register(
        "flow_table_capacity",
        "Size of the flow table (LRU)",
        capacity.clone(),
    );
    entries.set(s.flow_entries as i64);
    capacity.set(s.flow_capacity as i64);

    let not_run = Counter::<u64>::default();
    registry.register(
        "health_checks_not_run",
        "Health checks that could not run for a local reason (no file \
         descriptor, no memory, no local port): never counted against a backend",
        not_run.clone(),
    );
    not_run.inc_by(s.health_checks_not_run);

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// How the listener protects the daemon from its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once. Beyond it the listener stops accepting
    /// until one ends: further clients wait in the kernel's backlog and
    /// hold none of the daemon's file descriptors, so idle clients cannot
    /// starve the health checks and the control socket of descriptors.
    pub max_connections: usize,
    /// How long a client has to send a request's headers (also an idle
    /// keep-alive connection's wait for its next request).
    pub header_read_timeout: Duration,
    /// The longest any one connection is served, keep-alive included; then
    /// it is closed gracefully (a request in flight is answered first).
    pub connection_time_limit: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            connection_time_limit: Duration::from_secs(30),
        }
    }
}

/// Serves `/metrics` on `listener`; `owner` answers each scrape.
pub async fn serve(listener: TcpListener, owner: mpsc::Sender<oneshot::Sender<String>>) {
    serve_with(listener, owner, Limits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    owner: mpsc::Sender<oneshot::Sender<String>>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // E.g. out of file descriptors: say so, and do not spin.
                tracing::warn!(%err, "accepting on the metrics listener failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let owner = owner.clone();
        tokio::spawn(async move {
            serve_connection(stream, owner, limits).await;
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    owner: mpsc::Sender<oneshot::Sender<String>>,
    limits: Limits,
) {
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let owner = owner.clone();
        async move { Ok::<_, Infallible>(answer(req.uri().path(), &owner).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = tokio::time::sleep(limits.connection_time_limit) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
        }
    }
}

async fn answer(
    path: &str,
    owner: &mpsc::Sender<oneshot::Sender<String>>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    };
    if path != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "foobar serves /metrics only\n".into(),
        );
    }
    let (tx, rx) = oneshot::channel();
    if owner.send(tx).await.is_err() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match rx.await {
        Ok(text) => reply(StatusCode::OK, text),
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
    }
}

/// Binds the metrics listener, with an error that names the config key.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).await.with_context(|| {
        format!("metrics.listen {addr}: cannot listen; pick another address or set it to \"off\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_with_labels() {
        let s = Snapshot {
            reasons: vec![("forwarded", 10, 1000), ("pass_not_vip", 3, 300)],
            events: vec![("midflow_miss", 7)],
            vips: vec![("web".into(), 10, 1000)],
            backends: vec![BackendSample {
                vip: "web".into(),
                backend: "10.0.0.11".into(),
                packets: 10,
                bytes: 1000,
                up: true,
                enabled: false,
            }],
            flow_entries: 4,
            flow_capacity: 65536,
            health_checks_not_run: 2,
        };
        let text = render(&s);
        for line in [
            "foobar_datapath_packets_total{reason=\"forwarded\"} 10",
            "foobar_datapath_bytes_total{reason=\"pass_not_vip\"} 300",
            "foobar_vip_packets_total{vip=\"web\"} 10",
            "foobar_backend_bytes_total{vip=\"web\",backend=\"10.0.0.11\"} 1000",
            "foobar_backend_up{vip=\"web\",backend=\"10.0.0.11\"} 1",
            "foobar_backend_enabled{vip=\"web\",backend=\"10.0.0.11\"} 0",
            "foobar_flow_table_entries 4",
            "foobar_flow_table_capacity 65536",
            "foobar_health_checks_not_run_total 2",
            "foobar_datapath_events_total{event=\"midflow_miss\"} 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn build_info_names_version_and_revision() {
        let text = render(&Snapshot::default());
        let line = format!(
            "foobar_build_info{{version=\"{}\",revision=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("FOOBAR_GIT_REVISION")
        );
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("# HELP foobar_build_info ")),
            "{text}"
        );
    }

    /// A metrics server on 127.0.0.1 with `limits` and a fake owner.
    async fn started(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<String>>(4);
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send("foobar_up 1\n# EOF\n".into());
            }
        });
        tokio::spawn(serve_with(listener, tx, limits));
        addr
    }

    /// One scrape on a new connection: the whole HTTP answer.
    async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// How long until the server ends a connection on which nothing is sent.
    async fn idle_lifetime(addr: SocketAddr) -> std::time::Duration {
        use tokio::io::AsyncReadExt as _;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let began = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the server left an idle connection open for 10 s");
        // Closed (0) or reset; either way it holds nothing any more.
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        began.elapsed()
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_header_timeout() {
        let addr = started(Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(300),
            connection_time_limit: Duration::from_secs(60),
        })
        .await;
        let lived = idle_lifetime(addr).await;
        assert!(
            (Duration::from_millis(250)..Duration::from_secs(3)).contains(&lived),
            "{lived:?}"
        );
        assert!(scrape(addr).await.unwrap().contains("foobar_up 1"));
    }

    #[tokio::test]
    async fn no_connection_outlives_the_time_limit() {
        let addr = started(Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(60),
            connection_time_limit: Duration::from_millis(300),
        })
        .await;
        let lived = idle_lifetime(addr).await;
        assert!(
            (Duration::from_millis(250)..Duration::from_secs(3)).contains(&lived),
            "{lived:?}"
        );
    }

    #[tokio::test]
    async fn beyond_the_cap_a_client_waits_until_a_connection_ends() {
        let addr = started(Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(60),
            connection_time_limit: Duration::from_secs(60),
        })
        .await;
        let idle1 = TcpStream::connect(addr).await.unwrap();
        let _idle2 = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = tokio::spawn(scrape(addr));
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut third)
                .await
                .is_err(),
            "a third connection was served beside two idle ones"
        );
        drop(idle1);
        let answer = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("served once a slot is free")
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("foobar_up 1"), "{answer}");
    }
}
