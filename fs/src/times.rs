//! Deferred modification times of in-place overwrites.
//!
//! A write that only overwrites written blocks inside the file changes nothing on disk
//! but the file's mtime and ctime. Committing that per write would cost a metadata
//! transaction for every small random write, so the new time is kept here instead,
//! shown in every attribute reply, and committed at fsync, at close and at unmount (as
//! lazytime does in ext4). A crash can lose such a time update; never data.

use std::collections::HashMap;

use metadata::{Inode, Timestamp};
use parking_lot::Mutex;

/// Times of in-place writes not yet committed, per inode.
#[derive(Debug, Default)]
pub struct PendingTimes {
    map: Mutex<HashMap<u64, Timestamp>>,
}

impl PendingTimes {
    /// Records an in-place write to `ino` at `t`.
    pub fn touch(&self, ino: u64, t: Timestamp) {
        self.map.lock().insert(ino, t);
    }

    /// Shows a pending time in `inode` (as read from the store).
    pub fn overlay(&self, ino: u64, inode: &mut Inode) {
        if let Some(&t) = self.map.lock().get(&ino) {
            inode.mtime = inode.mtime.max(t);
            inode.ctime = inode.ctime.max(t);
        }
    }

    /// Forgets the pending time of `ino` (an operation set the times itself).
    pub fn discard(&self, ino: u64) {
        self.map.lock().remove(&ino);
    }

    /// Takes the pending time of `ino`.
    pub fn take(&self, ino: u64) -> Option<Timestamp> {
        self.map.lock().remove(&ino)
    }

    /// Takes every pending time.
    pub fn take_all(&self) -> Vec<(u64, Timestamp)> {
        self.map.lock().drain().collect()
    }
}
