//! What the daemon keeps in memory per inode: the kernel's lookup count, open handles,
//! and the data lock that orders writes, truncates and reads of one file.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// In-memory state of one inode.
#[derive(Debug, Default)]
pub struct InodeState {
    /// Held shared to read data, exclusive to change it.
    pub data: RwLock<()>,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    lookups: u64,
    opens: u64,
    /// Its last link went and it was deleted: nothing is left to reap.
    deleted: bool,
}

/// The in-memory inode table.
#[derive(Debug, Default)]
pub struct InodeTable {
    map: Mutex<HashMap<u64, Arc<InodeState>>>,
}

impl InodeTable {
    /// The state of `ino`, created on first use.
    pub fn get(&self, ino: u64) -> Arc<InodeState> {
        self.map.lock().entry(ino).or_default().clone()
    }

    /// The kernel learned of `ino` once more (a lookup, create, mkdir... replied).
    pub fn looked_up(&self, ino: u64) {
        self.get(ino).counts.lock().lookups += 1;
    }

    /// `ino` was deleted (its last link went while it was not open).
    pub fn deleted(&self, ino: u64) {
        if let Some(s) = self.map.lock().get(&ino) {
            s.counts.lock().deleted = true;
        }
    }

    /// A handle was opened.
    pub fn opened(&self, ino: u64) {
        self.get(ino).counts.lock().opens += 1;
    }

    /// The kernel forgot `n` lookups; returns true when nothing refers to `ino` any more
    /// (and it was not deleted already).
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        self.release_with(ino, |c| c.lookups = c.lookups.saturating_sub(n))
    }

    /// A handle was closed; returns true when nothing refers to `ino` any more (and it
    /// was not deleted already).
    pub fn closed(&self, ino: u64) -> bool {
        self.release_with(ino, |c| c.opens = c.opens.saturating_sub(1))
    }

    /// True when a handle of `ino` is open.
    pub fn is_open(&self, ino: u64) -> bool {
        self.map
            .lock()
            .get(&ino)
            .is_some_and(|s| s.counts.lock().opens > 0)
    }

    /// True when the kernel neither knows `ino` nor has it open.
    pub fn unreferenced(&self, ino: u64) -> bool {
        match self.map.lock().get(&ino) {
            Some(s) => {
                let c = *s.counts.lock();
                c.lookups == 0 && c.opens == 0
            }
            None => true,
        }
    }

    fn release_with(&self, ino: u64, f: impl FnOnce(&mut Counts)) -> bool {
        let mut map = self.map.lock();
        let Some(state) = map.get(&ino) else {
            return true;
        };
        let idle = {
            let mut c = state.counts.lock();
            f(&mut c);
            c.lookups == 0 && c.opens == 0
        };
        let deleted = state.counts.lock().deleted;
        if idle && Arc::strong_count(state) == 1 {
            map.remove(&ino);
        }
        idle && !deleted
    }
}
