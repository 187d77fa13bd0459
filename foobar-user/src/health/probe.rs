//! One health check against one backend: TCP connect, or HTTP GET over
//! hyper's HTTP/1 client. Ok(what happened) or Err(why it failed), both as
//! text for the transition log line.
use std::{net::Ipv4Addr, time::Duration};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Check;

pub async fn probe(
    check: &Check,
    address: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<String, String> {
    match tokio::time::timeout(timeout, run(check, address, port)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn run(check: &Check, address: Ipv4Addr, port: u16) -> Result<String, String> {
    let connect = || async {
        TcpStream::connect((address, port))
            .await
            .map_err(|e| format!("connect to {address}:{port}: {e}"))
    };
    match check {
        Check::None => Ok("not checked".into()),
        Check::Tcp => connect()
            .await
            .map(|_| format!("connect to {address}:{port} succeeded")),
        Check::Http {
            path,
            host,
            status_min,
            status_max,
        } => {
            let stream = connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let host = host.clone().unwrap_or_else(|| address.to_string());
            let request = hyper::Request::get(path.as_str())
                .header(hyper::header::HOST, host)
                .header(hyper::header::USER_AGENT, "foobar-health-check")
                .header(hyper::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("building the request: {e}"))?;
            let response = sender.send_request(request).await;
            conn.abort();
            let status = response
                .map_err(|e| format!("GET {path}: {e}"))?
                .status()
                .as_u16();
            if (*status_min..=*status_max).contains(&status) {
                Ok(format!("GET {path}: HTTP {status}"))
            } else {
                Err(format!(
                    "GET {path}: HTTP {status}, expected {status_min}-{status_max}"
                ))
            }
        }
    }
}
