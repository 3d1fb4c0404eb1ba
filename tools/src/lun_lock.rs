//! Refusing a LUN that a csvfs mount on this host is using.

use std::os::fd::AsRawFd;

use anyhow::{Result, bail};
use blockdev::{BlockDevice, FileDevice};

/// Takes the lock every single-node mount holds; fails if one holds it now.
pub fn refuse_if_mounted(dev: &FileDevice) -> Result<()> {
    // SAFETY: flock on a descriptor the device owns.
    let rc = unsafe { libc::flock(dev.file().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "{} is mounted (a csvfs daemon on this host holds it); unmount it first",
            dev.name()
        );
    }
    Ok(())
}
