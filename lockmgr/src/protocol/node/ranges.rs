//! POSIX byte-range locks through the coordinator: the node side (requests, their
//! resending, the mirror of what this node holds) and the coordinator side (the
//! volume's [`RangeLocks`] table, blocked F_SETLKW requests, answers sent once and
//! repeated for a resent request).
//!
//! The rules:
//! - a node's requests carry its request numbers (unique across its lives); they are
//!   resent to the coordinator until answered, and the coordinator applies each once
//!   (it remembers its recent answers per node and repeats them);
//! - the requests of one lock owner on one file go one at a time, in order: a lost
//!   unlock resent after a later lock would otherwise undo that lock (an owner's
//!   F_SETLKW that waits holds back that owner's later requests on that file until it
//!   is granted or given up);
//! - an unlock or release takes effect in the node's mirror when it is sent (its
//!   turn has come: the caller has given the lock up), a lock when granted; so the
//!   mirror never claims what the coordinator may have given to another node; a lock
//!   request takes the owner's locks under its range out of the mirror when sent (the
//!   coordinator may replace them, a downgrade), and puts them back if it is refused;
//! - a new coordinator rebuilds the table from what every node reports (its mirror);
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

/// A node's part.
#[derive(Debug, Default)]
pub(super) struct RangeClient {
    /// Requests not answered yet: request → (file, owner, op).
    pending: BTreeMap<u64, (u64, u64, RangeOp)>,
    /// Requests already applied to the mirror; for a lock, the owner's locks it took
    /// out (put back if the lock is refused).
    mirrored: BTreeMap<u64, Vec<RangeLock>>,
    /// The locks this node holds.
    mirror: RangeLocks,
    /// F_SETLKW requests given up: if the grant comes anyway, the lock is unlocked.
    cancelled: BTreeMap<u64, (u64, u64, u64, u64)>,
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
        let req = self.new_req();
        self.ranges.pending.insert(req, (file, owner, op));
        self.send_range(now, req);
        (req, std::mem::take(&mut self.out))
    }

    /// Gives up a waiting F_SETLKW request (its caller was interrupted).
    pub fn range_cancel(&mut self, now: Millis, req: u64) -> Vec<Action> {
        if let Some(&(file, owner, RangeOp::Lock { start, end, .. })) =
            self.ranges.pending.get(&req)
        {
            let was_head = self.head_of(file, owner) == Some(req);
            self.ranges.pending.remove(&req);
            self.ranges.mirrored.remove(&req);
            if !was_head {
                // Never sent: nothing to undo.
                return std::mem::take(&mut self.out);
            }
            self.ranges.cancelled.insert(req, (file, owner, start, end));
            match self.phase {
                Phase::Follower(c) => self.send(
                    c,
                    Msg::RangeCancel {
                        epoch: self.epoch,
                        req,
                    },
                ),
                Phase::Coordinator => self.coord_range_cancel(now, self.id, req),
                _ => {}
            }
            if let Some(next) = self.head_of(file, owner) {
                self.send_range(now, next);
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

    /// Byte-range requests outstanding.
    pub fn range_pending(&self) -> usize {
        self.ranges.pending.len()
    }

    /// The request of `file` and `owner` to send now: the oldest pending.
    fn head_of(&self, file: u64, owner: u64) -> Option<u64> {
        self.ranges
            .pending
            .iter()
            .find(|(_, (f, o, _))| *f == file && *o == owner)
            .map(|(r, _)| *r)
    }

    pub(super) fn send_range(&mut self, now: Millis, req: u64) {
        let Some(&(file, owner, op)) = self.ranges.pending.get(&req) else {
            return;
        };
        if self.head_of(file, owner) != Some(req) {
            return;
        }
        if !self.ranges.mirrored.contains_key(&req) {
            let me = Owner {
                node: self.id,
                owner,
            };
            let mut displaced = Vec::new();
            match op {
                RangeOp::Unlock { start, end } => {
                    self.ranges.mirror.unlock(file, me, start, end);
                }
                RangeOp::Release => {
                    self.ranges.mirror.release_owner(file, me);
                }
                RangeOp::Lock { start, end, .. } => {
                    displaced = self
                        .ranges
                        .mirror
                        .held(file)
                        .into_iter()
                        .filter(|l| l.owner == me && l.start < end && start < l.end)
                        .collect();
                    self.ranges.mirror.unlock(file, me, start, end);
                }
                RangeOp::Test { .. } => {}
            }
            self.ranges.mirrored.insert(req, displaced);
        }
        match self.phase {
            Phase::Follower(c) => self.send(
                c,
                Msg::Range {
                    epoch: self.epoch,
                    req,
                    file,
                    owner,
                    op,
                },
            ),
            Phase::Coordinator => self.coord_range(now, self.id, req, file, owner, op),
            _ => {}
        }
    }

    /// Sends every request not answered yet again.
    pub(super) fn resend_ranges(&mut self, now: Millis) {
        let reqs: Vec<u64> = self.ranges.pending.keys().copied().collect();
        for req in reqs {
            self.send_range(now, req);
        }
    }

    /// The answer to one of this node's requests.
    pub(super) fn on_range_answer(&mut self, now: Millis, req: u64, outcome: RangeOutcome) {
        if let Some((file, owner, start, end)) = self.ranges.cancelled.remove(&req) {
            if outcome == RangeOutcome::Done {
                // Granted after all: give it back.
                self.range_request(now, file, owner, RangeOp::Unlock { start, end });
            }
            return;
        }
        let Some((file, owner, op)) = self.ranges.pending.remove(&req) else {
            return;
        };
        let displaced = self.ranges.mirrored.remove(&req).unwrap_or_default();
        let me = Owner {
            node: self.id,
            owner,
        };
        match (op, outcome) {
            (
                RangeOp::Lock {
                    kind, start, end, ..
                },
                RangeOutcome::Done,
            ) => {
                self.ranges.mirror.try_lock(file, me, kind, start, end);
            }
            (RangeOp::Lock { .. }, _) => {
                // Refused: the owner's locks stay as they were.
                for l in displaced {
                    self.ranges
                        .mirror
                        .try_lock(file, me, l.kind, l.start, l.end);
                }
            }
            _ => {}
        }
        self.out.push(Action::RangeAnswer { req, outcome });
        if let Some(next) = self.head_of(file, owner) {
            self.send_range(now, next);
        }
    }

    /// Fenced: every lock is gone, every request waiting fails.
    pub(super) fn ranges_lost(&mut self) {
        self.ranges.mirror.clear();
        self.ranges.cancelled.clear();
        self.ranges.mirrored.clear();
        for req in std::mem::take(&mut self.ranges.pending).into_keys() {
            self.out.push(Action::RangeAnswer {
                req,
                outcome: RangeOutcome::Lost,
            });
        }
    }

    /// What this node reports to a new coordinator: what it holds, and the locks a
    /// lock request in flight may replace (until it is answered they are still held).
    pub(super) fn ranges_report(&self) -> Vec<(u64, RangeLock)> {
        let mut all = self.ranges.mirror.all();
        for (req, displaced) in &self.ranges.mirrored {
            if let Some((file, _, _)) = self.ranges.pending.get(req) {
                all.extend(displaced.iter().map(|l| (*file, *l)));
            }
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

    pub(super) fn coord_range_cancel(&mut self, _now: Millis, from: NodeId, req: u64) {
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        let ids: Vec<u64> = c
            .ranges
            .waiters
            .iter()
            .filter(|(_, w)| **w == (from, req))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            c.ranges.waiters.remove(&id);
            c.ranges.locks.cancel(id);
        }
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
