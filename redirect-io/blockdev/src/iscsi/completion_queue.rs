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

/// A read still out: the task it is and when it is overdue.
#[derive(Clone, Copy)]
pub(super) struct Outstanding {
    pub itt: u32,
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

    /// Whether `token` is out already.
    pub(super) fn has(&self, token: u64) -> bool {
        self.inner.lock().outstanding.contains_key(&token)
    }

    pub(super) fn note_outstanding(&self, token: u64, o: Outstanding) {
        self.inner.lock().outstanding.insert(token, o);
    }

    /// A read's end; wakes the submitter.
    pub(super) fn push(&self, ended: QueuedRead) {
        self.inner.lock().ended.push_back(ended);
        self.ready.notify_one();
    }
}
