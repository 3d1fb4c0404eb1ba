//! Counters of changes by key hash: what tells a lease's keeper that a change or a
//! recall of the same keys came while an answer was on its way, so that the answer
//! must not be kept (see [`super::leases`] and [`super::lease_cache`]). Keys share 256
//! counters: a change to one key refuses answers about the keys of its bucket, which
//! costs a cache miss at worst, never a stale answer.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use super::wire::LeaseKey;

const BUCKETS: usize = 256;

/// The counters at one moment, taken before an answer is asked for.
#[derive(Clone)]
pub struct Snapshot(Box<[u64; BUCKETS]>);

/// The counters.
pub struct ChangeCounters {
    buckets: Box<[AtomicU64; BUCKETS]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for ChangeCounters {
    fn default() -> ChangeCounters {
        ChangeCounters {
            buckets: Box::new([const { AtomicU64::new(0) }; BUCKETS]),
            hasher: Default::default(),
        }
    }
}

impl ChangeCounters {
    fn bucket(&self, key: &LeaseKey) -> usize {
        (self.hasher.hash_one(key) % BUCKETS as u64) as usize
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(Box::new(std::array::from_fn(|i| {
            self.buckets[i].load(Ordering::SeqCst)
        })))
    }

    /// Counts a change to `key`.
    pub fn bump(&self, key: &LeaseKey) {
        self.buckets[self.bucket(key)].fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a change to everything.
    pub fn bump_all(&self) {
        for b in self.buckets.iter() {
            b.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Counts a change to `key` made by the holder of `snap` itself: when nothing else
    /// changed its bucket since `snap`, the snapshot follows, so that the change's own
    /// answer may still be kept.
    pub fn bump_own(&self, snap: &mut Snapshot, key: &LeaseKey) {
        let b = self.bucket(key);
        let before = self.buckets[b].fetch_add(1, Ordering::SeqCst);
        if before == snap.0[b] {
            snap.0[b] = before + 1;
        }
    }

    /// True when no change to the bucket of `key` came since `snap`.
    pub fn unchanged(&self, snap: &Snapshot, key: &LeaseKey) -> bool {
        let b = self.bucket(key);
        self.buckets[b].load(Ordering::SeqCst) == snap.0[b]
    }
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
