//! One health check against one backend: TCP connect, or HTTP GET over
//! hyper's HTTP/1 client. Passed or failed (the backend's doing), or not
//! run (the daemon's own shortage); each with text for the log line.
use std::{io, net::IpAddr, time::Duration};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Check;

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed(String),
    Failed(String),
    /// A local error (out of descriptors, memory, buffers or ports): it
    /// says nothing about the backend and must never count against it.
    NotRun(String),
}

pub async fn probe(check: &Check, address: IpAddr, port: u16, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, run(check, address, port)).await {
        Ok(Ok(what)) => Outcome::Passed(what),
        Ok(Err(outcome)) => outcome,
        Err(_) => Outcome::Failed(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Sorts a connect error: the local host's shortages (EMFILE, ENFILE:
/// descriptors; ENOBUFS, ENOMEM: memory; EADDRNOTAVAIL: no free local
/// port) mean the check did not run; anything else is the backend's (or
/// the path's) failure.
pub fn classify_connect_error(e: &io::Error, what: String) -> Outcome {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL) => {
            Outcome::NotRun(what)
        }
        _ => Outcome::Failed(what),
    }
}

async fn run(check: &Check, address: IpAddr, port: u16) -> Result<String, Outcome> {
    let connect = || async {
        TcpStream::connect((address, port)).await.map_err(|e| {
            let what = format!(
                "connect to {}: {e}",
                std::net::SocketAddr::new(address, port)
            );
            classify_connect_error(&e, what)
        })
    };
    match check {
        Check::None => Ok("not checked".into()),
        Check::Tcp => connect().await.map(|_| {
            format!(
                "connect to {} succeeded",
                std::net::SocketAddr::new(address, port)
            )
        }),
        Check::Http {
            path,
            host,
            status_min,
            status_max,
        } => {
            let stream = connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Outcome::Failed(format!("HTTP handshake: {e}")))?;
            let conn = tokio::spawn(conn);
            // An IPv6 literal goes in brackets (RFC 7230 §5.4).
            let host = host.clone().unwrap_or_else(|| match address {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            });
            let request = hyper::Request::get(path.as_str())
                .header(hyper::header::HOST, host)
                .header(hyper::header::USER_AGENT, "foobar-health-check")
                .header(hyper::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| Outcome::Failed(format!("building the request: {e}")))?;
            let response = sender.send_request(request).await;
            conn.abort();
            let status = response
                .map_err(|e| Outcome::Failed(format!("GET {path}: {e}")))?
                .status()
                .as_u16();
            if (*status_min..=*status_max).contains(&status) {
                Ok(format!("GET {path}: HTTP {status}"))
            } else {
                Err(Outcome::Failed(format!(
                    "GET {path}: HTTP {status}, expected {status_min}-{status_max}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_shortages_are_not_failures_of_the_backend() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(
                classify_connect_error(&e, "x".into()),
                Outcome::NotRun("x".into()),
                "{e}"
            );
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ETIMEDOUT,
            libc::ECONNRESET,
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(
                classify_connect_error(&e, "x".into()),
                Outcome::Failed("x".into()),
                "{e}"
            );
        }
        let plain = io::Error::other("no errno");
        assert!(matches!(
            classify_connect_error(&plain, "x".into()),
            Outcome::Failed(_)
        ));
    }
}
