//! The control socket end to end: binding, admission, bounds, the wire
//! form of requests, the client's checks of the server.
use std::{
    ffi::CString,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::mpsc;

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
        while let Some((req, _caller, reply)) = rx.recv().await {
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

#[tokio::test]
async fn an_old_client_gets_a_clear_answer_and_a_refusal_has_a_kind() {
    let _files = FILES.lock().await;
    let dir = scratch("old");
    let socket = dir.join("s.sock");
    let listener = bind(&socket).unwrap();
    tokio::spawn(serve(listener, fake_owner()));
    let s = socket.clone();
    let (old, refused) = tokio::task::spawn_blocking(move || {
        let old = raw(&s, b"{\"op\":\"status\"}\n");
        let refused = call(
            &s,
            &Request::BackendEnable {
                vip: "web".into(),
                address: "10.0.0.1".parse().unwrap(),
            },
        );
        (old, refused)
    })
    .await
    .unwrap();
    assert!(!old.ok);
    assert_eq!(old.kind, Some(ErrorKind::BadRequest));
    assert_eq!(old.v, PROTOCOL_VERSION);
    assert!(old.error.unwrap().contains("older than this daemon"));
    let refused = refused.unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Refused {
                kind: ErrorKind::Refused,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(refused.kind(), "refused");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_daemon_of_another_protocol_version_is_named_as_such() {
    let _files = FILES.lock().await;
    let dir = scratch("version");
    std::fs::create_dir(&dir).unwrap();
    let socket = dir.join("s.sock");
    // A daemon from before versions: no "v", refuses the unknown field.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fake = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream)
            .write_all(b"{\"ok\":false,\"error\":\"malformed request: unknown field `v`\"}\n")
            .unwrap();
        line
    });
    let s = socket.clone();
    let err = tokio::task::spawn_blocking(move || call(&s, &Request::Status))
        .await
        .unwrap()
        .unwrap_err();
    let sent = fake.join().unwrap();
    assert!(sent.contains("\"v\":1"), "{sent}");
    assert!(
        matches!(err, ClientError::Version { daemon: 0, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("speaks control protocol 0"),
        "{err}"
    );
    assert!(err.to_string().contains("unknown field `v`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
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
                address: "10.0.0.1".parse().unwrap(),
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
    big.extend_from_slice(b"{\"v\":1,\"op\":\"status\"}\n");
    let err = read_request(&big[..]).await.unwrap_err();
    assert!(err.contains("longer than 65536 bytes"), "{err}");
    let mut fits = vec![b' '; MAX_REQUEST_BYTES - 22];
    fits.extend_from_slice(b"{\"v\":1,\"op\":\"status\"}\n");
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
        let request = b"{\"v\":1,\"op\":\"status\"}\n";
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
            address: "10.0.0.11".parse().unwrap(),
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

#[test]
fn nat_fields_travel_typed_and_are_optional() {
    let vip = |forwarding| Request::VipAdd {
        name: "api".into(),
        address: "10.0.0.101".parse().unwrap(),
        port: 8080,
        protocol: crate::config::Protocol::Tcp,
        scheduler: crate::config::Scheduler::RoundRobin,
        forwarding,
        maglev_table_size: None,
        persistence_timeout_s: None,
        health: None,
        snat_address: Some("10.0.0.5".parse().unwrap()),
    };
    let add = vip(crate::config::Forwarding::Nat);
    assert_eq!(add.validate(), Ok(()));
    let line = add.encode();
    assert!(line.contains(r#""snat_address":"10.0.0.5""#), "{line}");
    assert_eq!(Request::decode(line.as_bytes()), Ok(add));
    // Without the new fields: as before (an older client's request).
    let old = br#"{"v":1,"op":"backend_add","vip":"web","address":"10.0.0.11"}"#;
    match Request::decode(old).unwrap() {
        Request::BackendAdd { port, weight, .. } => assert_eq!((port, weight), (None, 1)),
        other => panic!("{other:?}"),
    }
    let ported = br#"{"v":1,"op":"backend_add","vip":"api","address":"10.0.0.11","port":8443}"#;
    assert!(matches!(
        Request::decode(ported).unwrap(),
        Request::BackendAdd {
            port: Some(8443),
            ..
        }
    ));
    // An SNAT address is for nat VIPs only, and must be a unicast source.
    let dsr = vip(crate::config::Forwarding::Dsr);
    assert!(dsr
        .validate()
        .unwrap_err()
        .contains("only a VIP with forwarding nat"));
}

#[test]
fn ipv6_addresses_travel_as_text() {
    let line = br#"{"v":1,"op":"backend_add","vip":"web6","address":"2001:db8::11"}"#;
    match Request::decode(line).unwrap() {
        Request::BackendAdd { address, .. } => {
            assert_eq!(address, "2001:db8::11".parse::<std::net::IpAddr>().unwrap())
        }
        other => panic!("{other:?}"),
    }
    let add = Request::BackendRemove {
        vip: "web6".into(),
        address: "fd00::11".parse().unwrap(),
        force: false,
    };
    assert!(add.encode().contains(r#""address":"fd00::11""#));
    assert_eq!(Request::decode(add.encode().as_bytes()), Ok(add));
}
