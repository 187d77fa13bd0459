//! The server side of the control socket: binding it safely, admitting
//! root only, reading one bounded request per connection and handing it to
//! the state owner. It decides nothing itself; it logs every request with
//! the caller's uid.
use std::{
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::wire::{Call, Caller, ErrorKind, Request, Response};

/// Longest request line the server reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long the server waits for the client to take its answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the server protects the daemon from its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client has to send its request line.
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            read_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another foobar answers on {0}; stop it first (or use another api.socket)")]
    InUse(PathBuf),
    #[error(
        "api.socket {0}: a file that is not a socket is there; foobar replaces only a stale \
         socket and leaves this file alone. Point api.socket at a path of its own \
         (default /run/foobar/foobar.sock)"
    )]
    NotASocket(PathBuf),
    #[error(
        "api.socket {dir}: the socket's directory {problem}, so another user could replace \
         the socket; use a directory only root can write (foobar creates a missing one \
         with mode 0700)"
    )]
    UnsafeDir { dir: PathBuf, problem: String },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the control socket: makes sure its directory is root's alone,
/// replaces a stale socket (nobody answering), refuses if a live daemon
/// answers or if anything but a socket is at the path, and creates the
/// socket with mode 0600 from the start.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let io = |source| ServeError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    prepare_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if StdUnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        // A config file, a symlink, a directory...: never deleted.
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = {
        // The socket is born 0600: no moment where others may connect.
        // umask is per process; nothing else creates files while the
        // daemon starts, and the old mask is put back at once.
        let _mask = Umask::set(0o177);
        UnixListener::bind(path).map_err(io)?
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Creates the socket's directory (mode 0700) when missing; refuses an
/// existing one that someone other than root owns or may write.
fn prepare_dir(dir: &Path) -> Result<(), ServeError> {
    let io = |source| ServeError::Io {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let meta = std::fs::metadata(dir).map_err(io)?;
    let unsafe_dir = |problem: String| ServeError::UnsafeDir {
        dir: dir.to_owned(),
        problem,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "belongs to uid {}, not to uid {me}",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by group or others (mode {mode:04o})"
        )));
    }
    Ok(())
}

/// Sets the process umask until dropped.
struct Umask(nix::sys::stat::Mode);

impl Umask {
    fn set(mask: u32) -> Self {
        let mask = nix::sys::stat::Mode::from_bits_truncate(mask as libc::mode_t);
        Umask(nix::sys::stat::umask(mask))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        nix::sys::stat::umask(self.0);
    }
}

/// Who may use the control socket: root only. `Err` is what the peer is
/// told.
pub fn admit(peer_uid: u32) -> Result<(), String> {
    if peer_uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "permission denied: the foobar control socket serves root only (you are uid \
             {peer_uid}); run the command with sudo"
        ))
    }
}

/// Accepts connections until the owner goes away; each connection is one
/// request and one response.
pub async fn serve(listener: UnixListener, owner: mpsc::Sender<Call>) {
    serve_with(listener, owner, Limits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(listener: UnixListener, owner: mpsc::Sender<Call>, limits: Limits) {
    crate::accept::bounded(
        limits.max_connections,
        "control socket",
        || async { listener.accept().await.map(|(stream, _)| stream) },
        |stream| {
            let owner = owner.clone();
            async move { serve_connection(stream, &owner, limits.read_timeout).await }
        },
    )
    .await
}

async fn serve_connection(stream: UnixStream, owner: &mpsc::Sender<Call>, read_timeout: Duration) {
    let peer = stream.peer_cred();
    let (read, mut write) = stream.into_split();
    let response = match peer {
        Err(e) => Response::failed(
            ErrorKind::Denied,
            format!("cannot read the peer's credentials: {e}"),
        ),
        Ok(cred) => match admit(cred.uid()) {
            Err(message) => {
                tracing::warn!(
                    uid = cred.uid(),
                    pid = ?cred.pid(),
                    "control connection refused: not root"
                );
                Response::failed(ErrorKind::Denied, message)
            }
            Ok(()) => answer(read, owner, read_timeout, Caller::Uid(cred.uid())).await,
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes())).await;
}

/// Reads the request (bounded in size and time) and has the owner answer it.
async fn answer(
    read: impl AsyncRead + Unpin,
    owner: &mpsc::Sender<Call>,
    read_timeout: Duration,
    caller: Caller,
) -> Response {
    let request = match tokio::time::timeout(read_timeout, read_request(read)).await {
        Err(_) => {
            let message = format!("no complete request within {} ms", read_timeout.as_millis());
            tracing::warn!(uid = %caller, "control request refused: {message}");
            return Response::failed(ErrorKind::BadRequest, message);
        }
        Ok(Err(message)) => {
            tracing::warn!(uid = %caller, error = %message, "control request refused");
            return Response::failed(ErrorKind::BadRequest, message);
        }
        Ok(Ok(request)) => request,
    };
    let (tx, rx) = oneshot::channel();
    if owner.send((request, caller, tx)).await.is_err() {
        return Response::error("the daemon is shutting down");
    }
    rx.await
        .unwrap_or_else(|_| Response::error("the daemon is shutting down"))
}

/// One request line of at most [`MAX_REQUEST_BYTES`] (the newline
/// included), parsed.
pub async fn read_request(read: impl AsyncRead + Unpin) -> Result<Request, String> {
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading the request: {e}"))?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "request refused: longer than {MAX_REQUEST_BYTES} bytes"
        ));
    }
    Request::decode(&line)
}
