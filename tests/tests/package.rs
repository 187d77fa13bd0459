//! The Debian package (`cargo xtask package`), built quickly from the
//! debug binary the test run already has (`--profile dev --no-build`:
//! stripped, fast compression) and installed with dpkg into an empty
//! directory tree (`dpkg --root`, maintainer scripts run chrootless with
//! $DPKG_ROOT): every file where an operator expects it, with its mode,
//! the unit and config as in the repo, /var/lib/foobar created 0700, the
//! installed binary's `--version`, and a purge that leaves nothing. Needs
//! root (dpkg) and cargo-deb (`cargo xtask setup` installs it).
use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A scratch directory removed however the test ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (mode bits, uid) of a path that must exist, not followed if a link.
fn mode(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.permissions().mode() & 0o7777, m.uid())
}

#[test]
fn the_deb_installs_into_a_clean_tree_and_purges_clean() {
    let scratch = Scratch(std::env::temp_dir().join(format!("foobar-pkg-{}", std::process::id())));
    let _ = fs::remove_dir_all(&scratch.0);
    let out = scratch.0.join("out");
    let root = scratch.0.join("root");
    fs::create_dir_all(&out).unwrap();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let printed = run(Command::new(cargo)
        .args(["run", "-q", "-p", "xtask", "--", "package"])
        .args(["--profile", "dev", "--no-build", "--out"])
        .arg(&out)
        .current_dir(workspace()));
    let deb = PathBuf::from(
        printed
            .lines()
            .last()
            .expect("xtask prints the .deb")
            .trim(),
    );
    assert!(deb.is_file(), "{}", deb.display());

    let fields = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args([
        "Package",
        "Version",
        "Architecture",
    ]));
    assert!(fields.contains("Package: foobar\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {}", foobar::build_info::VERSION)),
        "{fields}"
    );
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/foobar/foobar.toml");

    // An empty dpkg database in an empty tree; maintainer scripts run from
    // the host with DPKG_ROOT set (ours touch nothing outside it).
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args))
    };
    dpkg(&["-i", deb.to_str().unwrap()]);

    let bin = root.join("usr/sbin/foobar");
    assert_eq!(mode(&bin), (0o755, 0));
    for (path, want) in [
        ("lib/systemd/system/foobar.service", 0o644),
        ("etc/foobar/foobar.toml", 0o644),
        ("usr/lib/tmpfiles.d/foobar.conf", 0o644),
        ("usr/share/bash-completion/completions/foobar", 0o644),
        ("usr/share/zsh/vendor-completions/_foobar", 0o644),
        ("usr/share/fish/vendor_completions.d/foobar.fish", 0o644),
        ("usr/share/man/man1/foobar.1.gz", 0o644),
        ("usr/share/man/man1/foobar-run.1.gz", 0o644),
        ("usr/share/doc/foobar/INSTALL.md", 0o644),
    ] {
        assert_eq!(mode(&root.join(path)), (want, 0), "{path}");
    }
    assert_eq!(
        mode(&root.join("var/lib/foobar")),
        (0o700, 0),
        "the state directory, made by postinst"
    );

    // The unit and the config are the repo's, byte for byte.
    let unit = fs::read_to_string(root.join("lib/systemd/system/foobar.service")).unwrap();
    assert_eq!(
        unit,
        fs::read_to_string(workspace().join("examples/foobar.service")).unwrap()
    );
    for line in [
        "Type=notify",
        "ExecStart=/usr/sbin/foobar run --config /etc/foobar/foobar.toml",
        "ExecReload=/usr/sbin/foobar reload",
        "StateDirectory=foobar",
        "ProtectSystem=strict",
        "ReadWritePaths=/sys/fs/bpf",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line:?}");
    }
    assert_eq!(
        fs::read(root.join("etc/foobar/foobar.toml")).unwrap(),
        fs::read(workspace().join("examples/foobar.toml")).unwrap()
    );
    let bash =
        fs::read_to_string(root.join("usr/share/bash-completion/completions/foobar")).unwrap();
    assert!(bash.contains("complete -F _foobar"), "{bash:.200}");
    let man = run(Command::new("zcat").arg(root.join("usr/share/man/man1/foobar-run.1.gz")));
    assert!(
        man.contains("state\\-dir"),
        "foobar-run(1) documents --state-dir"
    );

    // The installed binary runs and names its build.
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!(
            "foobar {} (git {})",
            foobar::build_info::VERSION,
            foobar::build_info::REVISION
        )
    );
    // ... and checks the packaged config (no root needed for that).
    run(Command::new(&bin)
        .args(["check", "--config"])
        .arg(root.join("etc/foobar/foobar.toml")));

    dpkg(&["--purge", "foobar"]);
    for gone in [
        "usr/sbin/foobar",
        "etc/foobar/foobar.toml",
        "lib/systemd/system/foobar.service",
        "var/lib/foobar",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left after purge");
    }
}
