//! POSIX byte-range locks (fcntl) and flock of a shared volume, cluster-wide: the FUSE
//! front end hands them to the volume's lockspace (lockmgr's range locks, served by
//! the coordinator), so that a lock on one node makes another node's F_SETLKW wait.
//!
//! A single-node mount has none of this: the kernel keeps its locks itself.

use std::collections::HashSet;
use std::sync::Arc;

use fuser::{Errno, ReplyEmpty, ReplyLock};
use lockmgr::protocol::{LockKind, RangeOp, RangeOutcome};
use parking_lot::Mutex;

/// What gets an outcome to the kernel, whenever it comes.
pub type Done = Box<dyn FnOnce(Result<RangeOutcome, Errno>) + Send>;

/// Where a volume's range locks are kept.
pub trait RangeLocks: Send + Sync {
    /// Carries out `op` of lock owner `owner` on `file`; calls `done` with the outcome,
    /// possibly later and from another thread (a waiting F_SETLKW must not hold a
    /// FUSE worker).
    fn range(&self, file: u64, owner: u64, op: RangeOp, done: Done);
}

/// The locks of a mount: the lockspace, and which (file, owner) pairs ever locked
/// here, so that a close without locks costs no round trip.
pub struct MountLocks {
    service: Arc<dyn RangeLocks>,
    used: Mutex<HashSet<(u64, u64)>>,
}

/// FUSE gives inclusive ends (`OFFSET_MAX` for "to the end"); the lockspace takes
/// `[start, end)` with `u64::MAX` for "to the end".
fn exclusive_end(end: u64) -> u64 {
    if end >= i64::MAX as u64 {
        u64::MAX
    } else {
        end + 1
    }
}

fn inclusive_end(end: u64) -> u64 {
    if end == u64::MAX {
        i64::MAX as u64
    } else {
        end.saturating_sub(1)
    }
}

fn kind_of(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Read),
        libc::F_WRLCK => Some(LockKind::Write),
        _ => None,
    }
}

fn typ_of(kind: LockKind) -> i32 {
    match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
    }
}

impl MountLocks {
    /// Locks kept by `service`.
    pub fn new(service: Arc<dyn RangeLocks>) -> MountLocks {
        MountLocks {
            service,
            used: Mutex::new(HashSet::new()),
        }
    }

    /// F_GETLK.
    pub fn get(&self, ino: u64, owner: u64, (start, end): (u64, u64), typ: i32, reply: ReplyLock) {
        let Some(kind) = kind_of(typ) else {
            return reply.error(Errno::EINVAL);
        };
        let op = RangeOp::Test {
            kind,
            start,
            end: exclusive_end(end),
        };
        self.service.range(
            ino,
            owner,
            op,
            Box::new(move |r| match r {
                Ok(RangeOutcome::Blocker(l)) => {
                    reply.locked(l.start, inclusive_end(l.end), typ_of(l.kind), 0)
                }
                Ok(RangeOutcome::Free) => reply.locked(start, end, libc::F_UNLCK, 0),
                Ok(_) => reply.error(Errno::ENOLCK),
                Err(e) => reply.error(e),
            }),
        );
    }

    /// F_SETLK, F_SETLKW (`sleep`) and F_UNLCK.
    pub fn set(
        &self,
        ino: u64,
        owner: u64,
        (start, end): (u64, u64),
        typ: i32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let end = exclusive_end(end);
        let op = match kind_of(typ) {
            Some(kind) => {
                self.used.lock().insert((ino, owner));
                RangeOp::Lock {
                    kind,
                    start,
                    end,
                    wait: sleep,
                }
            }
            None if typ == libc::F_UNLCK => RangeOp::Unlock { start, end },
            None => return reply.error(Errno::EINVAL),
        };
        self.service.range(
            ino,
            owner,
            op,
            Box::new(move |r| match r {
                Ok(RangeOutcome::Done) => reply.ok(),
                Ok(RangeOutcome::Busy) => reply.error(Errno::EAGAIN),
                Ok(_) => reply.error(Errno::ENOLCK),
                Err(e) => reply.error(e),
            }),
        );
    }

    /// The owner closed the file (POSIX: at every close; flock: at the last close of
    /// the open file): its locks on it go. `reply`, if given, is answered once the
    /// lockspace has let them go, so that close(2) returns with the locks gone.
    pub fn release_owner(&self, ino: u64, owner: u64, reply: Option<ReplyEmpty>) {
        if !self.used.lock().remove(&(ino, owner)) {
            if let Some(r) = reply {
                r.ok();
            }
            return;
        }
        self.service.range(
            ino,
            owner,
            RangeOp::Release,
            Box::new(move |_| {
                if let Some(r) = reply {
                    r.ok();
                }
            }),
        );
    }
}
