//! Freed blocks that a node may still be writing: on a shared volume a node reads a
//! file's layout from the coordinator and then reads and writes the LUN directly, so
//! blocks that another node's truncate, punch or unlink frees in between must not go to
//! another file before that node is done with its layout (DESIGN.md, Data path).
//!
//! Every layout handed out (a `Layout` answer, the blocks an allocation returns) is
//! used for at most the layout life, counted from before it was read: the node that
//! uses it checks its age before every I/O. The hold remembers until when layouts
//! handed out so far may be in use; a freed run is released into free space (see
//! [`crate::alloc::release_pending`]) only once that moment, as of the first durable
//! commit after its freeing, has passed. A run freed while no layout is out is
//! released at once, as on a single-node volume.
//!
//! The hold lives in memory: a coordinator that opens the store after a crash or a
//! takeover has waited out every lease and the drain interval first, which covers
//! every layout of the old coordinator.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The hold of one open volume.
#[derive(Debug)]
pub struct FreeHold {
    life: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Until when layouts handed out so far may be in use.
    until: Option<Instant>,
    /// Pending runs (by first block) seen by a durable commit while layouts were out,
    /// and when they may be released.
    held: BTreeMap<u64, Instant>,
}

impl FreeHold {
    /// A hold for layouts used at most `life` after they were read.
    pub fn new(life: Duration) -> FreeHold {
        FreeHold {
            life,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A layout is about to be read and handed out: called before the read, so that a
    /// free committed after it is held.
    pub fn layout_given(&self) {
        let until = Instant::now() + self.life;
        let mut i = self.inner.lock();
        if i.until.is_none_or(|u| u < until) {
            i.until = Some(until);
        }
    }

    /// Whether the pending run starting at `start` may go back to free space now. The
    /// first time a run is asked about while layouts are out, it is held until they
    /// have all run out.
    pub fn may_release(&self, start: u64) -> bool {
        self.may_release_at(start, Instant::now())
    }

    fn may_release_at(&self, start: u64, now: Instant) -> bool {
        let mut i = self.inner.lock();
        if let Some(&at) = i.held.get(&start) {
            if now >= at {
                i.held.remove(&start);
                return true;
            }
            return false;
        }
        match i.until {
            Some(until) if until > now => {
                i.held.insert(start, until);
                false
            }
            _ => true,
        }
    }

    /// When the next held run may be released, if any is held.
    pub fn next_release(&self) -> Option<Instant> {
        self.inner.lock().held.values().min().copied()
    }

    /// How many runs are held.
    pub fn held(&self) -> usize {
        self.inner.lock().held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_layout_out_a_run_is_released_at_once() {
        let h = FreeHold::new(Duration::from_secs(1));
        assert!(h.may_release(10));
        assert_eq!(h.next_release(), None);
    }

    #[test]
    fn a_run_freed_while_a_layout_is_out_waits_until_it_has_run_out() {
        let h = FreeHold::new(Duration::from_millis(1300));
        let t0 = Instant::now();
        h.layout_given();
        assert!(!h.may_release_at(10, t0));
        assert_eq!(h.held(), 1);
        let at = h.next_release().unwrap();
        assert!(at >= t0 + Duration::from_millis(1300));
        assert!(!h.may_release_at(10, at - Duration::from_millis(1)));
        // Layouts handed out later do not hold it longer: the run is no longer in any
        // file, so no later layout covers it.
        h.layout_given();
        assert!(h.may_release_at(10, at));
        assert_eq!(h.held(), 0);
        // Past every layout's life, runs go at once.
        let later = Instant::now() + Duration::from_secs(2);
        assert!(h.may_release_at(11, later));
    }
}
