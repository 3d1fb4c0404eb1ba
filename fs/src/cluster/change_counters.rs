//! Counters of changes by key hash: what tells a lease's keeper that a change or a
//! recall of the same keys came while an answer was on its way, so that the answer
//! must not be kept (see [`super::leases`] and [`super::lease_cache`]). Keys share 4096
//! buckets: a change to one key refuses answers about the keys of its bucket, which
//! costs a cache miss at worst, never a stale answer.
//!
//! Changes are numbered from one counter, and each bucket keeps the number of its
//! last change, so that a snapshot is one number (taken at every operation, it must
//! cost nothing); the changes a snapshot's holder made itself since are listed in it.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use super::wire::LeaseKey;

const BUCKETS: usize = 4096;

/// The counters at one moment, taken before an answer is asked for.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The number of the last change then.
    at: u64,
    /// Changes made since by the holder of the snapshot: bucket, number.
    own: Vec<(usize, u64)>,
}

/// The counters.
pub struct ChangeCounters {
    last: AtomicU64,
    buckets: Box<[AtomicU64; BUCKETS]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for ChangeCounters {
    fn default() -> ChangeCounters {
        ChangeCounters {
            last: AtomicU64::new(0),
            buckets: Box::new([const { AtomicU64::new(0) }; BUCKETS]),
            hasher: Default::default(),
        }
    }
}

impl ChangeCounters {
    fn bucket(&self, key: &LeaseKey) -> usize {
        (self.hasher.hash_one(key) % BUCKETS as u64) as usize
    }

    fn next(&self) -> u64 {
        self.last.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: self.last.load(Ordering::SeqCst),
            own: Vec::new(),
        }
    }

    /// Counts a change to `key`.
    pub fn bump(&self, key: &LeaseKey) {
        let n = self.next();
        self.buckets[self.bucket(key)].fetch_max(n, Ordering::SeqCst);
    }

    /// Counts a change to everything.
    pub fn bump_all(&self) {
        let n = self.next();
        for b in self.buckets.iter() {
            b.fetch_max(n, Ordering::SeqCst);
        }
    }

    /// Counts a change to `key` made by the holder of `snap` itself: when nothing else
    /// changed its bucket since `snap`, the snapshot follows, so that the change's own
    /// answer may still be kept.
    pub fn bump_own(&self, snap: &mut Snapshot, key: &LeaseKey) {
        let b = self.bucket(key);
        let n = self.next();
        let before = self.buckets[b].fetch_max(n, Ordering::SeqCst);
        if before < n && seen(snap, b, before) {
            snap.own.retain(|&(ob, _)| ob != b);
            snap.own.push((b, n));
        }
    }

    /// True when no change to the bucket of `key` came since `snap`.
    pub fn unchanged(&self, snap: &Snapshot, key: &LeaseKey) -> bool {
        let b = self.bucket(key);
        seen(snap, b, self.buckets[b].load(Ordering::SeqCst))
    }
}

/// True when change `n` of bucket `b` is one `snap` accounts for.
fn seen(snap: &Snapshot, b: usize, n: u64) -> bool {
    n <= snap.at || snap.own.contains(&(b, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_shows_in_its_bucket_and_an_own_change_does_not() {
        let c = ChangeCounters::default();
        let (a, b) = (LeaseKey::Attr(1), LeaseKey::Entry(1, b"x".to_vec()));
        let mut snap = c.snapshot();
        assert!(c.unchanged(&snap, &a) && c.unchanged(&snap, &b));
        c.bump_own(&mut snap, &a);
        assert!(c.unchanged(&snap, &a), "its own change");
        c.bump(&a);
        assert!(!c.unchanged(&snap, &a), "another's change");
        let mut snap = c.snapshot();
        c.bump(&b);
        c.bump_own(&mut snap, &b);
        assert!(!c.unchanged(&snap, &b), "another's change came first");
        let snap = c.snapshot();
        c.bump_all();
        assert!(!c.unchanged(&snap, &a) && !c.unchanged(&snap, &b));
    }
}
