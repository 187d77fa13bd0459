//! The state file on disk (what it holds is `daemon::StateFile`): written
//! atomically through an exclusive, never-followed temporary file in a
//! directory only root can write; read back defensively. A state file that
//! is unsafe, unreadable, corrupt or holds values the config's rules refuse
//! never stops a start: the daemon starts from the config, keeps the bad
//! file aside and says so loudly. Never decides what the state is.
use std::{
    fs::{self, OpenOptions},
    io::{self, Read, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use tracing::{error, info, warn};

use crate::{
    config::{self, BackendConfig, Config},
    daemon::StateFile,
    state::{self, SavedVip, State},
};

/// Largest state file read back (4096 backends take about 1.5 MiB).
pub const MAX_STATE_FILE_SIZE: u64 = 16 << 20;

/// Why the directory of `path` is not safe for the state file: someone
/// other than root (or this process's user) could replace the file. None
/// when it is safe.
pub fn unsafe_dir(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "its directory {} cannot be read: {e}",
                dir.display()
            ))
        }
    };
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Some(format!(
            "its directory {} belongs to uid {}, so that user could replace it; \
             keep the config in a directory owned by root (chown root {})",
            dir.display(),
            meta.uid(),
            dir.display()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "its directory {} is writable by group or others (mode {:o}), so they could \
             replace it; chmod go-w {}",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        ));
    }
    None
}

/// Writes `contents` to `path` atomically: a temporary file beside it,
/// created exclusively (O_EXCL) without following links (O_NOFOLLOW), mode
/// 0600, synced, then renamed over `path`, and the directory synced. A
/// leftover or planted temporary file (or link) is removed, never written
/// through. Refused in a directory others could write.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Some(problem) = unsafe_dir(path) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("not written: {problem}"),
        ));
    }
    let tmp = temp_path(path);
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
    };
    let mut file = match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A crash's leftover, or a link planted there: unlink removes
            // the entry itself, never what a link points to.
            warn!(file = %tmp.display(), "removing a leftover temporary state file");
            fs::remove_file(&tmp)?;
            open()?
        }
        other => other?,
    };
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `NAME.state.json` → `NAME.state.json.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Where a bad state file is kept: `NAME.state.json.corrupt-UNIXTIME`.
fn corrupt_path(path: &Path) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{now}"));
    PathBuf::from(name)
}

/// Where the VIPs to start with came from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// No state file: the config.
    Config,
    /// The state file, written on top of this very config.
    StateFile,
    /// The config changed since the state was saved: the config; the old
    /// state file is kept at `kept`.
    Stale { kept: PathBuf },
    /// The state file could not be used (why): the config; the bad file is
    /// kept at `kept` (None: left where it is).
    Refused { why: String, kept: Option<PathBuf> },
}

/// The VIPs to start with: the state file's if it is safe, readable,
/// written on top of this config (`digest`) and valid by the config's
/// rules; the config's otherwise. Never fails: whatever is wrong with the
/// state file is logged and the file kept aside.
pub fn restore(config: &Config, path: &Path, digest: &str) -> (Vec<SavedVip>, Source) {
    let source = match read(path, digest) {
        Ok(Some(vips)) => {
            info!(file = %path.display(), "restoring runtime changes");
            return (vips, Source::StateFile);
        }
        Ok(None) => Source::Config,
        Err(Bad::Stale) => {
            let kept = path.with_extension("json.stale");
            match fs::rename(path, &kept) {
                Ok(()) => {
                    warn!(
                        kept = %kept.display(),
                        "the config changed since the runtime changes were saved: starting \
                         from the config; the earlier runtime state is kept aside (foobar \
                         reload, unlike a restart, keeps runtime changes the config did not \
                         touch)"
                    );
                    Source::Stale { kept }
                }
                Err(e) => refused(
                    path,
                    format!("it is outdated and cannot be moved aside: {e}"),
                    None,
                ),
            }
        }
        // In a directory others can write, moving it could be raced:
        // leave it. In a safe one, keep it aside (a later save would
        // replace it).
        Err(Bad::Unsafe(why)) if unsafe_dir(path).is_some() => refused(path, why, None),
        Err(Bad::Unsafe(why) | Bad::Corrupt(why)) => {
            let kept = corrupt_path(path);
            match fs::rename(path, &kept) {
                Ok(()) => refused(path, why, Some(kept)),
                Err(e) => refused(path, format!("{why}; moving it aside failed: {e}"), None),
            }
        }
    };
    (state::saved_from_config(config), source)
}

fn refused(path: &Path, why: String, kept: Option<PathBuf>) -> Source {
    error!(
        file = %path.display(),
        problem = %why,
        kept = %kept.as_deref().map_or_else(|| "in place".into(), |k| k.display().to_string()),
        "THE STATE FILE IS NOT USED: starting from the config alone; runtime changes \
         (foobar backend/vip commands) made before this start are NOT restored; \
         check the kept file and redo them"
    );
    Source::Refused { why, kept }
}

#[derive(Debug)]
enum Bad {
    /// Written on top of another config.
    Stale,
    /// Not to be trusted (a link, others may have written it).
    Unsafe(String),
    /// Unreadable, not JSON, truncated, or values the rules refuse.
    Corrupt(String),
}

/// The state file's VIPs; None if there is none.
fn read(path: &Path, digest: &str) -> Result<Option<Vec<SavedVip>>, Bad> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Bad::Unsafe("it is a symbolic link".into()))
        }
        Err(e) => return Err(Bad::Unsafe(format!("it cannot be opened: {e}"))),
    };
    if let Some(problem) = unsafe_dir(path) {
        return Err(Bad::Unsafe(problem));
    }
    let meta = file
        .metadata()
        .map_err(|e| Bad::Unsafe(format!("cannot stat it: {e}")))?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err(Bad::Unsafe("it is not a regular file".into()));
    }
    if (meta.uid() != 0 && meta.uid() != euid) || meta.mode() & 0o022 != 0 {
        return Err(Bad::Unsafe(format!(
            "others could have written it (owner uid {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    Read::by_ref(&mut file)
        .take(MAX_STATE_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Bad::Corrupt(format!("reading it failed: {e}")))?;
    if bytes.len() as u64 > MAX_STATE_FILE_SIZE {
        return Err(Bad::Corrupt(format!(
            "larger than {MAX_STATE_FILE_SIZE} bytes"
        )));
    }
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
        Bad::Corrupt(format!(
            "it is not a complete state file ({e}; {} bytes; truncated by a full disk or a crash?)",
            bytes.len()
        ))
    })?;
    if file.config_sha256 != digest {
        return Err(Bad::Stale);
    }
    let problems = problems(&file.vips);
    if !problems.is_empty() {
        return Err(Bad::Corrupt(format!(
            "values the config would refuse: {}",
            problems.join("; ")
        )));
    }
    Ok(Some(file.vips))
}

/// Every problem the config's rules (and the run-time operations') find in
/// saved VIPs, as `vips[I].KEY: problem`.
pub fn problems(vips: &[SavedVip]) -> Vec<String> {
    let mut out: Vec<String> = vips
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            as_config(v)
                .problems(&format!("vips[{i}]"))
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
        })
        .collect();
    if out.is_empty() {
        // Across VIPs (duplicate names or services, limits): the checks of
        // building the state, without MACs.
        if let Err(e) = State::build_unresolved(vips, &Default::default()) {
            out.push(e.to_string());
        }
    }
    out
}

/// A saved VIP in the config's validated form, for its rules.
fn as_config(v: &SavedVip) -> config::Vip {
    let s = &v.spec;
    config::Vip {
        name: s.name.clone(),
        address: s.address,
        port: s.port,
        protocol: s.protocol,
        scheduler: s.scheduler,
        maglev_table_size: s.maglev_table_size,
        affinity_timeout_s: s.affinity_timeout_s,
        forwarding: s.forwarding,
        nat: s.nat,
        health: s.health.clone(),
        vlan: s.vlan,
        pass_closed_ports: s.pass_closed_ports,
        backends: v
            .backends
            .iter()
            .map(|b| BackendConfig {
                address: b.address,
                weight: b.weight,
                port: b.port,
                health: b.health.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::daemon::{config_digest, save_state_file};

    const CONFIG: &str = r#"
[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
forwarding = "dsr"
[[vip.backend]]
address = "10.0.0.1"
[[vip.backend]]
address = "10.0.0.2"
"#;

    /// A fresh directory (mode 0755) with the state file's path in it.
    fn dir(name: &str) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("foobar-state-file-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("foobar.state.json");
        (dir, path)
    }

    /// The config's VIPs with run-time changes: backend 2 at weight 7.
    fn changed(config: &Config) -> Vec<SavedVip> {
        let mut vips = state::saved_from_config(config);
        vips[0].backends[1].weight = 7;
        vips
    }

    fn save(path: &Path, vips: Vec<SavedVip>) {
        save_state_file(
            path,
            &StateFile {
                config_sha256: config_digest(CONFIG),
                vips,
            },
        )
        .unwrap();
    }

    fn kept_files(dir: &Path, marker: &str) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(marker))
            .collect()
    }

    #[test]
    fn a_good_state_file_is_restored() {
        let config = config::parse(CONFIG).unwrap();
        let (dir, path) = dir("good");
        save(&path, changed(&config));
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        let (vips, source) = restore(&config, &path, &config_digest(CONFIG));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(source, Source::StateFile);
        assert_eq!(vips, changed(&config));
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn ipv6_vips_and_backends_survive_the_state_file() {
        let config = config::parse(CONFIG).unwrap();
        let (dir, path) = dir("ipv6");
        let mut vips = changed(&config);
        let mut v6 = vips[0].clone();
        v6.spec.name = "web6".into();
        v6.spec.address = "2001:db8::10".parse().unwrap();
        v6.backends[0].address = "fd00::1".parse().unwrap();
        v6.backends[1].address = "fd00::2".parse().unwrap();
        v6.down = vec!["fd00::2".parse().unwrap()];
        vips.push(v6);
        save(&path, vips.clone());
        let text = fs::read_to_string(&path).unwrap();
        let (restored, source) = restore(&config, &path, &config_digest(CONFIG));
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.contains("\"2001:db8::10\""),
            "addresses as text: {text}"
        );
        assert_eq!(source, Source::StateFile);
        assert_eq!(restored, vips);
    }

    #[test]
    fn a_corrupt_or_truncated_state_file_falls_back_to_the_config_and_is_kept() {
        let config = config::parse(CONFIG).unwrap();
        let (dir, path) = dir("corrupt");
        save(&path, changed(&config));
        let whole = fs::read_to_string(&path).unwrap();
        for bad in [
            whole[..whole.len() / 2].to_owned(),
            String::new(),
            "\0\0\0\0".into(),
            "{\"config_sha256\": 12}".into(),
        ] {
            fs::write(&path, &bad).unwrap();
            let (vips, source) = restore(&config, &path, &config_digest(CONFIG));
            assert_eq!(vips, state::saved_from_config(&config), "{bad:?}");
            let Source::Refused {
                kept: Some(kept), ..
            } = source
            else {
                panic!("{bad:?}: {source:?}");
            };
            assert!(!path.exists(), "the bad file is moved aside");
            assert_eq!(fs::read_to_string(&kept).unwrap(), bad, "kept as it was");
            assert!(kept.to_string_lossy().contains(".state.json.corrupt-"));
            fs::remove_file(&kept).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Spoils saved VIPs in one way.
    type Spoil = Box<dyn Fn(&mut Vec<SavedVip>)>;

    #[test]
    fn values_the_config_refuses_are_refused_from_the_state_file() {
        let config = config::parse(CONFIG).unwrap();
        let (dir, path) = dir("values");
        let cases: Vec<(&str, Spoil)> = vec![
            // An interval of 0 would panic the health task.
            (
                "backend[1].health.interval_ms: 0 is out of range",
                Box::new(|v| v[0].backends[1].health.interval_ms = 0),
            ),
            (
                "health.rise: 0 is out of range",
                Box::new(|v| v[0].spec.health.rise = 0),
            ),
            (
                "backend[0].weight: 999 is out of range",
                Box::new(|v| v[0].backends[0].weight = 999),
            ),
            (
                "name: \"we b\" contains",
                Box::new(|v| v[0].spec.name = "we b".into()),
            ),
            (
                "maglev_table_size: 4 is not a prime",
                Box::new(|v| {
                    v[0].spec.scheduler = crate::config::Scheduler::Maglev;
                    v[0].spec.maglev_table_size = 4;
                }),
            ),
            (
                "vlan: 5000 is not a VLAN id",
                Box::new(|v| v[0].spec.vlan = Some(5000)),
            ),
            (
                "listed twice in this VIP",
                Box::new(|v| v[0].backends[1].address = v[0].backends[0].address),
            ),
            // Across VIPs: the state's own checks.
            (
                "a VIP named \"web\" exists already",
                Box::new(|v| {
                    let mut twin = v[0].clone();
                    twin.spec.port = 81;
                    v.push(twin);
                }),
            ),
        ];
        for (expected, spoil) in cases {
            let mut vips = state::saved_from_config(&config);
            spoil(&mut vips);
            save(&path, vips);
            let (vips, source) = restore(&config, &path, &config_digest(CONFIG));
            assert_eq!(vips, state::saved_from_config(&config), "{expected}");
            match source {
                Source::Refused { why, kept: Some(k) } => {
                    assert!(why.contains(expected), "{expected:?} not in {why:?}");
                    fs::remove_file(k).unwrap();
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
        // What a run leaves legitimately: a VIP without backends (vip add)
        // and one whose backends all have weight 0.
        let mut vips = changed(&config);
        vips[0].backends.iter_mut().for_each(|b| b.weight = 0);
        let mut empty = vips[0].clone();
        empty.spec.name = "empty".into();
        empty.spec.port = 81;
        empty.backends.clear();
        vips.push(empty);
        save(&path, vips.clone());
        let (restored, source) = restore(&config, &path, &config_digest(CONFIG));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(source, Source::StateFile);
        assert_eq!(restored, vips);
    }

    #[test]
    fn a_planted_temporary_link_is_removed_not_followed() {
        let config = config::parse(CONFIG).unwrap();
        let (dir, path) = dir("link");
        let victim = dir.join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, temp_path(&path)).unwrap();
        save(&path, changed(&config));
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            fs::symlink_metadata(temp_path(&path)).is_err(),
            "no temporary left"
        );
        let (vips, _) = restore(&config, &path, &config_digest(CONFIG));
        assert_eq!(vips, changed(&config));

        // A link as the state file itself is not read; the link (not its
        // target) is kept aside.
        fs::remove_file(&path).unwrap();
        let elsewhere = dir.join("elsewhere.json");
        save(&elsewhere, changed(&config));
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let (vips, source) = restore(&config, &path, &config_digest(CONFIG));
        let kept_link = match &source {
            Source::Refused {
                why,
                kept: Some(kept),
            } if why.contains("symbolic link") => {
                fs::symlink_metadata(kept).unwrap().file_type().is_symlink()
            }
            other => panic!("{other:?}"),
        };
        let target = fs::read_to_string(&elsewhere).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(vips, state::saved_from_config(&config));
        assert!(kept_link, "the link itself is kept aside");
        assert!(target.contains("\"weight\": 7"), "its target is untouched");
    }

    #[test]
    fn a_directory_others_can_write_is_refused_for_writing_and_reading() {
        let config = config::parse(CONFIG).unwrap();
        let (dir, path) = dir("unsafe");
        save(&path, changed(&config));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let written = save_state_file(
            &path,
            &StateFile {
                config_sha256: config_digest(CONFIG),
                vips: Vec::new(),
            },
        );
        let (vips, source) = restore(&config, &path, &config_digest(CONFIG));
        fs::remove_dir_all(&dir).unwrap();
        let err = written.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        assert_eq!(vips, state::saved_from_config(&config));
        assert!(
            matches!(&source, Source::Refused { why, kept: None } if why.contains("mode 777")),
            "{source:?}"
        );
    }

    #[test]
    fn a_state_file_of_another_config_is_kept_aside_as_stale() {
        let config = config::parse(CONFIG).unwrap();
        let (dir, path) = dir("stale");
        save(&path, changed(&config));
        let (vips, source) = restore(&config, &path, "another digest");
        let stale = kept_files(&dir, ".stale");
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(vips, state::saved_from_config(&config));
        assert!(matches!(source, Source::Stale { .. }), "{source:?}");
        assert_eq!(stale.len(), 1);
    }
}
