//! The HTTP side of the metrics: hyper serving `/metrics`, bounded in
//! connections and time, asking the state owner for each scrape.
use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use super::CONTENT_TYPE;

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
    crate::accept::bounded(
        limits.max_connections,
        "metrics listener",
        || async { listener.accept().await.map(|(stream, _)| stream) },
        |stream| serve_connection(stream, owner.clone(), limits),
    )
    .await
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
            hyper::header::HeaderValue::from_static(if status == StatusCode::OK {
                CONTENT_TYPE
            } else {
                "text/plain; charset=utf-8"
            }),
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
        assert!(
            answer.lines().any(|l| l.eq_ignore_ascii_case(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            )),
            "{answer}"
        );
        assert!(answer.contains("foobar_up 1"), "{answer}");
    }
}
