//! A node's changes that the coordinator acknowledged before they were durable, kept
//! until they are, to be replayed to the next coordinator if this one dies first.
//!
//! The coordinator answers a namespace change of another node as soon as it is
//! committed, before the flush (`crate::meta::local::execute_for`), and flushes
//! whenever a change of any other origin would sit beside it or be seen by another
//! node. So when the coordinator dies, what it loses of this node's changes was seen
//! by no other node, and was applied, in the order recorded here, right after the
//! state that survived: replayed in that order, with the same request ids (an
//! applied one is answered from the store's record), each comes out as it first
//! did. The new coordinator serves nobody else until this node has replayed them
//! (see `super::volume`), so nothing can come in between.
//!
//! Each answer says how many durable commits the coordinator has made; a change is
//! confirmed, and dropped from here, once that count passes the one it came with. A
//! node keeps at most [`MAX_UNCONFIRMED`]: past that, it asks for a durable commit.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::wire::Unconfirmed;
use crate::meta::{MetaCall, MetaReply};

/// How many unconfirmed changes a node keeps before it asks for a durable commit
/// (which bounds the replay after a failover). Above what a node changes between two
/// of the coordinator's timed durable commits (a second apart): each durable commit
/// asked for holds up the coordinator's commits while it flushes (a cap of 256 cost a
/// fifth of the create rate of 8 threads).
pub const MAX_UNCONFIRMED: usize = 4096;

/// One acknowledged change not known to be durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The epoch of the coordinator that acknowledged it.
    pub epoch: u64,
    /// Where it stands.
    pub at: Unconfirmed,
    /// The request id.
    pub id: u64,
    /// The change.
    pub call: MetaCall,
    /// Its answer.
    pub reply: MetaReply,
}

impl Change {
    /// For a create: the inode number its first answer gave, which a replay keeps.
    pub fn pinned_ino(&self) -> Option<u64> {
        match (&self.call, &self.reply) {
            (MetaCall::Create { .. }, MetaReply::Entry(ino, _)) => Some(*ino),
            _ => None,
        }
    }
}

/// This node's unconfirmed changes to one volume.
#[derive(Debug, Default)]
pub struct UnconfirmedLog {
    kept: Mutex<Kept>,
    /// Changes replayed since the node started, and of those, how many did not come
    /// out as they first did.
    pub replayed: AtomicU64,
    /// See `replayed`.
    pub diverged: AtomicU64,
}

#[derive(Debug, Default)]
struct Kept {
    changes: Vec<Change>,
    /// The latest count of durable commits heard of, and its epoch.
    confirmed: (u64, u64),
    /// The earliest epoch of a kept change.
    oldest_epoch: Option<u64>,
}

impl UnconfirmedLog {
    /// Keeps a change acknowledged early, unless known durable already.
    pub fn record(&self, change: Change) {
        let mut k = self.kept.lock();
        if change.epoch == k.confirmed.0 && change.at.durable_after < k.confirmed.1 {
            return;
        }
        k.oldest_epoch = Some(k.oldest_epoch.map_or(change.epoch, |e| e.min(change.epoch)));
        k.changes.push(change);
    }

    /// The coordinator of `epoch` has made `durable_commits` durable commits: drops
    /// the changes it has made durable. (The count moves once per durable commit:
    /// the kept changes are looked through only then.)
    pub fn confirm(&self, epoch: u64, durable_commits: u64) {
        let mut k = self.kept.lock();
        if (epoch, durable_commits) <= k.confirmed {
            return;
        }
        k.confirmed = (epoch, durable_commits);
        k.changes
            .retain(|ch| ch.epoch != epoch || ch.at.durable_after >= durable_commits);
        k.oldest_epoch = k.changes.iter().map(|c| c.epoch).min();
    }

    /// How many changes are kept.
    pub fn len(&self) -> usize {
        self.kept.lock().changes.len()
    }

    /// True when none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when a kept change was acknowledged under an epoch before `epoch`.
    pub fn has_before(&self, epoch: u64) -> bool {
        self.kept.lock().oldest_epoch.is_some_and(|e| e < epoch)
    }

    /// Takes every kept change, in the order the coordinators applied them.
    pub fn take(&self) -> Vec<Change> {
        let mut all = {
            let mut k = self.kept.lock();
            k.oldest_epoch = None;
            std::mem::take(&mut k.changes)
        };
        all.sort_by_key(|c| (c.epoch, c.at.seq));
        all
    }

    /// Counts one replayed change; true when it came out as it first did.
    pub fn count_replay(&self, first: &MetaReply, again: &MetaReply) -> bool {
        self.replayed.fetch_add(1, Ordering::Relaxed);
        let same = same_outcome(first, again);
        if !same {
            self.diverged.fetch_add(1, Ordering::Relaxed);
        }
        same
    }
}

/// True when a replayed change's answer names the same things as the first answer:
/// the same inode for a create or an unlink (times may differ).
pub fn same_outcome(first: &MetaReply, again: &MetaReply) -> bool {
    match (first, again) {
        (MetaReply::Entry(a, _), MetaReply::Entry(b, _)) => a == b,
        (MetaReply::Unlinked(a), MetaReply::Unlinked(b)) => {
            a.map(|u| (u.ino, u.orphaned)) == b.map(|u| (u.ino, u.orphaned))
        }
        (MetaReply::Inode(_), MetaReply::Inode(_)) | (MetaReply::Done, MetaReply::Done) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use metadata::{Inode, Unlinked};

    use super::*;

    fn change(epoch: u64, seq: u64, durable_after: u64) -> Change {
        Change {
            epoch,
            at: Unconfirmed { seq, durable_after },
            id: seq + 100,
            call: MetaCall::DeleteInode { ino: seq },
            reply: MetaReply::Done,
        }
    }

    #[test]
    fn changes_go_once_durable_and_replay_in_the_order_applied() {
        let log = UnconfirmedLog::default();
        log.record(change(3, 7, 10));
        log.record(change(3, 5, 10));
        log.record(change(3, 9, 11));
        log.record(change(2, 40, 1));
        assert!(log.has_before(3) && !log.has_before(2));
        // Epoch 3 has made 11 durable commits: those committed before the 11th went.
        log.confirm(3, 11);
        assert_eq!(log.len(), 2);
        assert!(log.has_before(3));
        // An answer that arrives late, durable already: not kept.
        log.record(change(3, 6, 10));
        assert_eq!(log.len(), 2);
        // The same count again, or an older one: nothing to look through.
        log.confirm(3, 11);
        log.confirm(3, 10);
        assert_eq!(log.len(), 2);
        // A late answer of an earlier coordinator is kept: it has to be replayed.
        log.record(change(2, 41, 0));
        assert_eq!(log.len(), 3);
        let order: Vec<(u64, u64)> = log.take().iter().map(|c| (c.epoch, c.at.seq)).collect();
        assert_eq!(order, vec![(2, 40), (2, 41), (3, 9)]);
        assert!(log.is_empty() && !log.has_before(9));
    }

    #[test]
    fn a_replay_must_name_the_same_inodes() {
        let log = UnconfirmedLog::default();
        let a = MetaReply::Entry(7, Inode::default());
        let b = MetaReply::Entry(
            7,
            Inode {
                ctime: metadata::Timestamp { secs: 9, nanos: 0 },
                ..Inode::default()
            },
        );
        assert!(log.count_replay(&a, &b), "times may differ");
        assert!(!log.count_replay(&a, &MetaReply::Entry(8, Inode::default())));
        let u = |ino| {
            MetaReply::Unlinked(Some(Unlinked {
                ino,
                orphaned: false,
            }))
        };
        assert!(log.count_replay(&u(4), &u(4)));
        assert!(!log.count_replay(&u(4), &MetaReply::Unlinked(None)));
        assert_eq!(log.replayed.load(Ordering::Relaxed), 4);
        assert_eq!(log.diverged.load(Ordering::Relaxed), 2);
    }
}
