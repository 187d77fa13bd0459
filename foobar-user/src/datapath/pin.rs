//! Where a datapath instance lives in bpffs, so it outlives the daemon:
//!
//! ```text
//! <root>/<iface>/link                      the XDP link (attached while pinned)
//! <root>/<iface>/layout-v<N>-<sizes>/NAME  every map the programs use
//! ```
//!
//! `<root>` is `/sys/fs/bpf/foobar` unless told otherwise. The layout
//! directory's name is `foobar_common::LAYOUT_VERSION` and the sizes of the
//! shared types: a binary of another layout finds no directory of its own
//! name and refuses to adopt. This module creates and removes pins; it
//! writes no map entry.
use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use foobar_common::{LAYOUT_SIZES, LAYOUT_VERSION, MAX_BACKENDS, MAX_VIPS, RING_CAPACITY};

use super::{DatapathError, Result};

/// Default root of the pins (one directory per interface below it).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/foobar";

/// Where the kernel's BPF filesystem is mounted by convention.
const BPFFS: &str = "/sys/fs/bpf";
/// `statfs(2)` f_type of bpffs (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Every map of the object, pinned by name (a map left out would start
/// empty in the new program).
pub(super) const PINNED_MAPS: [&str; 24] = [
    "VIP_ADDRS4",
    "VIP_ADDR_BITS",
    "VIPS",
    "VIP_GEN",
    "BACKENDS",
    "RINGS",
    "RING_STATE",
    "RR_CURSOR",
    "FLOWS",
    "AFFINITY",
    "VIP_STATS",
    "BACKEND_STATS",
    "BACKEND_NEW_FLOWS",
    "REASONS",
    "EVENTS",
    "CLOCK",
    "NAT_VIPS",
    "NAT_BACKEND_PORTS",
    "NAT_FLOWS",
    "NAT_REVERSE",
    "DNAT_SRC_BITS",
    "VIP_ADDRS6",
    "VIP_ADDR_BITS6",
    "FLOWS6",
];

/// The pin directory of one instance: `<root>/<iface>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    dir: PathBuf,
}

/// The name of this binary's layout directory, e.g.
/// `layout-v5-16_24_32_24_16_20_8_16_8_20_64_24-64_4096_65537` (bpffs refuses names
/// with a dot).
pub fn layout_name() -> String {
    let sizes: Vec<String> = LAYOUT_SIZES.iter().map(|s| s.to_string()).collect();
    format!(
        "layout-v{LAYOUT_VERSION}-{}-{MAX_VIPS}_{MAX_BACKENDS}_{RING_CAPACITY}",
        sizes.join("_")
    )
}

impl PinDir {
    pub fn new(root: &Path, iface: &str) -> Self {
        PinDir {
            dir: root.join(iface),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub(super) fn link(&self) -> PathBuf {
        self.dir.join("link")
    }

    /// The link of a two-arm node's backend-side interface (removed with
    /// the directory, as the main one).
    pub(super) fn arm_link(&self) -> PathBuf {
        self.dir.join("link-backend")
    }

    pub(super) fn maps_dir(&self) -> PathBuf {
        self.dir.join(layout_name())
    }

    pub(super) fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Whether anything is pinned for this instance.
    pub fn exists(&self) -> bool {
        self.dir.exists()
    }

    /// Layout directories pinned here by any binary.
    fn layouts(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.io_error(&self.dir, source)),
        };
        Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("layout-"))
            .collect())
    }

    /// Mounts bpffs when the pins go below an unmounted /sys/fs/bpf,
    /// creates the directory, takes its lock (held as long as the returned
    /// descriptor is open: one daemon per instance), and says whether maps
    /// of this binary's layout are pinned there already (to be adopted).
    /// Refuses maps of another layout.
    pub(super) fn prepare(&self) -> Result<(bool, OwnedFd)> {
        if self.dir.starts_with(BPFFS) {
            ensure_bpffs()?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| self.io_error(&self.dir, source))?;
        let lock = match self.try_lock()? {
            Some(fd) => fd,
            None => {
                return Err(DatapathError::InUse {
                    dir: self.dir.clone(),
                })
            }
        };
        let want = layout_name();
        let found = self.layouts()?;
        if let Some(other) = found.iter().find(|n| **n != want) {
            return Err(DatapathError::LayoutMismatch {
                dir: self.dir.clone(),
                found: other.clone(),
                want,
            });
        }
        let adopt = !found.is_empty();
        std::fs::create_dir_all(self.maps_dir())
            .map_err(|source| self.io_error(&self.maps_dir(), source))?;
        Ok((adopt, lock))
    }

    /// Takes the instance's lock (an exclusive flock on its directory):
    /// None if a running daemon holds it, or if nothing is pinned, a lock
    /// on nothing.
    pub fn try_lock(&self) -> Result<Option<OwnedFd>> {
        let dir = match std::fs::File::open(&self.dir) {
            Ok(d) => OwnedFd::from(d),
            Err(source) => return Err(self.io_error(&self.dir, source)),
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(dir));
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(self.io_error(&self.dir, error))
    }

    /// Removes every pin of the instance (the link's first, so forwarding
    /// stops before the maps go); true if there was anything to remove.
    /// The link detaches once no process holds it open any more.
    pub fn remove(&self) -> Result<bool> {
        if !self.dir.exists() {
            return Ok(false);
        }
        match std::fs::remove_file(self.link()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(self.io_error(&self.link(), source)),
        }
        std::fs::remove_dir_all(&self.dir).map_err(|source| self.io_error(&self.dir, source))?;
        Ok(true)
    }

    fn io_error(&self, path: &Path, source: std::io::Error) -> DatapathError {
        DatapathError::Pin {
            path: path.to_owned(),
            source,
        }
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it is there (Cilium's agent does the
/// same). In a mount namespace of its own (`ip netns exec`), the mount is
/// private to it and gone for the next command: see docs/LAB.md.
fn ensure_bpffs() -> Result<()> {
    mount_bpffs().map_err(|source| DatapathError::Bpffs { source })
}

/// [`ensure_bpffs`] for every user of bpffs (the daemon, `foobar decap`).
pub(crate) fn mount_bpffs() -> std::io::Result<()> {
    let path = CString::new(Path::new(BPFFS).as_os_str().as_bytes()).expect("no NUL in a const");
    // SAFETY: statfs writes one `struct statfs` into `st`, which outlives
    // the call; `path` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    tracing::info!(path = BPFFS, "mounted bpffs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_name_carries_version_and_sizes() {
        let name = layout_name();
        assert!(name.starts_with(&format!("layout-v{LAYOUT_VERSION}-16_24_32_")));
        let dir = PinDir::new(Path::new("/sys/fs/bpf/foobar"), "eth0");
        assert_eq!(dir.link(), Path::new("/sys/fs/bpf/foobar/eth0/link"));
        assert_eq!(dir.map("FLOWS"), dir.maps_dir().join("FLOWS"));
    }
}
