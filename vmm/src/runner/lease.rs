//! The VM lease: a VM runs on one node at a time. Its process holds an exclusive
//! flock on the VM's `vm.toml` on the volume; csvfs makes flock cluster-wide through
//! the volume's lockspace and releases it when the holder's file closes (however its
//! process ends), so no process on any node can take it while the VM runs, and a
//! fenced node loses it. Beside it, `running.json` says where the VM runs, for
//! `vmm list` and for the error a second start gets: it is written once the lock is
//! held and removed before the lock is let go, so while it is absent the VM is not
//! running (or is just ending).
//!
//! A lockspace lease taken through the node's control socket would not do: those
//! are given back as soon as another node asks for them. A POSIX (OFD) lock would
//! not either: FUSE does not tell the file system when an OFD lock's file closes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vm_config::VM_CONFIG_FILE;

/// The file in a VM's directory that says where it runs.
pub const RUNNING_FILE: &str = "running.json";

/// Where a VM runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The node's name.
    pub node: String,
    /// The VM process on that node.
    pub pid: u32,
    /// Seconds since the epoch when it started there.
    pub since: u64,
}

/// A held VM lease; dropping it releases the lock and removes `running.json`.
#[derive(Debug)]
pub struct VmLease {
    file: File,
    dir: PathBuf,
}

/// Why the lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("VM {name} is already running{where_}")]
    Held { name: String, where_: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl VmLease {
    /// Takes the lease of the VM in `dir` for `node`, or says who has it. A VM whose
    /// process is ending (its `running.json` already gone) is waited for, briefly.
    pub fn take(dir: &Path, name: &str, node: &str) -> Result<VmLease, LeaseError> {
        let path = dir.join(VM_CONFIG_FILE);
        let io = |source| LeaseError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new().read(true).open(&path).map_err(io)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !try_lock(&file).map_err(io)? {
            if let Some(r) = running(dir) {
                return Err(LeaseError::Held {
                    name: name.to_string(),
                    where_: format!(" on node {} (process {})", r.node, r.pid),
                });
            }
            if std::time::Instant::now() > deadline {
                return Err(LeaseError::Held {
                    name: name.to_string(),
                    where_: " (its lease is held, but not by a VM process that says where)".into(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let me = Running {
            node: node.to_string(),
            pid: std::process::id(),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let json = serde_json::to_string(&me).expect("plain data serialises");
        std::fs::write(dir.join(RUNNING_FILE), json).map_err(|e| LeaseError::Io {
            path: dir.join(RUNNING_FILE),
            source: e,
        })?;
        Ok(VmLease {
            file,
            dir: dir.to_path_buf(),
        })
    }

    /// Waits until the VM in `dir` no longer runs (its process has let go of the
    /// lease, or is about to), for at most `limit`.
    pub fn wait_released(dir: &Path, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while running(dir).is_some() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }
}

impl Drop for VmLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(RUNNING_FILE));
        let _ = self.file.sync_all();
        // Closing the file releases the lock.
    }
}

/// Where the VM in `dir` says it runs, if it does.
pub fn running(dir: &Path) -> Option<Running> {
    let text = std::fs::read_to_string(dir.join(RUNNING_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Takes an exclusive flock on `file` without waiting: false if another holds one.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on an open descriptor has no memory-safety preconditions.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}
