//! The control API: one JSON request and one JSON response, each a line, per
//! connection on a Unix socket that serves root only. The server hands each
//! request to the state owner and writes back what it answers; it decides
//! nothing itself. The client side is what the CLI commands call.
//!
//! Defences (docs/SECURITY.md says what each one covers):
//! - the socket is created with mode 0600 (umask 0177 around `bind`, so it is
//!   never more open), in a directory only root can write (created 0700 when
//!   missing; an existing one writable by anyone else is refused);
//! - only a stale *socket* at the path is replaced; any other file is left
//!   alone and the daemon refuses to start;
//! - every connection's peer is checked with SO_PEERCRED: uid 0 only;
//! - a request is one line of at most [`MAX_REQUEST_BYTES`], read within
//!   a time limit; a bounded number of connections is served at once, the
//!   rest wait in the kernel's backlog ([`Limits`]);
//! - the client talks only to a server whose peer uid is 0.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, Semaphore},
};

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
        /// Remove it even if it is the VIP's last backend taking new flows
        /// (the VIP then drops its new traffic). Absent means false, so
        /// older clients keep working.
        #[serde(default)]
        force: bool,
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
    /// Re-read the daemon's config file and apply what changed (see
    /// `reload`); a config with any problem is refused whole.
    Reload,
    /// Forget the source-affinity choices of one VIP (or of every VIP):
    /// clients' next new connections are scheduled afresh.
    AffinityPurge {
        #[serde(default)]
        vip: Option<String>,
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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // E.g. out of file descriptors: say so, and do not spin.
                tracing::warn!(%err, "accepting on the control socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let owner = owner.clone();
        tokio::spawn(async move {
            serve_connection(stream, &owner, limits.read_timeout).await;
            drop(slot);
        });
    }
}

async fn serve_connection(stream: UnixStream, owner: &mpsc::Sender<Call>, read_timeout: Duration) {
    let peer = stream.peer_cred();
    let (read, mut write) = stream.into_split();
    let response = match peer {
        Err(e) => Response::error(format!("cannot read the peer's credentials: {e}")),
        Ok(cred) => match admit(cred.uid()) {
            Err(message) => {
                tracing::warn!(
                    uid = cred.uid(),
                    pid = ?cred.pid(),
                    "control connection refused: not root"
                );
                Response::error(message)
            }
            Ok(()) => answer(read, owner, read_timeout).await,
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
) -> Response {
    let request = match tokio::time::timeout(read_timeout, read_request(read)).await {
        Err(_) => {
            return Response::error(format!(
                "no complete request within {} ms",
                read_timeout.as_millis()
            ))
        }
        Ok(Err(message)) => return Response::error(message),
        Ok(Ok(request)) => request,
    };
    let (tx, rx) = oneshot::channel();
    if owner.send((request, tx)).await.is_err() {
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
    serde_json::from_slice::<Request>(&line).map_err(|e| format!("malformed request: {e}"))
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
    #[error("{0}")]
    Refused(String),
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
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
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
    use std::ffi::CString;

    use super::*;

    /// The umask is per process and these tests create files and change
    /// it: one at a time.
    static FILES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A fresh directory for one test (removed by the test).
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("foobar-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// A fake owner: answers status, refuses everything else.
    fn fake_owner() -> mpsc::Sender<Call> {
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(match req {
                    Request::Status => Response::ok(serde_json::json!({"vips": []})),
                    _ => Response::error("no such backend"),
                });
            }
        });
        tx
    }

    /// Sends raw bytes on a new connection and reads the answer line.
    fn raw(socket: &Path, bytes: &[u8]) -> Response {
        let mut stream = StdUnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    }

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
        // A client from before --force still works: no force means false.
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"op":"backend_remove","vip":"web","address":"10.0.0.11"}"#
            )
            .unwrap(),
            Request::BackendRemove {
                vip: "web".into(),
                address: "10.0.0.11".into(),
                force: false
            }
        );
    }

    #[tokio::test]
    async fn server_answers_each_request_through_the_owner() {
        let _files = FILES.lock().await;
        let dir = scratch("serve");
        // Two levels missing: both are created root-only.
        let socket = dir.join("run").join("s.sock");
        let listener = bind(&socket).unwrap();
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("run")), 0o700);
        assert!(matches!(bind(&socket), Err(ServeError::InUse(_))));

        tokio::spawn(serve(listener, fake_owner()));
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
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = call(&socket, &Request::Status).unwrap_err();
        assert!(matches!(missing, ClientError::NotRunning(_)), "{missing}");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_with_a_root_only_one_even_under_umask_0() {
        let _files = FILES.lock().await;
        let dir = scratch("stale");
        std::fs::create_dir(&dir).unwrap();
        let socket = dir.join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket());
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let bound = bind(&socket);
        nix::sys::stat::umask(old);
        let _listener = bound.unwrap();
        assert_eq!(mode(&socket), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_refused_and_left_intact() {
        let _files = FILES.lock().await;
        let dir = scratch("notsock");
        std::fs::create_dir(&dir).unwrap();
        let config = dir.join("foobar.toml");
        std::fs::write(&config, "[datapath]\n").unwrap();
        let err = bind(&config).unwrap_err();
        assert!(matches!(err, ServeError::NotASocket(_)), "{err}");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "[datapath]\n");

        // A symlink to it is not followed, not removed either.
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&config, &link).unwrap();
        assert!(matches!(bind(&link), Err(ServeError::NotASocket(_))));
        assert!(std::fs::symlink_metadata(&link).is_ok());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "[datapath]\n");

        // A directory neither.
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(bind(&sub), Err(ServeError::NotASocket(_))));
        assert!(sub.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_directory_others_may_write_is_refused() {
        let _files = FILES.lock().await;
        let dir = scratch("opendir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = bind(&dir.join("s.sock")).unwrap_err();
        assert!(
            err.to_string()
                .contains("writable by group or others (mode 1777)"),
            "{err}"
        );
        assert!(!dir.join("s.sock").exists());
        // Root's and closed to writes (0755): accepted.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(bind(&dir.join("s.sock")).unwrap());
        // Someone else's: refused, even if closed.
        if nix::unistd::geteuid().is_root() {
            std::fs::remove_file(dir.join("s.sock")).unwrap();
            nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let err = bind(&dir.join("s.sock")).unwrap_err();
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn oversized_and_slow_requests_are_refused() {
        let _files = FILES.lock().await;
        // The size bound, on its own.
        let mut big = vec![b' '; MAX_REQUEST_BYTES + 10];
        big.extend_from_slice(b"{\"op\":\"status\"}\n");
        let err = read_request(&big[..]).await.unwrap_err();
        assert!(err.contains("longer than 65536 bytes"), "{err}");
        let mut fits = vec![b' '; MAX_REQUEST_BYTES - 16];
        fits.extend_from_slice(b"{\"op\":\"status\"}\n");
        assert_eq!(fits.len(), MAX_REQUEST_BYTES);
        assert_eq!(read_request(&fits[..]).await.unwrap(), Request::Status);

        // Through the socket: both answered with the reason.
        let dir = scratch("bounds");
        let socket = dir.join("s.sock");
        let listener = bind(&socket).unwrap();
        let limits = Limits {
            max_connections: 4,
            read_timeout: Duration::from_millis(300),
        };
        tokio::spawn(serve_with(listener, fake_owner(), limits));
        let s = socket.clone();
        let (oversized, silent, ok) = tokio::task::spawn_blocking(move || {
            let oversized = raw(&s, &vec![b'x'; MAX_REQUEST_BYTES + 100]);
            let began = std::time::Instant::now();
            let silent = raw(&s, b"{\"op\":");
            let waited = began.elapsed();
            (oversized, (silent, waited), call(&s, &Request::Status))
        })
        .await
        .unwrap();
        assert!(!oversized.ok);
        assert!(
            oversized.error.as_deref().unwrap().contains("longer than"),
            "{oversized:?}"
        );
        let (silent, waited) = silent;
        assert_eq!(
            silent.error.as_deref(),
            Some("no complete request within 300 ms")
        );
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        ok.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let _files = FILES.lock().await;
        let dir = scratch("cap");
        let socket = dir.join("s.sock");
        let listener = bind(&socket).unwrap();
        let limits = Limits {
            max_connections: 1,
            read_timeout: Duration::from_secs(20),
        };
        tokio::spawn(serve_with(listener, fake_owner(), limits));
        // An idle client takes the only slot.
        let idle = StdUnixStream::connect(&socket).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = socket.clone();
        let mut second = tokio::task::spawn_blocking(move || call(&s, &Request::Status));
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut second)
                .await
                .is_err(),
            "a second connection was served beside the idle one"
        );
        drop(idle);
        let answered = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("served once the slot is free");
        answered.unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_root_is_admitted_and_only_a_root_server_is_trusted() {
        assert!(admit(0).is_ok());
        let refusal = admit(1000).unwrap_err();
        assert!(refusal.contains("serves root only"), "{refusal}");
        assert!(refusal.contains("uid 1000"), "{refusal}");
        let p = Path::new("/run/foobar/foobar.sock");
        assert!(trust_server(p, 0).is_ok());
        let e = trust_server(p, 65534).unwrap_err();
        assert!(matches!(e, ClientError::NotRoot { uid: 65534, .. }));
        assert!(e.to_string().contains("not root"), "{e}");
    }

    /// Forks a child that runs `body` as uid/gid 65534 (nobody) and exits
    /// with its result; returns the child's pid. The child only makes raw
    /// system calls (no allocation: the parent has other threads).
    fn fork_as_nobody(body: impl FnOnce() -> i32) -> libc::pid_t {
        // SAFETY: the child calls only async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    90
                } else {
                    body()
                }
            };
            unsafe { libc::_exit(code) };
        }
        pid
    }

    fn sockaddr(path: &CString) -> libc::sockaddr_un {
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
            *d = *s as libc::c_char;
        }
        addr
    }

    fn wait_exit(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        for _ in 0..200 {
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                return libc::WEXITSTATUS(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        panic!("child {pid} did not exit within 5 s");
    }

    #[tokio::test]
    async fn a_non_root_peer_is_refused_even_if_the_socket_mode_lets_it_connect() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to switch to uid 65534");
            return;
        }
        let _files = FILES.lock().await;
        let dir = scratch("peer");
        let socket = dir.join("s.sock");
        let listener = bind(&socket).unwrap();
        tokio::spawn(serve(listener, fake_owner()));
        // Open the file modes up so that only SO_PEERCRED stands between.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let path = CString::new(socket.as_os_str().as_encoded_bytes()).unwrap();
        let addr = sockaddr(&path);
        let expected: &[u8] = b"serves root only";
        let pid = fork_as_nobody(|| unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
                return 2;
            }
            let request = b"{\"op\":\"status\"}\n";
            libc::write(fd, request.as_ptr().cast(), request.len());
            let mut buf = [0u8; 512];
            let mut got = 0usize;
            while got < buf.len() {
                let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got);
                if n <= 0 {
                    break;
                }
                got += n as usize;
            }
            let answer = &buf[..got];
            if answer.windows(expected.len()).any(|w| w == expected) {
                0
            } else if answer.windows(4).any(|w| w == b"vips") {
                3 // served: the check let it through
            } else {
                4
            }
        });
        let code = tokio::task::spawn_blocking(move || wait_exit(pid))
            .await
            .unwrap();
        assert_eq!(code, 0, "uid 65534's request was not refused (code {code})");
        // Root, on the same socket, is served.
        let s = socket.clone();
        tokio::task::spawn_blocking(move || call(&s, &Request::Status))
            .await
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_client_refuses_a_server_that_is_not_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to switch to uid 65534");
            return;
        }
        let _files = FILES.blocking_lock();
        // A directory anyone may write, and a fake daemon planted by nobody.
        let dir = scratch("fake");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let socket = dir.join("s.sock");
        let path = CString::new(socket.as_os_str().as_encoded_bytes()).unwrap();
        let addr = sockaddr(&path);
        let pid = fork_as_nobody(|| unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0
                || libc::listen(fd, 4) != 0
            {
                return 2;
            }
            // Ends by itself if nobody comes.
            libc::alarm(10);
            let client = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
            let answer = b"{\"ok\":true,\"result\":{\"admin\":\"drained\"}}\n";
            libc::write(client, answer.as_ptr().cast(), answer.len());
            let mut buf = [0u8; 256];
            libc::read(client, buf.as_mut_ptr().cast(), buf.len());
            0
        });
        let mut listening = false;
        for _ in 0..200 {
            if socket.exists() {
                listening = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(listening, "the fake daemon did not start");
        let err = call(
            &socket,
            &Request::BackendDrain {
                vip: "web".into(),
                address: "10.0.0.11".into(),
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, ClientError::NotRoot { uid: 65534, .. }),
            "{err}"
        );
        assert_eq!(wait_exit(pid), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
