//! POSIX byte-range locks (fcntl F_GETLK / F_SETLK / F_SETLKW) of a volume's files, as
//! the coordinator keeps them for every node: the POSIX rules (an owner's locks never
//! conflict with each other; a new lock replaces the owner's locks under it, splitting
//! them; unlocking splits too; adjacent locks of one kind merge), blocked requests that
//! are granted in order when what blocked them goes, and release of everything of an
//! owner (close) or of a node (once it is fenced).
//!
//! Pure bookkeeping: the coordinator turns the grants it returns into messages.

use std::collections::{BTreeMap, VecDeque};

use super::types::NodeId;

/// Who holds a lock: a process's lock owner on a node (FUSE's `lock_owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// The node.
    pub node: NodeId,
    /// The lock owner on that node.
    pub owner: u64,
}

/// A lock's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// F_RDLCK: shared.
    Read,
    /// F_WRLCK: exclusive.
    Write,
}

/// A held lock on `[start, end)` (`end` = `u64::MAX`: to the end of any file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeLock {
    /// The holder.
    pub owner: Owner,
    /// Its kind.
    pub kind: LockKind,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl RangeLock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }

    fn conflicts(&self, owner: Owner, kind: LockKind, start: u64, end: u64) -> bool {
        self.owner != owner
            && self.overlaps(start, end)
            && (self.kind == LockKind::Write || kind == LockKind::Write)
    }
}

/// A request waiting for a range (F_SETLKW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// The caller's number for the request.
    pub id: u64,
    /// The file.
    pub file: u64,
    /// The lock asked for.
    pub lock: RangeLock,
}

/// The range locks of a volume.
#[derive(Debug, Default)]
pub struct RangeLocks {
    held: BTreeMap<u64, Vec<RangeLock>>,
    waiting: BTreeMap<u64, VecDeque<Blocked>>,
}

impl RangeLocks {
    /// F_GETLK: a lock that keeps `owner` from taking this one, if any.
    pub fn test(
        &self,
        file: u64,
        owner: Owner,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> Option<RangeLock> {
        self.held
            .get(&file)?
            .iter()
            .find(|l| l.conflicts(owner, kind, start, end))
            .copied()
    }

    /// F_SETLK: takes the lock if nothing conflicts (and returns true), else changes
    /// nothing.
    pub fn try_lock(
        &mut self,
        file: u64,
        owner: Owner,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> bool {
        if start >= end || self.test(file, owner, kind, start, end).is_some() {
            return start >= end;
        }
        self.put(file, owner, Some(kind), start, end);
        true
    }

    /// F_SETLKW: takes the lock now (true), or queues the request `id`, which a later
    /// [`RangeLocks::unlock`] or release grants.
    pub fn lock_or_wait(&mut self, id: u64, file: u64, lock: RangeLock) -> bool {
        if self.try_lock(file, lock.owner, lock.kind, lock.start, lock.end) {
            return true;
        }
        self.waiting
            .entry(file)
            .or_default()
            .push_back(Blocked { id, file, lock });
        false
    }

    /// Gives up a waiting request (the caller was interrupted); returns the requests
    /// that were queued behind it and are granted now.
    pub fn cancel(&mut self, id: u64) -> Vec<Blocked> {
        let files: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, q)| q.iter().any(|b| b.id == id))
            .map(|(f, _)| *f)
            .collect();
        let mut granted = Vec::new();
        for f in files {
            if let Some(q) = self.waiting.get_mut(&f) {
                q.retain(|b| b.id != id);
            }
            granted.extend(self.wake(f));
        }
        self.waiting.retain(|_, q| !q.is_empty());
        granted
    }

    /// F_UNLCK of `[start, end)` by `owner`; returns the waiting requests now granted.
    pub fn unlock(&mut self, file: u64, owner: Owner, start: u64, end: u64) -> Vec<Blocked> {
        self.put(file, owner, None, start, end);
        self.wake(file)
    }

    /// Everything `owner` holds or waits for on `file` goes (the file's last close by
    /// that owner, as POSIX says); returns the requests granted.
    pub fn release_owner(&mut self, file: u64, owner: Owner) -> Vec<Blocked> {
        if let Some(v) = self.held.get_mut(&file) {
            v.retain(|l| l.owner != owner);
        }
        if let Some(q) = self.waiting.get_mut(&file) {
            q.retain(|b| b.lock.owner != owner);
        }
        self.wake(file)
    }

    /// Everything of a node goes (it is fenced); returns the requests granted.
    pub fn release_node(&mut self, node: NodeId) -> Vec<Blocked> {
        let files: Vec<u64> = self
            .held
            .keys()
            .chain(self.waiting.keys())
            .copied()
            .collect();
        for v in self.held.values_mut() {
            v.retain(|l| l.owner.node != node);
        }
        for q in self.waiting.values_mut() {
            q.retain(|b| b.lock.owner.node != node);
        }
        let mut granted = Vec::new();
        for f in files {
            granted.extend(self.wake(f));
        }
        granted
    }

    /// Every lock held, by file, in order.
    pub fn all(&self) -> Vec<(u64, RangeLock)> {
        self.held
            .keys()
            .flat_map(|f| self.held(*f).into_iter().map(move |l| (*f, l)))
            .collect()
    }

    /// True when no lock is held.
    pub fn is_empty(&self) -> bool {
        self.held.values().all(|v| v.is_empty())
    }

    /// Forgets everything (the node holding this mirror was fenced).
    pub fn clear(&mut self) {
        self.held.clear();
        self.waiting.clear();
    }

    /// The locks held on a file, in order.
    pub fn held(&self, file: u64) -> Vec<RangeLock> {
        let mut v = self.held.get(&file).cloned().unwrap_or_default();
        v.sort_by_key(|l| (l.start, l.owner));
        v
    }

    /// Grants the waiting requests of `file` that no longer conflict, in order; a
    /// request stays behind an earlier one it overlaps (no overtaking).
    fn wake(&mut self, file: u64) -> Vec<Blocked> {
        let Some(mut q) = self.waiting.remove(&file) else {
            self.tidy(file);
            return Vec::new();
        };
        let mut granted = Vec::new();
        let mut still: VecDeque<Blocked> = VecDeque::new();
        while let Some(b) = q.pop_front() {
            let behind = still.iter().any(|s| {
                s.lock.overlaps(b.lock.start, b.lock.end)
                    && (s.lock.kind == LockKind::Write || b.lock.kind == LockKind::Write)
                    && s.lock.owner != b.lock.owner
            });
            let l = b.lock;
            if !behind && self.test(file, l.owner, l.kind, l.start, l.end).is_none() {
                self.put(file, l.owner, Some(l.kind), l.start, l.end);
                granted.push(b);
            } else {
                still.push_back(b);
            }
        }
        if !still.is_empty() {
            self.waiting.insert(file, still);
        }
        self.tidy(file);
        granted
    }

    /// Sets `owner`'s state over `[start, end)` to `kind` (None: unlocked), splitting
    /// and merging its other locks as POSIX says.
    fn put(&mut self, file: u64, owner: Owner, kind: Option<LockKind>, start: u64, end: u64) {
        let v = self.held.entry(file).or_default();
        let mut out = Vec::with_capacity(v.len() + 2);
        for l in v.drain(..) {
            if l.owner != owner || !l.overlaps(start, end) {
                out.push(l);
                continue;
            }
            if l.start < start {
                out.push(RangeLock { end: start, ..l });
            }
            if l.end > end {
                out.push(RangeLock { start: end, ..l });
            }
        }
        if let Some(kind) = kind {
            out.push(RangeLock {
                owner,
                kind,
                start,
                end,
            });
        }
        // Merge the owner's adjacent or overlapping locks of one kind.
        out.sort_by_key(|l| (l.owner, l.start));
        let mut merged: Vec<RangeLock> = Vec::with_capacity(out.len());
        for l in out {
            match merged.last_mut() {
                Some(m) if m.owner == l.owner && m.kind == l.kind && m.end >= l.start => {
                    m.end = m.end.max(l.end);
                }
                _ => merged.push(l),
            }
        }
        *v = merged;
    }

    fn tidy(&mut self, file: u64) {
        if self.held.get(&file).is_some_and(|v| v.is_empty()) {
            self.held.remove(&file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockKind::*;

    const A: Owner = Owner { node: 1, owner: 10 };
    const B: Owner = Owner { node: 2, owner: 20 };
    const C: Owner = Owner { node: 3, owner: 30 };

    fn lock(owner: Owner, kind: LockKind, start: u64, end: u64) -> RangeLock {
        RangeLock {
            owner,
            kind,
            start,
            end,
        }
    }

    #[test]
    fn readers_share_writers_conflict_owners_never_conflict_with_themselves() {
        let mut r = RangeLocks::default();
        assert!(r.try_lock(1, A, Read, 0, 100));
        assert!(r.try_lock(1, B, Read, 50, 150));
        assert!(!r.try_lock(1, C, Write, 90, 95));
        assert_eq!(r.test(1, C, Write, 90, 95).map(|l| l.owner), Some(A));
        assert!(r.test(1, C, Write, 150, 200).is_none());
        // A upgrades its own range where nobody else reads.
        assert!(r.try_lock(1, A, Write, 0, 40));
        assert!(!r.try_lock(1, A, Write, 40, 60), "B reads 50..60");
        // Another file is another world.
        assert!(r.try_lock(2, C, Write, 0, u64::MAX));
    }

    #[test]
    fn a_new_lock_splits_and_replaces_the_owners_own() {
        let mut r = RangeLocks::default();
        r.try_lock(1, A, Write, 0, 100);
        r.try_lock(1, A, Read, 40, 60);
        assert_eq!(
            r.held(1),
            vec![
                lock(A, Write, 0, 40),
                lock(A, Read, 40, 60),
                lock(A, Write, 60, 100)
            ]
        );
        r.unlock(1, A, 50, 70);
        assert_eq!(
            r.held(1),
            vec![
                lock(A, Write, 0, 40),
                lock(A, Read, 40, 50),
                lock(A, Write, 70, 100)
            ]
        );
        // Adjacent locks of one kind merge.
        r.try_lock(1, A, Write, 40, 70);
        assert_eq!(r.held(1), vec![lock(A, Write, 0, 100)]);
    }

    #[test]
    fn blocked_requests_are_granted_in_order_when_the_range_frees() {
        let mut r = RangeLocks::default();
        assert!(r.lock_or_wait(1, 7, lock(A, Write, 0, 10)));
        assert!(!r.lock_or_wait(2, 7, lock(B, Write, 5, 15)));
        assert!(!r.lock_or_wait(3, 7, lock(C, Read, 8, 9)));
        // C's read overlaps B's earlier write request: it waits behind it.
        let g = r.unlock(7, A, 0, 10);
        assert_eq!(g.iter().map(|b| b.id).collect::<Vec<_>>(), vec![2]);
        let g = r.release_owner(7, B);
        assert_eq!(g.iter().map(|b| b.id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(r.held(7), vec![lock(C, Read, 8, 9)]);
    }

    #[test]
    fn a_fenced_nodes_locks_and_requests_go() {
        let mut r = RangeLocks::default();
        r.try_lock(1, A, Write, 0, u64::MAX);
        r.try_lock(2, A, Read, 0, 10);
        assert!(!r.lock_or_wait(9, 1, lock(B, Write, 100, 200)));
        assert!(!r.lock_or_wait(10, 1, lock(Owner { node: 1, owner: 11 }, Read, 0, 1)));
        let g = r.release_node(1);
        assert_eq!(g.iter().map(|b| b.id).collect::<Vec<_>>(), vec![9]);
        assert!(r.held(2).is_empty());
        assert_eq!(r.held(1), vec![lock(B, Write, 100, 200)]);
    }

    #[test]
    fn a_cancelled_request_is_not_granted() {
        let mut r = RangeLocks::default();
        r.try_lock(1, A, Write, 0, 10);
        r.lock_or_wait(5, 1, lock(B, Write, 0, 10));
        r.cancel(5);
        assert!(r.unlock(1, A, 0, 10).is_empty());
        assert!(r.held(1).is_empty());
    }

    /// The same operations on a byte-by-byte model of 64 bytes agree with the table.
    mod against_a_model {
        use super::*;
        use proptest::prelude::*;

        const OWNERS: [Owner; 3] = [A, B, C];

        #[derive(Debug, Clone)]
        enum Op {
            Lock(usize, bool, u64, u64),
            Unlock(usize, u64, u64),
            Close(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            let range = (0u64..64, 1u64..16).prop_map(|(s, l)| (s, (s + l).min(64)));
            prop_oneof![
                (0usize..3, any::<bool>(), range.clone())
                    .prop_map(|(o, w, (s, e))| Op::Lock(o, w, s, e)),
                (0usize..3, range).prop_map(|(o, (s, e))| Op::Unlock(o, s, e)),
                (0usize..3).prop_map(Op::Close),
            ]
        }

        proptest! {
            #[test]
            fn agrees(ops in proptest::collection::vec(op(), 1..60)) {
                let mut r = RangeLocks::default();
                // model[byte][owner]: None, Some(Read), Some(Write)
                let mut model = [[None::<LockKind>; 3]; 64];
                for op in ops {
                    match op {
                        Op::Lock(o, w, s, e) => {
                            let kind = if w { Write } else { Read };
                            let conflict = (s..e).any(|b| {
                                (0..3).any(|x| x != o && match model[b as usize][x] {
                                    Some(Write) => true,
                                    Some(Read) => kind == Write,
                                    None => false,
                                })
                            });
                            let got = r.try_lock(1, OWNERS[o], kind, s, e);
                            prop_assert_eq!(got, !conflict);
                            if !conflict {
                                for b in s..e {
                                    model[b as usize][o] = Some(kind);
                                }
                            }
                        }
                        Op::Unlock(o, s, e) => {
                            r.unlock(1, OWNERS[o], s, e);
                            for b in s..e {
                                model[b as usize][o] = None;
                            }
                        }
                        Op::Close(o) => {
                            r.release_owner(1, OWNERS[o]);
                            for b in model.iter_mut() {
                                b[o] = None;
                            }
                        }
                    }
                    // The table says exactly what the model says, byte by byte, and
                    // keeps no two locks of one owner and kind touching.
                    let held = r.held(1);
                    for (b, owners) in model.iter().enumerate() {
                        for (o, want) in owners.iter().enumerate() {
                            let got = held
                                .iter()
                                .find(|l| l.owner == OWNERS[o] && l.start <= b as u64 && (b as u64) < l.end)
                                .map(|l| l.kind);
                            prop_assert_eq!(got, *want, "byte {} owner {}", b, o);
                        }
                    }
                }
            }
        }
    }
}
