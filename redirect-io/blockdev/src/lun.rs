//! Naming a LUN: a path in the host's file system, or an `iscsi://` URL for the
//! built-in initiator.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{BlockDevice, BlockError, FileDevice};

/// Where a LUN is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LunUrl {
    /// An image file or a block device.
    Path(PathBuf),
    /// A LUN on an iSCSI target (its Debug form leaves the CHAP secret out).
    Iscsi(crate::iscsi::IscsiUrl),
}

impl LunUrl {
    /// Parses what a user typed as a LUN.
    pub fn parse(s: &str) -> Result<LunUrl, BlockError> {
        if s.is_empty() {
            return Err(BlockError::BadLun(s.into(), "empty LUN name".into()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if scheme != "iscsi" {
                return Err(BlockError::BadLun(
                    s.into(),
                    format!(
                        "the {scheme}:// scheme is not supported; give an image file, a block device or an iscsi:// URL"
                    ),
                ));
            }
            let url =
                crate::iscsi::IscsiUrl::parse(s).map_err(|e| BlockError::BadLun(s.into(), e))?;
            return Ok(LunUrl::Iscsi(url));
        }
        Ok(LunUrl::Path(PathBuf::from(s)))
    }
}

/// Opens the LUN for a process that must be its only csvfs user on this host (a
/// single-node mount, mkfs, fsck). The LUN is locked on this host (`flock` on an image
/// file or device, on a lock file under `/run/csvfs/luns` for an iSCSI LUN) for as long
/// as the device lives. A lock still held after [`HOST_LOCK_WAIT`] (long enough for an
/// unmounted daemon to finish its last commit and exit) is [`BlockError::InUse`].
/// Other hosts are not kept out this way: that is the cluster's work.
pub fn open_lun_exclusive(s: &str, read_only: bool) -> Result<Arc<dyn BlockDevice>, BlockError> {
    match LunUrl::parse(s)? {
        LunUrl::Path(p) => {
            if !p.exists() {
                return Err(BlockError::BadLun(s.into(), "does not exist".into()));
            }
            let dev = FileDevice::open(&p, read_only)?;
            wait_for_host_lock(dev.file(), dev.name())?;
            Ok(Arc::new(dev))
        }
        LunUrl::Iscsi(url) => {
            let lock = iscsi_lock_file(&url)?;
            wait_for_host_lock(&lock, &url.display_name())?;
            let dev = crate::iscsi::IscsiDevice::open_url(url)?.holding(lock);
            Ok(Arc::new(dev))
        }
    }
}

/// How long [`open_lun_exclusive`] waits for another process of this host to let go.
pub const HOST_LOCK_WAIT: Duration = Duration::from_secs(10);

fn wait_for_host_lock(f: &File, name: &str) -> Result<(), BlockError> {
    let deadline = Instant::now() + HOST_LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor the caller owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BlockError::InUse { lun: name.into() });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The file whose `flock` marks a LUN as held by a csvfs process of this host: the
/// image file or device itself, or for an iSCSI LUN a lock file under
/// `/run/csvfs/luns`, one per portal, target and LUN.
pub fn host_lock_path(s: &str) -> Result<PathBuf, BlockError> {
    match LunUrl::parse(s)? {
        LunUrl::Path(p) => Ok(p),
        LunUrl::Iscsi(url) => Ok(iscsi_lock_path(&url)),
    }
}

fn iscsi_lock_path(u: &crate::iscsi::IscsiUrl) -> PathBuf {
    let key: String = format!("{}_{}_{}_{}", u.host, u.port, u.target, u.lun)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(ISCSI_LOCK_DIR).join(format!("{key}.lock"))
}

const ISCSI_LOCK_DIR: &str = "/run/csvfs/luns";

/// Opens (creating) the host lock file of an iSCSI LUN.
fn iscsi_lock_file(u: &crate::iscsi::IscsiUrl) -> Result<File, BlockError> {
    let path = iscsi_lock_path(u);
    let io_err = |source| BlockError::Io {
        op: "lock",
        lun: u.display_name(),
        offset: 0,
        source,
    };
    std::fs::create_dir_all(ISCSI_LOCK_DIR).map_err(io_err)?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err)
}

/// Opens the LUN named by `s`.
pub fn open_lun(s: &str, read_only: bool) -> Result<Arc<dyn BlockDevice>, BlockError> {
    match LunUrl::parse(s)? {
        LunUrl::Path(p) => Ok(Arc::new(FileDevice::open(&p, read_only)?)),
        // A read-only mount simply never writes; the target is not told.
        LunUrl::Iscsi(url) => Ok(Arc::new(crate::iscsi::IscsiDevice::open_url(url)?)),
    }
}
