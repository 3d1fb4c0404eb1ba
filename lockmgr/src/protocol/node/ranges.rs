//! POSIX byte-range locks through the coordinator: the node side (requests, their
//! resending, the mirror of what this node holds) and the coordinator side (the
//! volume's [`RangeLocks`] table, blocked F_SETLKW requests, answers sent once and
//! repeated for a resent request).
//!
//! The rules:
//! - a node's requests carry its request numbers (unique across its lives); they are
//!   resent to the coordinator until answered, and the coordinator applies each once
//!   (it remembers its recent answers per node and repeats them);
//! - the requests of one lock owner on one file go one at a time, in order (a queue
//!   per file and owner): a lost unlock resent after a later lock would otherwise undo
//!   that lock. An owner's F_SETLKW that waits holds back that owner's later requests
//!   on that file until it is granted or given up;
//! - a wait given up (the caller interrupted) stays at the head of its queue as a
//!   cancel until the coordinator answers it: `Busy` if it still waited, `Done` if it
//!   had been granted meanwhile, in which case the node unlocks that range before any
//!   later request of the owner (the owner's locks it had replaced are not restored);
//! - an unlock or release takes effect in the node's mirror when it is sent (its
//!   turn has come: the caller has given the lock up), a lock when granted; so the
//!   mirror never claims what the coordinator may have given to another node; a lock
//!   request takes the owner's locks under its range out of the mirror when sent (the
//!   coordinator may replace them, a downgrade), and puts them back if it is refused;
//! - a new coordinator rebuilds the table from what every node reports (its mirror,
//!   and the locks a request in flight may replace); a node that does not report in
//!   time may still hold locks the table lacks, so the new coordinator decides no
//!   range request until every such node is fenced (the 100,000-seed soak found a
//!   follower that was still joining the new epoch when the report came, so never
//!   reported, and kept its read lock while a conflicting write lock was granted);
//! - the locks of a node go when it is fenced (with its leases) or when it speaks
//!   with a new incarnation; a fenced node forgets its mirror and answers every
//!   request still waiting with [`RangeOutcome::Lost`].

use std::collections::{BTreeMap, VecDeque};

use super::{Node, Phase};
use crate::protocol::range_locks::{Blocked, Owner, RangeLock, RangeLocks};
use crate::protocol::types::{Action, Millis, Msg, NodeId, RangeOp, RangeOutcome};

/// How many answers the coordinator remembers per node, for resent requests.
const ANSWERS_KEPT: usize = 256;

/// The coordinator's part.
#[derive(Debug, Default)]
pub(super) struct RangeTable {
    locks: RangeLocks,
    /// Blocked F_SETLKW requests: the table's id → (node, request).
    waiters: BTreeMap<u64, (NodeId, u64)>,
    next_wait: u64,
    answered: BTreeMap<NodeId, VecDeque<(u64, RangeOutcome)>>,
    /// Blocked requests that what a dropped node freed grants, to be answered once
    /// this coordinator serves again.
    woken_later: Vec<Blocked>,
}

/// One request of this node.
#[derive(Debug)]
struct Pending {
    file: u64,
    owner: u64,
    op: RangeOp,
    /// Sent at least once (its effect on the mirror is applied).
    sent: bool,
    /// For a lock: the owner's locks it took out of the mirror.
    displaced: Vec<RangeLock>,
    /// Given up by its caller: a cancel goes instead.
    cancelled: bool,
}

/// A node's part.
#[derive(Debug, Default)]
pub(super) struct RangeClient {
    pending: BTreeMap<u64, Pending>,
    /// The requests of each (file, owner), in order; the head is the one out.
    queues: BTreeMap<(u64, u64), VecDeque<u64>>,
    /// The locks this node holds.
    mirror: RangeLocks,
}

impl Node {
    /// Asks for a byte-range lock operation of lock owner `owner` on `file`;
    /// [`Action::RangeAnswer`] with the returned number answers it.
    pub fn range_request(
        &mut self,
        now: Millis,
        file: u64,
        owner: u64,
        op: RangeOp,
    ) -> (u64, Vec<Action>) {
        let req = self.queue_range(now, file, owner, op, false);
        (req, std::mem::take(&mut self.out))
    }

    /// Gives up a request (its caller was interrupted): no answer comes for it. One
    /// already out is cancelled at the coordinator.
    pub fn range_cancel(&mut self, now: Millis, req: u64) -> Vec<Action> {
        if let Some(p) = self.ranges.pending.get_mut(&req) {
            if p.sent {
                p.cancelled = true;
                self.send_range(now, req);
            } else {
                let key = (p.file, p.owner);
                self.ranges.pending.remove(&req);
                if let Some(q) = self.ranges.queues.get_mut(&key) {
                    q.retain(|r| *r != req);
                    if q.is_empty() {
                        self.ranges.queues.remove(&key);
                    }
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// The byte-range locks this node holds, by file.
    pub fn range_locks_held(&self) -> Vec<(u64, RangeLock)> {
        self.ranges.mirror.all()
    }

    /// True when this node holds a byte-range lock.
    pub fn holds_range_locks(&self) -> bool {
        !self.ranges.mirror.is_empty()
    }

    /// Byte-range requests outstanding (cancels included).
    pub fn range_pending(&self) -> usize {
        self.ranges.pending.len()
    }

    fn queue_range(&mut self, now: Millis, file: u64, owner: u64, op: RangeOp, first: bool) -> u64 {
        let req = self.new_req();
        self.ranges.pending.insert(
            req,
            Pending {
                file,
                owner,
                op,
                sent: false,
                displaced: Vec::new(),
                cancelled: false,
            },
        );
        let q = self.ranges.queues.entry((file, owner)).or_default();
        if first {
            q.push_front(req);
        } else {
            q.push_back(req);
        }
        self.send_range(now, req);
        req
    }

    fn is_head(&self, req: u64) -> bool {
        self.ranges.pending.get(&req).is_some_and(|p| {
            self.ranges
                .queues
                .get(&(p.file, p.owner))
                .and_then(|q| q.front())
                == Some(&req)
        })
    }

    /// Sends `req` if its turn has come (applying its effect on the mirror the first
    /// time): the request, or its cancel.
    pub(super) fn send_range(&mut self, now: Millis, req: u64) {
        if !self.is_head(req) {
            return;
        }
        let me = self.id;
        let p = self
            .ranges
            .pending
            .get_mut(&req)
            .expect("a head is pending");
        let (file, owner, op, cancelled) = (p.file, p.owner, p.op, p.cancelled);
        if !p.sent {
            p.sent = true;
            let who = Owner { node: me, owner };
            match op {
                RangeOp::Unlock { start, end } => {
                    self.ranges.mirror.unlock(file, who, start, end);
                }
                RangeOp::Release => {
                    self.ranges.mirror.release_owner(file, who);
                }
                RangeOp::Lock { start, end, .. } => {
                    p.displaced = self
                        .ranges
                        .mirror
                        .held(file)
                        .into_iter()
                        .filter(|l| l.owner == who && l.start < end && start < l.end)
                        .collect();
                    self.ranges.mirror.unlock(file, who, start, end);
                }
                RangeOp::Test { .. } => {}
            }
        }
        match (self.phase, cancelled) {
            (Phase::Follower(c), false) => self.send(
                c,
                Msg::Range {
                    epoch: self.epoch,
                    req,
                    file,
                    owner,
                    op,
                },
            ),
            (Phase::Follower(c), true) => self.send(
                c,
                Msg::RangeCancel {
                    epoch: self.epoch,
                    req,
                },
            ),
            (Phase::Coordinator, false) => self.coord_range(now, self.id, req, file, owner, op),
            (Phase::Coordinator, true) => self.coord_range_cancel(now, self.id, req),
            _ => {}
        }
    }

    /// Sends the head of every queue again.
    pub(super) fn resend_ranges(&mut self, now: Millis) {
        let heads: Vec<u64> = self
            .ranges
            .queues
            .values()
            .filter_map(|q| q.front().copied())
            .collect();
        for req in heads {
            self.send_range(now, req);
        }
    }

    /// The answer to one of this node's requests (or to its cancel).
    pub(super) fn on_range_answer(&mut self, now: Millis, req: u64, outcome: RangeOutcome) {
        if !self.is_head(req) {
            return;
        }
        let p = self.ranges.pending.remove(&req).expect("a head is pending");
        let key = (p.file, p.owner);
        if let Some(q) = self.ranges.queues.get_mut(&key) {
            q.pop_front();
        }
        let me = Owner {
            node: self.id,
            owner: p.owner,
        };
        match (p.op, outcome) {
            (
                RangeOp::Lock {
                    kind, start, end, ..
                },
                RangeOutcome::Done,
            ) => {
                self.ranges.mirror.try_lock(p.file, me, kind, start, end);
                if p.cancelled {
                    // Granted before the cancel arrived: give it back before anything
                    // the owner asked for later.
                    self.queue_range(now, p.file, p.owner, RangeOp::Unlock { start, end }, true);
                }
            }
            (RangeOp::Lock { .. }, _) => {
                // Refused (or given up while it waited): the owner's locks stay.
                for l in &p.displaced {
                    self.ranges
                        .mirror
                        .try_lock(p.file, me, l.kind, l.start, l.end);
                }
            }
            _ => {}
        }
        if !p.cancelled {
            self.out.push(Action::RangeAnswer { req, outcome });
        }
        match self
            .ranges
            .queues
            .get(&key)
            .and_then(|q| q.front().copied())
        {
            Some(next) => self.send_range(now, next),
            None => {
                self.ranges.queues.remove(&key);
            }
        }
    }

    /// Fenced: every lock is gone, every request waiting fails.
    pub(super) fn ranges_lost(&mut self) {
        self.ranges.mirror.clear();
        self.ranges.queues.clear();
        for (req, p) in std::mem::take(&mut self.ranges.pending) {
            if !p.cancelled {
                self.out.push(Action::RangeAnswer {
                    req,
                    outcome: RangeOutcome::Lost,
                });
            }
        }
    }

    /// What this node reports to a new coordinator: what it holds, and the locks a
    /// lock request in flight may replace (until it is answered they are still held).
    pub(super) fn ranges_report(&self) -> Vec<(u64, RangeLock)> {
        let mut all = self.ranges.mirror.all();
        for p in self.ranges.pending.values() {
            all.extend(p.displaced.iter().map(|l| (p.file, *l)));
        }
        all
    }

    // ----- the coordinator's side -----

    /// Applies one request of `from` (once: a resent one gets the same answer).
    pub(super) fn coord_range(
        &mut self,
        now: Millis,
        from: NodeId,
        req: u64,
        file: u64,
        owner: u64,
        op: RangeOp,
    ) {
        // Only a serving coordinator answers: a preempted one must not grant what the
        // next one may grant too. The request is resent.
        if self.serving_epoch(now).is_none() {
            return;
        }
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        if c.fencing.contains(&from) {
            // Nothing new for a member being fenced.
            return;
        }
        if !c.ranges_unknown.is_empty() {
            // A node that did not report may hold locks this table lacks: nothing is
            // decided until it is fenced. The request is resent.
            return;
        }
        let t = &mut c.ranges;
        if let Some(&(_, outcome)) = t
            .answered
            .get(&from)
            .and_then(|q| q.iter().find(|(r, _)| *r == req))
        {
            self.answer_range(now, from, req, outcome);
            return;
        }
        if t.waiters.values().any(|w| *w == (from, req)) {
            return;
        }
        let who = Owner { node: from, owner };
        let (outcome, woken) = match op {
            RangeOp::Test { kind, start, end } => (
                match t.locks.test(file, who, kind, start, end) {
                    Some(l) => RangeOutcome::Blocker(l),
                    None => RangeOutcome::Free,
                },
                Vec::new(),
            ),
            RangeOp::Lock {
                kind,
                start,
                end,
                wait: false,
            } => (
                if t.locks.try_lock(file, who, kind, start, end) {
                    RangeOutcome::Done
                } else {
                    RangeOutcome::Busy
                },
                Vec::new(),
            ),
            RangeOp::Lock {
                kind,
                start,
                end,
                wait: true,
            } => {
                t.next_wait += 1;
                let id = t.next_wait;
                let lock = RangeLock {
                    owner: who,
                    kind,
                    start,
                    end,
                };
                if !t.locks.lock_or_wait(id, file, lock) {
                    t.waiters.insert(id, (from, req));
                    return;
                }
                (RangeOutcome::Done, Vec::new())
            }
            RangeOp::Unlock { start, end } => {
                (RangeOutcome::Done, t.locks.unlock(file, who, start, end))
            }
            RangeOp::Release => (RangeOutcome::Done, t.locks.release_owner(file, who)),
        };
        self.answer_range(now, from, req, outcome);
        self.wake_ranges(now, woken);
    }

    /// A node gave up request `req`: if it still waits it goes (answered `Busy`);
    /// if it was answered, the answer is repeated; if it never came, it is recorded
    /// as refused, so that a late copy is not applied.
    pub(super) fn coord_range_cancel(&mut self, now: Millis, from: NodeId, req: u64) {
        if self.serving_epoch(now).is_none() {
            return;
        }
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        if let Some(&(_, outcome)) = c
            .ranges
            .answered
            .get(&from)
            .and_then(|q| q.iter().find(|(r, _)| *r == req))
        {
            self.answer_range(now, from, req, outcome);
            return;
        }
        let ids: Vec<u64> = c
            .ranges
            .waiters
            .iter()
            .filter(|(_, w)| **w == (from, req))
            .map(|(id, _)| *id)
            .collect();
        let mut woken = Vec::new();
        for id in ids {
            c.ranges.waiters.remove(&id);
            woken.extend(c.ranges.locks.cancel(id));
        }
        self.answer_range(now, from, req, RangeOutcome::Busy);
        self.wake_ranges(now, woken);
    }

    /// Answers the blocked requests that `woken` grants.
    fn wake_ranges(&mut self, now: Millis, woken: Vec<Blocked>) {
        for b in woken {
            let Some(w) = self
                .coord
                .as_mut()
                .and_then(|c| c.ranges.waiters.remove(&b.id))
            else {
                continue;
            };
            self.answer_range(now, w.0, w.1, RangeOutcome::Done);
        }
    }

    fn answer_range(&mut self, now: Millis, to: NodeId, req: u64, outcome: RangeOutcome) {
        if let Some(c) = self.coord.as_mut() {
            let q = c.ranges.answered.entry(to).or_default();
            if !q.iter().any(|(r, _)| *r == req) {
                q.push_back((req, outcome));
                if q.len() > ANSWERS_KEPT {
                    q.pop_front();
                }
            }
        }
        if to == self.id {
            self.on_range_answer(now, req, outcome);
        } else {
            self.send(
                to,
                Msg::RangeAnswer {
                    epoch: self.epoch,
                    req,
                    outcome,
                },
            );
        }
    }

    /// A node is gone (fenced, or spoke with a new incarnation): its locks and waits go.
    pub(super) fn coord_ranges_drop_node(&mut self, now: Millis, node: NodeId) {
        let serving = self.serving_epoch(now).is_some();
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        c.ranges.waiters.retain(|_, w| w.0 != node);
        c.ranges.answered.remove(&node);
        let woken = c.ranges.locks.release_node(node);
        if serving {
            self.wake_ranges(now, woken);
        } else {
            // Granted only while serving: answered when this coordinator serves again
            // (if it never does, its successor rebuilds from what the nodes hold).
            c.ranges.woken_later.extend(woken);
        }
    }

    /// Drops what waited for this coordinator to serve again.
    pub(super) fn coord_ranges_catch_up(&mut self, now: Millis) {
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        let woken = std::mem::take(&mut c.ranges.woken_later);
        self.wake_ranges(now, woken);
    }

    /// Takes in the locks a node reported to a new coordinator.
    pub(super) fn coord_ranges_adopt(&mut self, node: NodeId, ranges: Vec<(u64, RangeLock)>) {
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        for (file, l) in ranges {
            // What a node reports is its own.
            let who = Owner {
                node,
                owner: l.owner.owner,
            };
            c.ranges.locks.try_lock(file, who, l.kind, l.start, l.end);
        }
    }
}

impl RangeTable {
    /// The locks held, for status and checks.
    pub(super) fn all(&self) -> Vec<(u64, RangeLock)> {
        self.locks.all()
    }
}
