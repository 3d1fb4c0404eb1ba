//! Where reads submitted without waiting end up: one thread can keep many reads
//! outstanding on a session ([`super::session::Session::submit_read`]) and take their
//! ends from a queue, as a single-threaded asynchronous initiator does, instead of
//! parking one thread per read. Each read owns its buffer while it is out; the buffer
//! comes back with the read's end.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::session::{CommandError, Completion};

/// A read that has ended, with its buffer.
#[derive(Debug)]
pub struct QueuedRead {
    /// The number the submitter gave it.
    pub token: u64,
    /// The command it was (the caller finds its offset there).
    pub cdb: [u8; 16],
    /// The buffer, filled with what the target sent when the read succeeded.
    pub buffer: Vec<u8>,
    /// How it ended.
    pub result: Result<Completion, CommandError>,
}

/// A read still out: the task it is (None while it is being started) and when it is
/// overdue.
#[derive(Clone, Copy)]
pub(super) struct Outstanding {
    pub itt: Option<u32>,
    pub deadline: Instant,
}

#[derive(Default)]
pub(super) struct Inner {
    pub ended: VecDeque<QueuedRead>,
    pub outstanding: HashMap<u64, Outstanding>,
}

/// The queue of one submitter's reads.
#[derive(Default)]
pub struct CompletionQueue {
    pub(super) inner: Mutex<Inner>,
    pub(super) ready: Condvar,
}

impl CompletionQueue {
    pub fn new() -> CompletionQueue {
        CompletionQueue::default()
    }

    /// Reads submitted and not yet taken from the queue.
    pub fn outstanding(&self) -> usize {
        self.inner.lock().outstanding.len()
    }

    /// Whether ended reads wait to be taken.
    pub(super) fn has_ended(&self) -> bool {
        !self.inner.lock().ended.is_empty()
    }

    /// Takes `token` for a read about to start; false if a read of that token is out.
    pub(super) fn reserve(&self, token: u64, deadline: Instant) -> bool {
        let mut q = self.inner.lock();
        if q.outstanding.contains_key(&token) {
            return false;
        }
        q.outstanding.insert(
            token,
            Outstanding {
                itt: None,
                deadline,
            },
        );
        true
    }

    /// The read of `token` is task `itt`.
    pub(super) fn set_task(&self, token: u64, itt: u32) {
        if let Some(o) = self.inner.lock().outstanding.get_mut(&token) {
            o.itt = Some(itt);
        }
    }

    /// The read of `token` did not start.
    pub(super) fn forget(&self, token: u64) {
        self.inner.lock().outstanding.remove(&token);
    }

    /// A read's end; wakes the submitter.
    pub(super) fn push(&self, ended: QueuedRead) {
        self.inner.lock().ended.push_back(ended);
        self.ready.notify_one();
    }
}
