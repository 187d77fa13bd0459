//! The control API: one JSON request and one JSON response, each a line, per
//! connection on a Unix socket (mode 0600: root only). The server hands each
//! request to the state owner and writes back what it answers; it decides
//! nothing itself. The client side is what the CLI commands call.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

/// Longest request line the server reads.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Stats,
    VipAdd {
        name: String,
        address: String,
        port: u16,
        #[serde(default)]
        protocol: Option<String>,
        #[serde(default)]
        scheduler: Option<String>,
        #[serde(default)]
        forwarding: Option<String>,
    },
    VipRemove {
        name: String,
    },
    BackendAdd {
        vip: String,
        address: String,
        #[serde(default)]
        weight: Option<u32>,
    },
    BackendRemove {
        vip: String,
        address: String,
    },
    BackendDrain {
        vip: String,
        address: String,
    },
    BackendEnable {
        vip: String,
        address: String,
    },
    BackendWeight {
        vip: String,
        address: String,
        weight: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response {
            ok: true,
            error: None,
            result: Some(result),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(message.into()),
            result: None,
        }
    }
}

/// A request on its way to the state owner, with where to send the answer.
pub type Call = (Request, oneshot::Sender<Response>);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another foobar answers on {0}; stop it first (or use another api.socket)")]
    InUse(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the control socket: creates its directory, replaces a stale
/// socket file (nobody answering), refuses if a live daemon answers, and
/// makes it root-only.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let io = |source| ServeError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Accepts connections until the owner goes away; each connection is one
/// request and one response.
pub async fn serve(listener: UnixListener, owner: mpsc::Sender<Call>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // E.g. out of file descriptors: say so, and do not spin.
                tracing::warn!(%err, "accepting on the control socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let owner = owner.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader =
                tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
            let response = match reader.read_line(&mut line).await {
                Err(e) => Response::error(format!("reading the request: {e}")),
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    Err(e) => Response::error(format!("malformed request: {e}")),
                    Ok(request) => {
                        let (tx, rx) = oneshot::channel();
                        if owner.send((request, tx)).await.is_err() {
                            Response::error("the daemon is shutting down")
                        } else {
                            rx.await
                                .unwrap_or_else(|_| Response::error("the daemon is shutting down"))
                        }
                    }
                },
            };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the foobar daemon at {0}: is `foobar run` running? \
         (a different socket: --socket PATH)"
    )]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the control socket is root-only; run with sudo")]
    Denied(PathBuf),
    #[error("talking to the daemon at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon's answer is not understood: {0}")]
    Protocol(String),
    /// The daemon refused the request; the message says why.
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the daemon's result, or its refusal.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = StdUnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(socket.to_owned())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(socket.to_owned()),
        _ => io(e),
    })?;
    // Adding a backend may wait for ARP (3 s); leave room for it.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    let response: Response = serde_json::from_str(&answer)
        .map_err(|e| ClientError::Protocol(format!("{e}: {answer:?}")))?;
    if response.ok {
        Ok(response.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Refused(
            response
                .error
                .unwrap_or_else(|| "refused without a reason".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::BackendDrain {
            vip: "web".into(),
            address: "10.0.0.11".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"op":"backend_drain","vip":"web","address":"10.0.0.11"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"backend_drain","vip":"web"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }

    #[tokio::test]
    async fn server_answers_each_request_through_the_owner() {
        let dir = std::env::temp_dir().join(format!("foobar-api-test-{}", std::process::id()));
        let socket = dir.join("s.sock");
        let listener = bind(&socket).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&socket), Err(ServeError::InUse(_))));

        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(serve(listener, tx));
        // A fake owner: refuses drains, answers status.
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(match req {
                    Request::Status => Response::ok(serde_json::json!({"vips": []})),
                    _ => Response::error("no such backend"),
                });
            }
        });
        let s = socket.clone();
        let (status, refused) = tokio::task::spawn_blocking(move || {
            let status = call(&s, &Request::Status);
            let refused = call(
                &s,
                &Request::BackendEnable {
                    vip: "web".into(),
                    address: "10.0.0.1".into(),
                },
            );
            (status, refused)
        })
        .await
        .unwrap();
        assert_eq!(status.unwrap(), serde_json::json!({"vips": []}));
        assert_eq!(refused.unwrap_err().to_string(), "no such backend");
        let _ = std::fs::remove_dir_all(&dir);
        let missing = call(&dir.join("s.sock"), &Request::Status).unwrap_err();
        assert!(matches!(missing, ClientError::NotRunning(_)), "{missing}");
    }
}
