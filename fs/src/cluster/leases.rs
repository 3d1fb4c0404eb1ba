//! The coordinator's record of what each node's kernel may cache: metadata leases.
//!
//! A node's kernel keeps attributes and directory entries for a while (the FUSE entry
//! and attribute timeouts) instead of asking for them at every stat. It may do so only
//! under a lease: an answer that carries attributes or an entry grants the asking node
//! a lease on them, recorded here, and a change to them recalls the leases of every
//! other node before the change is answered (the holder drops what its kernel cached,
//! then says so). A holder that does not answer is waited for until its lease runs
//! out: the holder's kernel stops trusting the cache by then on its own.
//!
//! A read that ran while a change to the same things was being recalled must not leave
//! a lease behind that the recall missed: a change counts itself in the
//! [`ChangeCounters`] when it scans for holders, and a grant is refused when a counter
//! of its keys moved between the start of the read and the grant.
//!
//! A new coordinator starts with an empty table and, before it serves, has every node
//! drop everything it keeps ([`super::recall`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::change_counters::{ChangeCounters, Snapshot};
use super::wire::LeaseKey;
use crate::meta::{MetaCall, MetaReply};

/// Leases to recall from one node before a change is answered.
#[derive(Debug, PartialEq)]
pub struct Recall {
    /// The holder.
    pub node: u8,
    /// What it holds that changed.
    pub keys: Vec<LeaseKey>,
    /// When its last lease among them runs out on its own.
    pub until: Instant,
}

/// The leases granted by this node while it coordinates a volume.
pub struct LeaseTable {
    lease: Duration,
    inner: Mutex<Inner>,
    changes: ChangeCounters,
}

struct Inner {
    holders: HashMap<LeaseKey, Vec<(u8, Instant)>>,
    next_prune: Instant,
}

impl LeaseTable {
    /// An empty table whose leases last `lease`.
    pub fn new(lease: Duration) -> LeaseTable {
        LeaseTable {
            lease,
            inner: Mutex::new(Inner {
                holders: HashMap::new(),
                next_prune: Instant::now() + lease,
            }),
            changes: ChangeCounters::default(),
        }
    }

    /// Forgets every lease (a new term as coordinator).
    pub fn clear(&self) {
        self.inner.lock().holders.clear();
    }

    /// The change counters now: take before a read whose answer may grant leases.
    pub fn snapshot(&self) -> Snapshot {
        self.changes.snapshot()
    }

    /// Grants `node` leases on `keys` for the answer of a read that started at
    /// `before`; false (no lease: the node must not cache the answer) when a change
    /// to any of them may have been recalled meanwhile.
    pub fn grant(&self, node: u8, before: &Snapshot, keys: Vec<LeaseKey>) -> bool {
        let now = Instant::now();
        let until = now + self.lease;
        // Under the lock: a change counts itself under it too, before its scan.
        let mut g = self.inner.lock();
        if !keys.iter().all(|k| self.changes.unchanged(before, k)) {
            return false;
        }
        for key in keys {
            let holders = g.holders.entry(key).or_default();
            match holders.iter_mut().find(|(n, _)| *n == node) {
                Some(h) => h.1 = until,
                None => holders.push((node, until)),
            }
        }
        if now >= g.next_prune {
            g.holders.retain(|_, hs| {
                hs.retain(|(_, u)| *u > now);
                !hs.is_empty()
            });
            g.next_prune = now + self.lease;
        }
        true
    }

    /// Records a change to `keys` made for `node`: bumps their counters and takes the
    /// live leases of the other nodes on them, which the caller recalls before it
    /// answers the change.
    pub fn changed(&self, node: u8, keys: &[LeaseKey]) -> Vec<Recall> {
        let now = Instant::now();
        let mut out: Vec<Recall> = Vec::new();
        let mut g = self.inner.lock();
        for key in keys {
            self.changes.bump(key);
            let Some(holders) = g.holders.get_mut(key) else {
                continue;
            };
            holders.retain(|&(holder, until)| {
                if holder == node || until <= now {
                    return holder == node && until > now;
                }
                match out.iter_mut().find(|r| r.node == holder) {
                    Some(r) => {
                        r.keys.push(key.clone());
                        r.until = r.until.max(until);
                    }
                    None => out.push(Recall {
                        node: holder,
                        keys: vec![key.clone()],
                        until,
                    }),
                }
                false
            });
            if holders.is_empty() {
                g.holders.remove(key);
            }
        }
        out
    }
}

/// What the answer to `call` lets the asking node's kernel cache.
pub fn granted_by(call: &MetaCall, reply: &MetaReply) -> Vec<LeaseKey> {
    match (call, reply) {
        (MetaCall::Lookup { parent, name }, MetaReply::Entry(ino, _))
        | (MetaCall::Create { parent, name, .. }, MetaReply::Entry(ino, _)) => {
            vec![LeaseKey::Entry(*parent, name.clone()), LeaseKey::Attr(*ino)]
        }
        (
            MetaCall::Link {
                ino, parent, name, ..
            },
            MetaReply::Inode(_),
        ) => vec![LeaseKey::Entry(*parent, name.clone()), LeaseKey::Attr(*ino)],
        (MetaCall::Layout { ino, .. }, MetaReply::Layout(..)) => vec![LeaseKey::Attr(*ino)],
        (MetaCall::Inode { ino }, MetaReply::Inode(_))
        | (MetaCall::SetAttr { ino, .. }, MetaReply::Inode(_))
        | (MetaCall::Truncate { ino, .. }, MetaReply::Inode(_)) => vec![LeaseKey::Attr(*ino)],
        _ => Vec::new(),
    }
}

/// What a change made by `call` (answered `reply`) makes stale in other nodes'
/// kernels. `moved` are the inodes of the names of [`moves`], looked up before it ran.
pub fn changed_by(call: &MetaCall, reply: &MetaReply, moved: &[u64]) -> Vec<LeaseKey> {
    let gone = match reply {
        MetaReply::Unlinked(Some(u)) => Some(LeaseKey::Attr(u.ino)),
        _ => None,
    };
    let mut keys = match call {
        // A name that appears ends the leases on its absence.
        MetaCall::Create { parent, name, .. } => vec![
            LeaseKey::Entry(*parent, name.clone()),
            LeaseKey::Attr(*parent),
        ],
        MetaCall::Link { ino, parent, name } => vec![
            LeaseKey::Entry(*parent, name.clone()),
            LeaseKey::Attr(*ino),
            LeaseKey::Attr(*parent),
        ],
        MetaCall::Unlink { parent, name, .. } | MetaCall::Rmdir { parent, name } => vec![
            LeaseKey::Entry(*parent, name.clone()),
            LeaseKey::Attr(*parent),
        ],
        MetaCall::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ..
        } => vec![
            LeaseKey::Entry(*parent, name.clone()),
            LeaseKey::Entry(*new_parent, new_name.clone()),
            LeaseKey::Attr(*parent),
            LeaseKey::Attr(*new_parent),
        ],
        MetaCall::SetAttr { ino, .. }
        | MetaCall::SetXattr { ino, .. }
        | MetaCall::RemoveXattr { ino, .. }
        | MetaCall::AllocateRange { ino, .. }
        | MetaCall::CommitWrite { ino, .. }
        | MetaCall::Truncate { ino, .. }
        | MetaCall::Punch { ino, .. }
        | MetaCall::Preallocate { ino, .. }
        | MetaCall::DeleteInode { ino } => vec![LeaseKey::Attr(*ino)],
        MetaCall::TouchTimes { times } => times.iter().map(|(i, _)| LeaseKey::Attr(*i)).collect(),
        // Queries, and Sync: nothing anyone keeps changes.
        _ => Vec::new(),
    };
    keys.extend(gone);
    keys.extend(moved.iter().map(|i| LeaseKey::Attr(*i)));
    keys
}

/// The directories a change alters, whose attributes after it the changing node gets
/// with the answer, under lease: it keeps them instead of asking for them again.
pub fn parents_of(call: &MetaCall) -> Vec<u64> {
    match call {
        MetaCall::Create { parent, .. }
        | MetaCall::Link { parent, .. }
        | MetaCall::Unlink { parent, .. }
        | MetaCall::Rmdir { parent, .. } => vec![*parent],
        MetaCall::Rename {
            parent, new_parent, ..
        } if parent != new_parent => vec![*parent, *new_parent],
        MetaCall::Rename { parent, .. } => vec![*parent],
        _ => Vec::new(),
    }
}

/// The names whose inodes a call changes (a rename: the source and the target, which
/// it moves or replaces; an unlink or rmdir: the name), to be looked up before it
/// runs, since the answer may not say.
pub fn moves(call: &MetaCall) -> Vec<(u64, &[u8])> {
    match call {
        MetaCall::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ..
        } => vec![
            (*parent, name.as_slice()),
            (*new_parent, new_name.as_slice()),
        ],
        MetaCall::Unlink { parent, name, .. } | MetaCall::Rmdir { parent, name } => {
            vec![(*parent, name.as_slice())]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use metadata::Inode;

    use super::*;

    const LEASE: Duration = Duration::from_secs(5);

    fn lookup(parent: u64, name: &[u8]) -> MetaCall {
        MetaCall::Lookup {
            parent,
            name: name.to_vec(),
        }
    }

    #[test]
    fn a_change_recalls_the_other_holders_once() {
        let t = LeaseTable::new(LEASE);
        let keys = granted_by(&lookup(1, b"a"), &MetaReply::Entry(7, Inode::default()));
        assert!(t.grant(2, &t.snapshot(), keys.clone()));
        assert!(t.grant(3, &t.snapshot(), keys));
        let chmod = MetaCall::SetAttr {
            ino: 7,
            change: Default::default(),
        };
        let changed = changed_by(&chmod, &MetaReply::Inode(Inode::default()), &[]);
        let recalls = t.changed(3, &changed);
        assert_eq!(recalls.len(), 1, "{recalls:?}");
        assert_eq!(recalls[0].node, 2);
        assert_eq!(recalls[0].keys, vec![LeaseKey::Attr(7)]);
        // Node 2's lease is gone, node 3 (who changed it) keeps its own.
        assert!(t.changed(3, &changed).is_empty());
        assert_eq!(t.changed(2, &changed)[0].node, 3);
    }

    #[test]
    fn a_read_overtaken_by_a_change_gets_no_lease() {
        let t = LeaseTable::new(LEASE);
        let before = t.snapshot();
        // A change to the entry is recalled while the lookup runs.
        let unlink = MetaCall::Unlink {
            parent: 1,
            name: b"a".to_vec(),
            delete: None,
        };
        t.changed(3, &changed_by(&unlink, &MetaReply::Unlinked(None), &[]));
        let keys = granted_by(&lookup(1, b"a"), &MetaReply::Entry(7, Inode::default()));
        assert!(!t.grant(2, &before, keys.clone()));
        assert!(t.grant(2, &t.snapshot(), keys));
    }

    #[test]
    fn expired_leases_are_not_recalled() {
        let t = LeaseTable::new(Duration::from_millis(1));
        assert!(t.grant(2, &t.snapshot(), vec![LeaseKey::Attr(9)]));
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.changed(3, &[LeaseKey::Attr(9)]).is_empty());
    }

    #[test]
    fn a_rename_names_both_entries_both_parents_and_what_it_moved() {
        let call = MetaCall::Rename {
            parent: 1,
            name: b"a".to_vec(),
            new_parent: 2,
            new_name: b"b".to_vec(),
            noreplace: false,
            exchange: false,
        };
        assert_eq!(moves(&call), vec![(1, &b"a"[..]), (2, &b"b"[..])]);
        let replaced = MetaReply::Unlinked(Some(metadata::Unlinked {
            ino: 8,
            orphaned: true,
        }));
        let keys = changed_by(&call, &replaced, &[7]);
        for k in [
            LeaseKey::Entry(1, b"a".to_vec()),
            LeaseKey::Entry(2, b"b".to_vec()),
            LeaseKey::Attr(1),
            LeaseKey::Attr(2),
            LeaseKey::Attr(7),
            LeaseKey::Attr(8),
        ] {
            assert!(keys.contains(&k), "{k:?} missing from {keys:?}");
        }
    }
}
