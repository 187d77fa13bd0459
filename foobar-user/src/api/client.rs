//! The client side of the control socket, what the CLI commands call: it
//! talks only to a root server and sends one typed request.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::wire::{ErrorKind, Request, Response, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the foobar daemon at {0}: is `foobar run` running? \
         (a different socket: --socket PATH)"
    )]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the control socket is root-only; run with sudo")]
    Denied(PathBuf),
    #[error(
        "refusing to talk to {path}: the process listening there runs as uid {uid}, not \
         root, so it is not the foobar daemon (someone who can write that directory may \
         have planted it). See who it is with `ss -xlp src {path}`"
    )]
    NotRoot { path: PathBuf, uid: u32 },
    #[error("talking to the daemon at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon's answer is not understood: {0}")]
    Protocol(String),
    /// The daemon refused the request; the message says why.
    #[error("{message}")]
    Refused { kind: ErrorKind, message: String },
    /// The daemon speaks another protocol version (another release).
    #[error(
        "the daemon at {path} speaks control protocol {daemon}, this foobar speaks \
         {PROTOCOL_VERSION}: use the foobar binary of the daemon's release{detail}"
    )]
    Version {
        path: PathBuf,
        daemon: u32,
        detail: String,
    },
}

impl ClientError {
    /// The error's kind as `--json` output and docs/CLI.md name it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::NotRunning(_) | ClientError::Io { .. } => "unreachable",
            ClientError::Denied(_) | ClientError::NotRoot { .. } => "denied",
            ClientError::Protocol(_) | ClientError::Version { .. } => "protocol",
            ClientError::Refused {
                kind: ErrorKind::ConfigInvalid,
                ..
            } => "config_invalid",
            ClientError::Refused { .. } => "refused",
        }
    }
}

/// The client's check of the server: it must be root, as the daemon is.
pub fn trust_server(socket: &Path, server_uid: u32) -> Result<(), ClientError> {
    if server_uid == 0 {
        Ok(())
    } else {
        Err(ClientError::NotRoot {
            path: socket.to_owned(),
            uid: server_uid,
        })
    }
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
    let server = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| io(e.into()))?;
    trust_server(socket, server.uid())?;
    // Adding a backend may wait for ARP (3 s); leave room for it.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = request.encode();
    line.push('\n');
    // The server may answer (a refusal) and close before reading all of
    // the request: its answer, if any, says more than our write error.
    let written = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    match (written, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) | (Ok(()), Err(e)) => return Err(io(e)),
        (Ok(()), Ok(_)) => {
            return Err(ClientError::Protocol(
                "the daemon closed the connection without an answer".into(),
            ))
        }
    }
    let response: Response = serde_json::from_str(&answer)
        .map_err(|e| ClientError::Protocol(format!("{e}: {answer:?}")))?;
    let message = response
        .error
        .unwrap_or_else(|| "refused without a reason".into());
    if response.v != PROTOCOL_VERSION {
        return Err(ClientError::Version {
            path: socket.to_owned(),
            daemon: response.v,
            detail: if response.ok {
                String::new()
            } else {
                format!(" (it answered: {message})")
            },
        });
    }
    if response.ok {
        Ok(response.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Refused {
            kind: response.kind.unwrap_or(ErrorKind::Refused),
            message,
        })
    }
}
