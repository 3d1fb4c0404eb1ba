//! Mounting a shared volume on a node: `<root>/ClusterStorage/<label>`, the FUSE front
//! end over the volume's cluster metadata and the node's own path to the LUN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use blockdev::BlockDevice;
use redirect_io::PathMonitor;

use super::ClusterVolume;
use crate::fuse_fs::CsvFs;
use crate::meta::Meta;
use crate::mount::is_mount_point;
use crate::options::MountOptions;

/// FUSE worker threads of a cluster mount.
const CLUSTER_THREADS: usize = 16;

/// Where a volume is mounted under `root`.
pub fn mount_point(root: &Path, label: &str) -> PathBuf {
    root.join("ClusterStorage").join(label)
}

/// Detaches a mount left behind by a daemon that died (its mount point answers
/// ENOTCONN), so that the node can mount there again.
fn clear_dead_mount(mp: &Path) -> Result<()> {
    match std::fs::metadata(mp) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %mp.display(), "detaching the mount of a daemon that died");
            let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())?;
            // SAFETY: umount2 with a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                bail!(
                    "cannot detach the dead mount at {}: {}",
                    mp.display(),
                    std::io::Error::last_os_error()
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Mounts `vol` at `<root>/ClusterStorage/<label>`; `source` is the mount's source
/// name (the LUN). The mount lasts as long as the returned session.
pub fn mount(
    vol: Arc<ClusterVolume>,
    dev: Arc<dyn BlockDevice>,
    path: Arc<PathMonitor>,
    root: &Path,
    source: &str,
) -> Result<fuser::BackgroundSession> {
    let mp = mount_point(root, vol.label());
    let _ = clear_dead_mount(&mp);
    std::fs::create_dir_all(&mp)
        .with_context(|| format!("creating mount point {}", mp.display()))?;
    if is_mount_point(&mp)? {
        bail!(
            "mount point {} is busy: something is mounted there already; unmount it first",
            mp.display()
        );
    }
    // Requests of a node that does not coordinate wait on the network more than on
    // the CPU: more workers keep more of them in flight (and in one group commit).
    let options = MountOptions {
        threads: CLUSTER_THREADS,
        ..MountOptions::default()
    };
    let mut config = fuser::Config::default();
    config.mount_options = options.fuse_options(source);
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(options.threads);
    config.clone_fd = true;
    let fs = CsvFs::new(Meta::new(vol.clone()), dev, false, true)
        .with_locks(vol.clone())
        .with_layout_use(vol.layout_use)
        .with_lease_cache(vol.lease_cache());
    vol.report_io(path);
    let session = fuser::Session::new(fs, &mp, &config).map_err(|e| {
        anyhow::anyhow!(
            "cannot mount volume {} on {}: {e}",
            vol.label(),
            mp.display()
        )
    })?;
    vol.lease_cache().set_notifier(session.notifier());
    let bg = session.spawn()?;
    tracing::info!(volume = vol.label(), mountpoint = %mp.display(), "mounted");
    Ok(bg)
}
