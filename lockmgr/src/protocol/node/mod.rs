//! One node's part in one volume: joining, following, taking over, coordinating, being
//! fenced and rejoining, as a state machine with no I/O. The shell feeds it the time and
//! [`Event`]s and carries out the [`Action`]s it returns.
//!
//! The rules that make it safe (DESIGN.md, Cluster):
//! - every node registers a key of its id and incarnation; the coordinator holds the
//!   reservation; a follower that hears nothing from the coordinator for `fence`
//!   PREEMPTs its key: the target runs racing PREEMPTs one at a time, so one wins;
//! - the winner waits `drain` (the loser's accepted writes may still land), raises the
//!   epoch in the coordinator record, asks every node what it holds, and grants nothing
//!   before `preempt + grace + lease`: by then every lease the old coordinator granted
//!   or renewed has run out on its holder's clock;
//! - a coordinator serves (grants, renews) only within `grace` of the start of its last
//!   successful disk heartbeat, so a fenced coordinator stops serving on its own;
//! - a lease runs `lease` from the moment its holder sent the request or heartbeat that
//!   renewed it; a node that hears nothing keeps nothing past that;
//! - a silent member, or a holder that does not give a recalled lease back, is fenced
//!   by the coordinator, and its leases are freed only after they have run out;
//! - a node that meets a reservation conflict gives up its role and leases, and rejoins
//!   with a new incarnation;
//! - a planned hand-over (`hand_over.rs`) moves the reservation only after the
//!   coordinator stopped serving and closed its store, and the receiver then takes
//!   over as after a failover (drain, new epoch, reports, barrier).

mod evict;
mod hand_over;
mod ranges;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hand_over::HandOver;
use ranges::{RangeClient, RangeTable};

use super::lockspace::{Decision, Lockspace, Waiter};
use super::types::{
    Action, DiskOp, DiskReply, Epoch, Event, Key, Millis, Mode, Msg, NodeId, ResourceId, Role,
    Timing, key_owner, node_key,
};

/// Why a disk operation was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Register,
    /// READ RESERVATION to find the coordinator; `dead` is a node believed dead whose
    /// key, if it holds the reservation, is to be preempted.
    FindCoordinator {
        dead: Option<NodeId>,
    },
    Reserve,
    TakeOver,
    AfterConflict,
    ReadRecord,
    WriteRecord(Epoch),
    Heartbeat {
        issued: Millis,
    },
    /// READ KEYS to fence a node: its keys up to the incarnation judged dead.
    FindKeysOf(NodeId, u32),
    /// PREEMPT of one of a member's keys; `true` for the last of them (the member is
    /// fenced only once every key it had is gone).
    FenceMember(NodeId, Key, bool),
    AfterFenceConflict(NodeId, Key, bool),
    /// Reads the silent coordinator's heartbeat slot: first to remember it, then,
    /// after a few heartbeats, to see whether it moved.
    CheckAlive {
        coordinator: NodeId,
        second: bool,
    },
    /// REGISTER AND MOVE of a planned hand-over to the node.
    Move(NodeId),
    /// The receiver of a hand-over sets the reservation's type (tgtd moves it without
    /// one) by preempting its own key, then reads who holds it.
    SetType,
}

/// A check of a silent coordinator's disk heartbeat in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AliveCheck {
    coordinator: NodeId,
    /// The slot as first read (None until read).
    first: Option<Option<(u32, u64)>>,
    /// When to read it again.
    again_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Joining,
    Follower(NodeId),
    TakingOver,
    Draining {
        until: Millis,
    },
    Rebuilding,
    Coordinator,
    /// Evicted from the cluster: does nothing more.
    Evicted,
}

#[derive(Debug, Default)]
struct Coordination {
    lockspace: Lockspace,
    waiting_reports: BTreeSet<NodeId>,
    report_deadline: Millis,
    barrier: Millis,
    /// Requests that came while the lockspace was being rebuilt.
    early: Vec<(Waiter, ResourceId)>,
    last_ack: BTreeMap<NodeId, Millis>,
    fencing: BTreeSet<NodeId>,
    fenced: BTreeMap<NodeId, u32>,
    drop_at: Vec<(NodeId, Millis)>,
    deferred: Vec<Decision>,
    ranges: RangeTable,
    /// Nodes that did not report to this coordinator's rebuild and are not fenced yet:
    /// they may hold byte-range locks nobody here knows of (range locks, unlike leases,
    /// do not run out), so no range lock is granted until their keys are gone.
    ranges_unknown: BTreeSet<NodeId>,
    /// A planned hand-over under way: nothing is granted or renewed meanwhile.
    handing_over: Option<HandOver>,
}

/// A node of one volume.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    incarnation: u32,
    peers: Vec<NodeId>,
    timing: Timing,
    phase: Phase,
    epoch: Epoch,
    last_heard: BTreeMap<NodeId, Millis>,
    /// When the followed node last spoke as coordinator.
    coordinating_since: Millis,
    peer_incarnation: BTreeMap<NodeId, u32>,
    next_heartbeat: Millis,
    next_disk_heartbeat: Millis,
    next_resend: Millis,
    disk_counter: u64,
    next_disk_id: u64,
    disk_in_flight: Option<(u64, Purpose)>,
    disk_queue: VecDeque<(DiskOp, Purpose)>,
    last_disk_ok: Option<Millis>,
    preempted_at: Millis,
    alive_check: Option<AliveCheck>,
    leases: BTreeMap<ResourceId, (Mode, u64)>,
    /// Leases of an earlier epoch that the new coordinator has not adopted yet, each
    /// with the end of its validity (nothing renews them until they are adopted).
    old_leases: BTreeMap<ResourceId, (Mode, u64, Millis)>,
    /// Requests recalled before their grant arrived (messages can pass each other).
    recall_on_grant: BTreeSet<u64>,
    lease_valid_until: Millis,
    pending: BTreeMap<u64, (ResourceId, Mode, Millis)>,
    ranges: RangeClient,
    next_req: u64,
    coord: Option<Coordination>,
    /// How the target knows this node's session (for a hand-over to this node).
    port: Option<String>,
    /// Whether a hand-over waits for the user to close the metadata store.
    store_keeper: bool,
    /// After handing the role over: the receiver, the epoch handed over and when to
    /// tell it again, until the receiver speaks as coordinator of a newer epoch.
    handed_to: Option<(NodeId, Epoch, Millis)>,
    /// The number of the last hand-over this node began (or refused).
    hand_over_seq: u64,
    /// Why the last one was given up or refused, with its number.
    hand_over_failure_note: Option<(u64, String)>,
    /// Nodes evicted from the cluster (`csvctl node evict`).
    evicted: BTreeSet<NodeId>,
    out: Vec<Action>,
}

impl Node {
    /// A node `id` in `incarnation` (a number never used before by this node: the
    /// shell keeps it on disk and raises it at every start) among `peers`.
    pub fn new(
        id: NodeId,
        incarnation: u32,
        peers: Vec<NodeId>,
        timing: Timing,
        now: Millis,
    ) -> Node {
        let mut n = Node {
            id,
            incarnation,
            peers: peers.into_iter().filter(|p| *p != id).collect(),
            timing,
            phase: Phase::Joining,
            epoch: 0,
            last_heard: BTreeMap::new(),
            coordinating_since: 0,
            peer_incarnation: BTreeMap::new(),
            next_heartbeat: now,
            next_disk_heartbeat: now,
            next_resend: now,
            disk_counter: 0,
            next_disk_id: 1,
            disk_in_flight: None,
            disk_queue: VecDeque::new(),
            last_disk_ok: None,
            preempted_at: 0,
            alive_check: None,
            leases: BTreeMap::new(),
            old_leases: BTreeMap::new(),
            recall_on_grant: BTreeSet::new(),
            lease_valid_until: 0,
            pending: BTreeMap::new(),
            ranges: RangeClient::default(),
            next_req: 1,
            coord: None,
            port: None,
            store_keeper: false,
            handed_to: None,
            hand_over_seq: 0,
            hand_over_failure_note: None,
            evicted: BTreeSet::new(),
            out: Vec::new(),
        };
        n.join(now);
        n
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// This node's reservation key.
    pub fn key(&self) -> Key {
        node_key(self.id, self.incarnation)
    }

    /// The epoch this node knows.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The node's role.
    pub fn role(&self) -> Role {
        match self.phase {
            Phase::Joining => Role::Joining,
            Phase::Follower(c) => Role::Follower(c),
            Phase::TakingOver | Phase::Draining { .. } | Phase::Rebuilding => Role::TakingOver,
            Phase::Coordinator => Role::Coordinator(self.epoch),
            Phase::Evicted => Role::Evicted,
        }
    }

    /// The epoch in which this node may write the volume's metadata now, if it is the
    /// serving coordinator.
    pub fn serving_epoch(&self, now: Millis) -> Option<Epoch> {
        (self.phase == Phase::Coordinator
            && self.disk_fresh(now)
            && self.handing_over_to().is_none())
        .then_some(self.epoch)
    }

    /// Whether a coordinator serves this node now: it serves itself, or it follows one
    /// that acknowledged its heartbeats in this epoch within a lease.
    pub fn coordinator_serving(&self, now: Millis) -> bool {
        match self.phase {
            Phase::Coordinator => self.serving_epoch(now).is_some(),
            Phase::Follower(_) => now < self.lease_valid_until,
            _ => false,
        }
    }

    /// The leases this node may rely on now (its caches are valid for these).
    pub fn valid_leases(&self, now: Millis) -> Vec<(ResourceId, Mode)> {
        let current = (now < self.leases_valid_until())
            .then(|| self.leases.iter().map(|(r, (m, _))| (*r, *m)))
            .into_iter()
            .flatten();
        let old = self
            .old_leases
            .iter()
            .filter(|(_, (_, _, until))| now < *until)
            .map(|(r, (m, _, _))| (*r, *m));
        current.chain(old).collect()
    }

    /// The coordinator's view of who holds what (None on other nodes).
    pub fn lockspace_holdings(&self) -> Option<Vec<(ResourceId, NodeId, Mode)>> {
        self.coord.as_ref().map(|c| c.lockspace.holdings())
    }

    /// The coordinator's table of byte-range locks (None on other nodes).
    pub fn range_table(&self) -> Option<Vec<(u64, super::range_locks::RangeLock)>> {
        self.coord.as_ref().map(|c| c.ranges.all())
    }

    /// While coordinating: the nodes whose I/O must be refused (a node redirecting its
    /// I/O through this one after being fenced), each with the highest incarnation
    /// refused. A node being fenced is refused up to the incarnation being fenced.
    pub fn refused_writers(&self) -> std::collections::BTreeMap<NodeId, u32> {
        let Some(c) = &self.coord else {
            return Default::default();
        };
        let mut m = c.fenced.clone();
        for n in &c.fencing {
            let upto = self.peer_incarnation.get(n).copied().unwrap_or(u32::MAX);
            let e = m.entry(*n).or_insert(upto);
            *e = (*e).max(upto);
        }
        m
    }

    /// Registers this node again as a new incarnation, as after a possible fencing:
    /// its direct path came back on a new connection, on which the target no longer
    /// knows its key. Leases and byte-range locks of the earlier life are given up.
    pub fn register_again(&mut self, now: Millis) -> Vec<Action> {
        if self.phase != Phase::Joining {
            self.fenced(now);
        }
        self.pump_disk();
        std::mem::take(&mut self.out)
    }

    /// Requests outstanding.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Asks for a lease; [`Action::Granted`] for `res` answers it (with the returned
    /// number, or a new one if the node rejoined meanwhile).
    pub fn acquire(&mut self, now: Millis, res: ResourceId, mode: Mode) -> (u64, Vec<Action>) {
        // A new mode is a new lease: the old one is given back first.
        if let Some((_, old)) = self.leases.remove(&res) {
            self.send_release(now, res, old);
        }
        if let Some((_, old, _)) = self.old_leases.remove(&res) {
            self.send_release(now, res, old);
        }
        let req = self.new_req();
        self.pending.insert(req, (res, mode, now));
        self.send_acquire(now, req, res, mode, now);
        (req, std::mem::take(&mut self.out))
    }

    /// Gives a lease back (after a recall, or when done with it), and gives up the
    /// requests for it still waiting (a grant that comes later is given back).
    pub fn release(&mut self, now: Millis, res: ResourceId) -> Vec<Action> {
        self.pending.retain(|_, (r, _, _)| *r != res);
        if let Some((_, req)) = self.leases.remove(&res) {
            self.send_release(now, res, req);
        }
        if let Some((_, req, _)) = self.old_leases.remove(&res) {
            self.send_release(now, res, req);
        }
        std::mem::take(&mut self.out)
    }

    /// Handles one event.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Action> {
        match event {
            Event::Tick => self.tick(now),
            Event::Message {
                from,
                incarnation,
                msg,
            } => self.on_message(now, from, incarnation, msg),
            Event::Disk { id, reply } => self.on_disk(now, id, reply),
        }
        self.pump_disk();
        std::mem::take(&mut self.out)
    }

    // ----- time -----

    fn tick(&mut self, now: Millis) {
        if self.phase == Phase::Evicted {
            return;
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.timing.heartbeat;
            let coordinator = self.phase == Phase::Coordinator;
            for p in self.peers.clone() {
                self.send(
                    p,
                    Msg::Heartbeat {
                        sent: now,
                        epoch: self.epoch,
                        coordinator,
                    },
                );
            }
        }
        if now >= self.next_disk_heartbeat && self.phase != Phase::Joining {
            self.next_disk_heartbeat = now + self.timing.heartbeat;
            if !self.disk_queued(|p| matches!(p, Purpose::Heartbeat { .. })) {
                self.disk_counter += 1;
                self.queue_disk(
                    DiskOp::Heartbeat {
                        counter: self.disk_counter,
                    },
                    Purpose::Heartbeat { issued: now },
                );
            }
        }
        match self.phase {
            Phase::Follower(c) => {
                self.tell_receiver(now, c);
                if self.silent_coordinator(now, c) {
                    self.check_alive(now, c);
                } else if now >= self.next_resend {
                    self.next_resend = now + self.timing.lease / 2;
                    for (req, (res, mode, sent)) in self.pending.clone() {
                        self.send_acquire(now, req, res, mode, sent);
                    }
                    self.resend_ranges(now);
                }
            }
            Phase::Draining { until } if now >= until => {
                self.phase = Phase::TakingOver;
                self.queue_disk(DiskOp::ReadRecord, Purpose::ReadRecord);
            }
            Phase::Rebuilding => self.rebuild_tick(now),
            Phase::Coordinator => self.coordinator_tick(now),
            _ => {}
        }
    }

    fn heard(&self, node: NodeId) -> Millis {
        self.last_heard.get(&node).copied().unwrap_or(0)
    }

    fn disk_fresh(&self, now: Millis) -> bool {
        self.last_disk_ok
            .is_some_and(|t| now < t + self.timing.grace())
    }

    /// Until when this node's leases hold: a follower's as its coordinator last renewed
    /// them, a coordinator's own for as long as it serves.
    fn leases_valid_until(&self) -> Millis {
        match self.phase {
            Phase::Coordinator => self.last_disk_ok.map_or(0, |t| t + self.timing.grace()),
            _ => self.lease_valid_until,
        }
    }

    // ----- joining and takeover -----

    fn join(&mut self, now: Millis) {
        self.phase = Phase::Joining;
        self.out.push(Action::Role(Role::Joining));
        self.next_heartbeat = now;
        self.queue_disk(DiskOp::Register { key: self.key() }, Purpose::Register);
    }

    fn fenced(&mut self, now: Millis) {
        self.out.push(Action::Role(Role::Fenced));
        self.drop_everything(now);
        self.join(now);
    }

    /// Drops every lease, lock and duty (fenced or evicted) and takes a new
    /// incarnation.
    fn drop_everything(&mut self, now: Millis) {
        if !self.leases.is_empty() || !self.old_leases.is_empty() {
            self.out.push(Action::LostAll);
        }
        self.leases.clear();
        self.old_leases.clear();
        self.ranges_lost();
        self.recall_on_grant.clear();
        self.lease_valid_until = 0;
        self.coord = None;
        self.disk_queue.clear();
        self.disk_in_flight = None;
        self.last_disk_ok = None;
        self.incarnation += 1;
        // Requests of the earlier life are asked again as this life's: a grant still
        // on its way to the earlier life must not count for this one.
        for (_, (res, mode, _)) in std::mem::take(&mut self.pending) {
            let req = self.new_req();
            self.pending.insert(req, (res, mode, now));
        }
    }

    /// A request number no other life of this node uses: the incarnation above a
    /// counter.
    fn new_req(&mut self) -> u64 {
        self.next_req += 1;
        (u64::from(self.incarnation) << 32) | (self.next_req & 0xffff_ffff)
    }

    fn follow(&mut self, now: Millis, coordinator: NodeId) {
        if self.phase != Phase::Follower(coordinator) {
            self.phase = Phase::Follower(coordinator);
            self.out.push(Action::Role(Role::Follower(coordinator)));
            // Give the coordinator a full fencing timeout from now.
            self.last_heard
                .insert(coordinator, now.max(self.heard(coordinator)));
            self.coordinating_since = now;
            self.next_resend = now;
        }
    }

    /// True when the followed coordinator `c` has been silent, or has not spoken as
    /// coordinator, for a fencing timeout.
    fn silent_coordinator(&self, now: Millis, c: NodeId) -> bool {
        now.saturating_sub(self.heard(c)) >= self.timing.fence
            || now.saturating_sub(self.coordinating_since) >= self.timing.fence
    }

    /// The coordinator `c` has been silent for a fencing timeout. It may be dead, or
    /// this node may be the one cut off: its disk heartbeat tells. If the slot moves
    /// over three heartbeats, the coordinator is alive and writing, so this node waits
    /// (the coordinator fences it, as a silent member); if not, it takes over. A node
    /// cut off from its peers thus never preempts a live coordinator.
    fn check_alive(&mut self, now: Millis, c: NodeId) {
        match self.alive_check {
            Some(a) if a.coordinator == c => {
                if a.first.is_some()
                    && now >= a.again_at
                    && !self.disk_queued(|p| matches!(p, Purpose::CheckAlive { .. }))
                {
                    self.queue_disk(
                        DiskOp::ReadSlot { node: c },
                        Purpose::CheckAlive {
                            coordinator: c,
                            second: true,
                        },
                    );
                }
            }
            _ => {
                self.alive_check = Some(AliveCheck {
                    coordinator: c,
                    first: None,
                    again_at: now,
                });
                self.queue_disk(
                    DiskOp::ReadSlot { node: c },
                    Purpose::CheckAlive {
                        coordinator: c,
                        second: false,
                    },
                );
            }
        }
    }

    fn on_slot(&mut self, now: Millis, c: NodeId, second: bool, slot: Option<(u32, u64)>) {
        let Some(mut a) = self.alive_check.filter(|a| a.coordinator == c) else {
            return;
        };
        if self.phase != Phase::Follower(c) || !self.silent_coordinator(now, c) {
            // No longer following it, or it spoke meanwhile.
            self.alive_check = None;
            return;
        }
        if !second {
            a.first = Some(slot);
            a.again_at = now + 3 * self.timing.heartbeat;
            self.alive_check = Some(a);
            return;
        }
        self.alive_check = None;
        if slot.is_some() && a.first != Some(slot) {
            // Alive and writing: the silence is this node's problem, or the node does
            // not coordinate (a hand-over that came undone). Another fencing timeout
            // before the next look; meanwhile the reservation says who holds the role
            // (this node itself, after a hand-over whose receiver lost it back to it:
            // it takes the role then, rather than both following each other).
            tracing::info!(
                node = self.id,
                coordinator = c,
                "coordinator silent but its disk heartbeat moves: not taking over"
            );
            self.last_heard.insert(c, now);
            self.coordinating_since = now;
            // (Through SetType: a reservation moved here by a hand-over whose news
            // never came has no type on tgtd until its holder gives it one.)
            let key = self.key();
            self.queue_disk(DiskOp::Preempt { key, victim: key }, Purpose::SetType);
        } else {
            self.take_over(c);
        }
    }

    /// Takes the role from `dead`: reads who holds the reservation now and preempts that
    /// key if it is `dead`'s (of any incarnation).
    fn take_over(&mut self, dead: NodeId) {
        self.phase = Phase::TakingOver;
        self.out.push(Action::Role(Role::TakingOver));
        self.queue_disk(
            DiskOp::ReadReservation,
            Purpose::FindCoordinator { dead: Some(dead) },
        );
    }

    fn won(&mut self, now: Millis) {
        self.preempted_at = now;
        self.last_disk_ok = Some(now);
        self.phase = Phase::Draining {
            until: now + self.timing.drain,
        };
    }

    fn start_rebuild(&mut self, now: Millis, epoch: Epoch) {
        self.epoch = epoch;
        self.phase = Phase::Rebuilding;
        let mut c = Coordination {
            report_deadline: now + self.timing.report,
            barrier: self.preempted_at + self.timing.grace() + self.timing.lease,
            ..Coordination::default()
        };
        let old = std::mem::take(&mut self.old_leases);
        for (res, (mode, req, _)) in old {
            self.leases.insert(res, (mode, req));
        }
        for (res, (mode, req)) in &self.leases {
            c.lockspace.adopt(self.id, *res, *mode, *req, now);
        }
        for (req, (res, mode, sent)) in &self.pending {
            c.early.push((
                Waiter {
                    node: self.id,
                    req: *req,
                    mode: *mode,
                    sent: *sent,
                },
                *res,
            ));
        }
        c.waiting_reports = self.peers.iter().copied().collect();
        self.coord = Some(c);
        let mine = self.ranges_report();
        self.coord_ranges_adopt(self.id, mine);
        self.next_resend = now + self.timing.heartbeat;
        for p in self.peers.clone() {
            self.send(p, Msg::Report { epoch });
        }
    }

    fn rebuild_tick(&mut self, now: Millis) {
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        if now >= c.report_deadline && !c.waiting_reports.is_empty() {
            let silent: Vec<NodeId> = std::mem::take(&mut c.waiting_reports).into_iter().collect();
            c.ranges_unknown.extend(silent.iter().copied());
            for n in silent {
                // Every life of it: a life this node never heard (it restarted while
                // this one was away) may hold byte-range locks from an earlier
                // coordinator, and it did not report them.
                self.fence_member_upto(n, u32::MAX);
            }
        }
        if now >= self.next_resend {
            self.next_resend = now + self.timing.heartbeat;
            let waiting: Vec<NodeId> = self
                .coord
                .as_ref()
                .expect("coordinating")
                .waiting_reports
                .iter()
                .copied()
                .collect();
            for n in waiting {
                self.send(n, Msg::Report { epoch: self.epoch });
            }
        }
        let c = self.coord.as_ref().expect("still coordinating");
        if c.waiting_reports.is_empty() && now >= c.barrier && self.disk_fresh(now) {
            self.phase = Phase::Coordinator;
            self.out.push(Action::Role(Role::Coordinator(self.epoch)));
            for p in self.peers.clone() {
                self.last_heard.insert(p, now.max(self.heard(p)));
            }
            let early = std::mem::take(&mut self.coord.as_mut().expect("coordinating").early);
            for (w, res) in early {
                self.lockspace_acquire(now, res, w);
            }
            self.resend_ranges(now);
        }
    }

    fn coordinator_tick(&mut self, now: Millis) {
        self.hand_over_tick(now);
        if self.serving_epoch(now).is_some() {
            let deferred = std::mem::take(&mut self.coord.as_mut().expect("coordinating").deferred);
            self.apply(now, deferred);
            self.coord_ranges_catch_up(now);
            if now >= self.next_resend {
                // This node's own requests that came while it was not serving.
                self.next_resend = now + self.timing.heartbeat;
                self.resend_ranges(now);
            }
        }
        for p in self.peers.clone() {
            let c = self.coord.as_ref().expect("coordinating");
            if !c.fencing.contains(&p) && now.saturating_sub(self.heard(p)) >= self.timing.fence {
                self.fence_member(p);
            }
        }
        let overdue = self
            .coord
            .as_ref()
            .expect("coordinating")
            .lockspace
            .overdue(now);
        for n in overdue {
            if n == self.id {
                continue;
            }
            let c = self.coord.as_ref().expect("coordinating");
            if !c.fencing.contains(&n) {
                self.fence_member(n);
            }
        }
        let c = self.coord.as_mut().expect("coordinating");
        let due: Vec<NodeId> = c
            .drop_at
            .iter()
            .filter(|(_, at)| now >= *at)
            .map(|(n, _)| *n)
            .collect();
        c.drop_at.retain(|(_, at)| now < *at);
        for n in due {
            let c = self.coord.as_mut().expect("coordinating");
            let d = c.lockspace.drop_node(n, now, self.timing.recall);
            c.fencing.remove(&n);
            self.apply(now, d);
            self.coord_ranges_drop_node(now, n);
        }
    }

    /// Fences `node` as it was last heard of: its keys up to that incarnation go, a
    /// newer life of it (one that rejoined meanwhile) stays.
    fn fence_member(&mut self, node: NodeId) {
        let upto = match self.peer_incarnation.get(&node) {
            Some(&i) if !self.is_evicted(node) => i,
            // An evicted node's every key, whatever life registered it.
            _ => u32::MAX,
        };
        self.fence_member_upto(node, upto);
    }

    /// Fences `node`'s keys of incarnations up to `upto`.
    fn fence_member_upto(&mut self, node: NodeId, upto: u32) {
        let c = self.coord.as_mut().expect("coordinating");
        if c.fencing.insert(node) {
            // Debug: a node that stays away is fenced again every fencing timeout;
            // "member fenced" says it once.
            tracing::debug!(node = self.id, member = node, upto, "fencing a member");
            self.queue_disk(DiskOp::ReadKeys, Purpose::FindKeysOf(node, upto));
        }
    }

    // ----- messages -----

    fn on_message(&mut self, now: Millis, from: NodeId, incarnation: u32, msg: Msg) {
        if self.phase == Phase::Evicted {
            return;
        }
        if self.is_evicted(from) {
            // Whatever it says: it is out, and told so.
            self.send(from, Msg::Evicted { epoch: self.epoch });
            return;
        }
        if let Some(c) = &self.coord
            && c.fenced.get(&from).is_some_and(|i| incarnation <= *i)
        {
            // A fenced incarnation: nothing it says counts.
            tracing::debug!(
                node = self.id,
                from,
                incarnation,
                "message of a fenced life dropped"
            );
            return;
        }
        match self.peer_incarnation.get(&from).copied() {
            // A message of an earlier life, overtaken by the new one's: stale.
            Some(k) if incarnation < k => {
                tracing::debug!(
                    node = self.id,
                    from,
                    incarnation,
                    "message of an earlier life dropped"
                );
                return;
            }
            Some(k) if incarnation > k => self.new_life(now, from),
            _ => {}
        }
        self.peer_incarnation.insert(from, incarnation);
        self.last_heard.insert(from, now);
        // The node this one follows is heard as coordinator only while it says it
        // coordinates (or answers as one): a coordinator that lost its own path to the
        // LUN rejoins and goes on sending heartbeats, and must still be taken over.
        let as_coordinator = !matches!(
            msg,
            Msg::Heartbeat {
                coordinator: false,
                ..
            } | Msg::Acquire { .. }
                | Msg::Release { .. }
                | Msg::Holdings { .. }
                | Msg::Range { .. }
                | Msg::RangeCancel { .. }
                | Msg::MoveTo { .. }
                | Msg::Accept { .. }
                | Msg::Moved { .. }
                | Msg::Evict { .. }
                | Msg::Evicted { .. }
        );
        if as_coordinator && self.phase == Phase::Follower(from) {
            self.coordinating_since = now;
        }
        match msg {
            Msg::Heartbeat {
                sent,
                epoch,
                coordinator,
            } => {
                if coordinator && epoch > self.epoch {
                    self.superseded(now, from, epoch);
                } else if coordinator && epoch == self.epoch && self.phase == Phase::Joining {
                    self.follow(now, from);
                }
                // A member being fenced gets no renewal: its leases must run out by
                // the time they are freed, which counts from its last acknowledgement.
                let fencing = self
                    .coord
                    .as_ref()
                    .is_some_and(|c| c.fencing.contains(&from));
                if self.serving_epoch(now).is_some() && !fencing {
                    self.send(
                        from,
                        Msg::HeartbeatAck {
                            sent,
                            epoch: self.epoch,
                        },
                    );
                    if let Some(c) = self.coord.as_mut() {
                        c.last_ack.insert(from, now);
                    }
                }
            }
            Msg::HeartbeatAck { sent, epoch } => {
                if epoch == self.epoch && self.phase == Phase::Follower(from) {
                    self.lease_valid_until = self.lease_valid_until.max(sent + self.timing.lease);
                }
            }
            Msg::Acquire {
                epoch: _,
                req,
                res,
                mode,
                sent,
            } => {
                let w = Waiter {
                    node: from,
                    req,
                    mode,
                    sent,
                };
                if self
                    .coord
                    .as_ref()
                    .is_some_and(|c| c.fencing.contains(&from))
                {
                    // Nothing new for a member being fenced.
                    return;
                }
                match self.phase {
                    Phase::Coordinator => self.lockspace_acquire(now, res, w),
                    Phase::Rebuilding => {
                        if let Some(c) = self.coord.as_mut() {
                            c.early.push((w, res));
                        }
                    }
                    _ => {}
                }
            }
            Msg::Grant {
                epoch,
                req,
                res,
                mode,
                sent,
            } => {
                if epoch != self.epoch || self.phase != Phase::Follower(from) {
                    return;
                }
                self.lease_valid_until = self.lease_valid_until.max(sent + self.timing.lease);
                self.take_grant(now, req, res, mode);
            }
            Msg::Recall { epoch, res, req } => {
                if epoch == self.epoch {
                    self.take_recall(now, res, req);
                }
            }
            Msg::Release { epoch, res, req } => {
                if epoch == self.epoch && self.phase == Phase::Coordinator {
                    let c = self.coord.as_mut().expect("coordinating");
                    let d = c.lockspace.release(res, from, req, now, self.timing.recall);
                    self.apply(now, d);
                }
            }
            Msg::Report { epoch } => {
                if epoch > self.epoch {
                    self.superseded(now, from, epoch);
                }
                if epoch == self.epoch && self.phase == Phase::Follower(from) {
                    let held = self
                        .leases
                        .iter()
                        .map(|(r, (m, q))| (*r, *m, *q))
                        .chain(self.old_leases.iter().map(|(r, (m, q, _))| (*r, *m, *q)))
                        .collect();
                    let pending = self
                        .pending
                        .iter()
                        .map(|(q, (r, m, s))| (*q, *r, *m, *s))
                        .collect();
                    let ranges = self.ranges_report();
                    self.send(
                        from,
                        Msg::Holdings {
                            epoch,
                            held,
                            pending,
                            ranges,
                        },
                    );
                }
            }
            Msg::Adopted { epoch } => {
                if epoch == self.epoch && self.phase == Phase::Follower(from) {
                    // Renewed from now on with the rest; until the next renewal they
                    // hold no longer than the others.
                    for (res, (mode, req, _)) in std::mem::take(&mut self.old_leases) {
                        self.leases.insert(res, (mode, req));
                    }
                }
            }
            Msg::Holdings {
                epoch,
                held,
                pending,
                ranges,
            } => {
                if epoch != self.epoch || self.phase != Phase::Rebuilding {
                    return;
                }
                let c = self.coord.as_mut().expect("rebuilding");
                if !c.waiting_reports.remove(&from) {
                    return;
                }
                for (res, mode, req) in held {
                    c.lockspace.adopt(from, res, mode, req, now);
                }
                self.out.push(Action::Send {
                    to: from,
                    msg: Msg::Adopted { epoch },
                });
                for (req, res, mode, sent) in pending {
                    c.early.push((
                        Waiter {
                            node: from,
                            req,
                            mode,
                            sent,
                        },
                        res,
                    ));
                }
                self.coord_ranges_adopt(from, ranges);
            }
            Msg::Range {
                epoch,
                req,
                file,
                owner,
                op,
            } => {
                if epoch == self.epoch && self.phase == Phase::Coordinator {
                    self.coord_range(now, from, req, file, owner, op);
                }
            }
            Msg::RangeCancel { epoch, req } => {
                if epoch == self.epoch && self.phase == Phase::Coordinator {
                    self.coord_range_cancel(now, from, req);
                }
            }
            Msg::RangeAnswer {
                epoch,
                req,
                outcome,
            } => {
                if epoch == self.epoch && self.phase == Phase::Follower(from) {
                    self.on_range_answer(now, req, outcome);
                }
            }
            Msg::MoveTo { .. } | Msg::Offer { .. } | Msg::Accept { .. } | Msg::Moved { .. } => {
                self.on_hand_over_message(now, from, incarnation, msg);
            }
            Msg::Evict { .. } | Msg::Evicted { .. } => self.on_evict_message(now, from, msg),
        }
    }

    /// `node` speaks with a new incarnation: its earlier life is over (it dropped its
    /// leases before it rejoined, or it died), so what that life held is freed now.
    fn new_life(&mut self, now: Millis, node: NodeId) {
        let recall = self.timing.recall;
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        tracing::info!(
            node = self.id,
            member = node,
            earlier = self.peer_incarnation.get(&node).copied(),
            "a member's new life"
        );
        c.drop_at.retain(|(n, _)| *n != node);
        c.fencing.remove(&node);
        // Its earlier life's locks went with that life.
        c.ranges_unknown.remove(&node);
        // Requests of the earlier life that came while the lockspace was being rebuilt
        // go too: granted, they would go to a life that no longer exists.
        c.early.retain(|(w, _)| w.node != node);
        let d = c.lockspace.drop_node(node, now, recall);
        self.apply(now, d);
        self.coord_ranges_drop_node(now, node);
    }

    /// A coordinator of a newer epoch exists. A node that coordinated or took over in
    /// an older one was preempted: it rejoins. Others follow the new one.
    fn superseded(&mut self, now: Millis, coordinator: NodeId, epoch: Epoch) {
        match self.phase {
            Phase::Coordinator | Phase::Rebuilding | Phase::Draining { .. } => self.fenced(now),
            Phase::TakingOver | Phase::Evicted => {}
            Phase::Joining | Phase::Follower(_) => {
                self.epoch = epoch;
                // Leases of the old epoch hold until they run out, unless the new
                // coordinator adopts them (from what this node reports) first.
                let until = self.lease_valid_until;
                for (res, (mode, req)) in std::mem::take(&mut self.leases) {
                    self.old_leases.insert(res, (mode, req, until));
                }
                self.lease_valid_until = 0;
                self.phase = Phase::Joining;
                self.follow(now, coordinator);
            }
        }
    }

    fn send_acquire(&mut self, now: Millis, req: u64, res: ResourceId, mode: Mode, sent: Millis) {
        match self.phase {
            Phase::Follower(c) => self.send(
                c,
                Msg::Acquire {
                    epoch: self.epoch,
                    req,
                    res,
                    mode,
                    sent,
                },
            ),
            Phase::Coordinator => {
                let w = Waiter {
                    node: self.id,
                    req,
                    mode,
                    sent,
                };
                self.lockspace_acquire(now, res, w);
            }
            Phase::Rebuilding => {
                if let Some(c) = self.coord.as_mut() {
                    c.early.push((
                        Waiter {
                            node: self.id,
                            req,
                            mode,
                            sent,
                        },
                        res,
                    ));
                }
            }
            _ => {}
        }
    }

    fn send_release(&mut self, now: Millis, res: ResourceId, req: u64) {
        match self.phase {
            Phase::Follower(c) => self.send(
                c,
                Msg::Release {
                    epoch: self.epoch,
                    res,
                    req,
                },
            ),
            Phase::Coordinator => {
                let c = self.coord.as_mut().expect("coordinating");
                let d = c
                    .lockspace
                    .release(res, self.id, req, now, self.timing.recall);
                self.apply(now, d);
            }
            _ => {}
        }
    }

    /// A grant for request `req`: the lease is the user's, unless the request is no
    /// longer wanted, then it goes straight back.
    fn take_grant(&mut self, now: Millis, req: u64, res: ResourceId, mode: Mode) {
        if self.pending.remove(&req).is_some() {
            self.old_leases.remove(&res);
            self.leases.insert(res, (mode, req));
            self.out.push(Action::Granted { req, res, mode });
            if self.recall_on_grant.remove(&req) {
                self.out.push(Action::Recall { res });
            }
        } else if self.leases.get(&res).is_none_or(|(_, q)| *q != req)
            && self.old_leases.get(&res).is_none_or(|(_, q, _)| *q != req)
        {
            self.send_release(now, res, req);
        }
    }

    /// A recall of the lease granted for `req`.
    fn take_recall(&mut self, now: Millis, res: ResourceId, req: u64) {
        if self.leases.get(&res).is_some_and(|(_, q)| *q == req)
            || self.old_leases.get(&res).is_some_and(|(_, q, _)| *q == req)
        {
            self.out.push(Action::Recall { res });
        } else if self.pending.contains_key(&req) {
            // The grant is still on its way.
            self.recall_on_grant.insert(req);
        } else {
            self.send_release(now, res, req);
        }
    }

    fn lockspace_acquire(&mut self, now: Millis, res: ResourceId, w: Waiter) {
        let c = self.coord.as_mut().expect("coordinating");
        let d = c.lockspace.acquire(res, w, now, self.timing.recall);
        self.apply(now, d);
    }

    /// Turns the lockspace's decisions into grants and recalls; while the coordinator
    /// cannot prove it still holds the LUN (no fresh disk heartbeat), they wait.
    fn apply(&mut self, now: Millis, decisions: Vec<Decision>) {
        if self.serving_epoch(now).is_none() {
            if let Some(c) = self.coord.as_mut() {
                c.deferred.extend(decisions);
            }
            return;
        }
        for d in decisions {
            match d {
                Decision::Grant(res, w) if w.node == self.id => {
                    self.take_grant(now, w.req, res, w.mode);
                }
                Decision::Grant(res, w) => {
                    // A grant renews the holder's leases until `sent + lease`, like an
                    // acknowledged heartbeat: what is freed after the holder is fenced
                    // must wait for this one too.
                    if let Some(c) = self.coord.as_mut() {
                        let t = c.last_ack.entry(w.node).or_insert(0);
                        *t = (*t).max(now);
                    }
                    self.send(
                        w.node,
                        Msg::Grant {
                            epoch: self.epoch,
                            req: w.req,
                            res,
                            mode: w.mode,
                            sent: w.sent,
                        },
                    )
                }
                Decision::Recall(res, n, req) if n == self.id => self.take_recall(now, res, req),
                Decision::Recall(res, n, req) => self.send(
                    n,
                    Msg::Recall {
                        epoch: self.epoch,
                        res,
                        req,
                    },
                ),
            }
        }
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        self.out.push(Action::Send { to, msg });
    }

    // ----- disk -----

    fn queue_disk(&mut self, op: DiskOp, purpose: Purpose) {
        self.disk_queue.push_back((op, purpose));
    }

    fn disk_queued(&self, f: impl Fn(&Purpose) -> bool) -> bool {
        self.disk_in_flight.as_ref().is_some_and(|(_, p)| f(p))
            || self.disk_queue.iter().any(|(_, p)| f(p))
    }

    fn pump_disk(&mut self) {
        if self.disk_in_flight.is_some() {
            return;
        }
        if let Some((op, purpose)) = self.disk_queue.pop_front() {
            let id = self.next_disk_id;
            self.next_disk_id += 1;
            self.disk_in_flight = Some((id, purpose));
            self.out.push(Action::Disk { id, op });
        }
    }

    fn on_disk(&mut self, now: Millis, id: u64, reply: DiskReply) {
        let Some((want, purpose)) = self.disk_in_flight else {
            return;
        };
        if want != id {
            return;
        }
        self.disk_in_flight = None;
        let conflict = matches!(reply, DiskReply::Conflict | DiskReply::PossiblyFenced);
        let fencing = matches!(
            purpose,
            Purpose::FindKeysOf(..) | Purpose::FenceMember(..) | Purpose::AfterFenceConflict(..)
        );
        if fencing && self.coord.is_none() {
            // Fencing started as coordinator, answered after the role went: not this
            // node's business any more.
            return;
        }
        match (purpose, reply) {
            (Purpose::Register, DiskReply::Done) => {
                self.queue_disk(
                    DiskOp::ReadReservation,
                    Purpose::FindCoordinator { dead: None },
                );
            }
            (Purpose::Register, _) => {
                self.queue_disk(DiskOp::Register { key: self.key() }, Purpose::Register);
            }
            (Purpose::FindCoordinator { .. }, DiskReply::Holder(None)) => {
                self.queue_disk(DiskOp::Reserve { key: self.key() }, Purpose::Reserve);
            }
            (Purpose::FindCoordinator { dead }, DiskReply::Holder(Some(k))) => {
                match key_owner(k) {
                    _ if k == self.key() => self.won(now),
                    // Another node's key, and that node not given up for dead: follow it.
                    Some((n, inc)) if n != self.id && Some(n) != dead => {
                        let known = self.peer_incarnation.entry(n).or_insert(inc);
                        *known = (*known).max(inc);
                        self.follow(now, n);
                    }
                    // An earlier life of this node, the node given up for dead, or a
                    // reservation csvfs did not make: preempt it.
                    _ => self.queue_disk(
                        DiskOp::Preempt {
                            key: self.key(),
                            victim: k,
                        },
                        Purpose::TakeOver,
                    ),
                }
            }
            (Purpose::Reserve, DiskReply::Done) => self.won(now),
            // A PREEMPT of the holder's key that succeeds gives this node the
            // reservation only if that key still held it: a hand-over may have moved
            // it meanwhile, leaving the old holder's key registered. Read who holds it.
            (Purpose::TakeOver, DiskReply::Done) => {
                self.queue_disk(
                    DiskOp::ReadReservation,
                    Purpose::FindCoordinator { dead: None },
                );
            }
            (Purpose::SetType, DiskReply::Done) => {
                self.queue_disk(
                    DiskOp::ReadReservation,
                    Purpose::FindCoordinator { dead: None },
                );
            }
            (Purpose::Move(to), DiskReply::Done) => self.handed_over(now, to),
            (Purpose::Move(_), DiskReply::Refused) => {
                self.end_hand_over("the target refused to move the reservation");
            }
            (Purpose::Reserve | Purpose::TakeOver | Purpose::SetType, _) if conflict => {
                self.queue_disk(DiskOp::ReadKeys, Purpose::AfterConflict);
            }
            (Purpose::AfterConflict, DiskReply::Keys(keys)) => {
                if keys.contains(&self.key()) {
                    // Someone else won: follow it.
                    self.queue_disk(
                        DiskOp::ReadReservation,
                        Purpose::FindCoordinator { dead: None },
                    );
                } else {
                    self.fenced(now);
                }
            }
            (Purpose::ReadRecord, DiskReply::Record { epoch }) => {
                let e = epoch.max(self.epoch) + 1;
                self.queue_disk(
                    DiskOp::WriteRecord {
                        epoch: e,
                        node: self.id,
                    },
                    Purpose::WriteRecord(e),
                );
            }
            (Purpose::WriteRecord(e), DiskReply::Done) => {
                self.last_disk_ok = Some(self.last_disk_ok.unwrap_or(now).max(self.preempted_at));
                self.start_rebuild(now, e);
            }
            (
                Purpose::CheckAlive {
                    coordinator,
                    second,
                },
                DiskReply::Slot(slot),
            ) => self.on_slot(now, coordinator, second, slot),
            (Purpose::Heartbeat { issued }, DiskReply::Done) => {
                self.last_disk_ok = Some(self.last_disk_ok.unwrap_or(0).max(issued));
            }
            (Purpose::FindKeysOf(node, upto), DiskReply::Keys(keys)) => {
                let mut victims: Vec<Key> = keys
                    .into_iter()
                    .filter(|k| key_owner(*k).is_some_and(|(n, i)| n == node && i <= upto))
                    .collect();
                victims.sort_unstable();
                victims.dedup();
                if victims.is_empty() {
                    self.member_fenced(
                        now,
                        node,
                        upto.min(self.peer_incarnation.get(&node).copied().unwrap_or(0)),
                    );
                }
                let n = victims.len();
                for (i, v) in victims.into_iter().enumerate() {
                    self.queue_disk(
                        DiskOp::Preempt {
                            key: self.key(),
                            victim: v,
                        },
                        Purpose::FenceMember(node, v, i + 1 == n),
                    );
                }
            }
            (Purpose::FenceMember(node, victim, last), DiskReply::Done) => {
                if last {
                    let inc = key_owner(victim).map_or(0, |(_, i)| i);
                    self.member_fenced(now, node, inc);
                }
            }
            (Purpose::FenceMember(node, victim, last), _) if conflict => {
                self.queue_disk(
                    DiskOp::ReadKeys,
                    Purpose::AfterFenceConflict(node, victim, last),
                );
            }
            (Purpose::AfterFenceConflict(node, victim, last), DiskReply::Keys(keys)) => {
                if keys.contains(&self.key()) {
                    // The victim's key was gone already.
                    if last {
                        let inc = key_owner(victim).map_or(0, |(_, i)| i);
                        self.member_fenced(now, node, inc);
                    }
                } else {
                    self.fenced(now);
                }
            }
            (_, _) if conflict => self.fenced(now),
            (_, _) => {
                // An answer that does not fit the question: ask again from the start.
                tracing::warn!(node = self.id, ?purpose, "unexpected disk reply; rejoining");
                self.fenced(now);
            }
        }
    }

    /// `node`'s key (incarnations up to `incarnation`) is gone from the LUN: its leases
    /// are freed once they have run out on its clock.
    fn member_fenced(&mut self, now: Millis, node: NodeId, incarnation: u32) {
        let lease = self.timing.lease;
        // Its silence counts from now: a new life of it has a fencing timeout to rejoin.
        self.last_heard.insert(node, now);
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        c.ranges_unknown.remove(&node);
        let before = c.fenced.get(&node).copied();
        let fenced = c.fenced.entry(node).or_insert(incarnation);
        *fenced = (*fenced).max(incarnation);
        if before != Some(*fenced) {
            // (A node that stays away is fenced again every fencing timeout: logged once.)
            tracing::info!(
                node = self.id,
                member = node,
                upto = *fenced,
                "member fenced"
            );
        }
        if self
            .peer_incarnation
            .get(&node)
            .is_some_and(|k| *k > incarnation)
        {
            // A newer life already spoke: what the fenced one held went then, and what
            // the table holds now is the newer life's.
            c.fencing.remove(&node);
            return;
        }
        c.waiting_reports.remove(&node);
        let runs_out = c.last_ack.get(&node).map_or(now, |t| t + lease).max(now);
        c.drop_at.push((node, runs_out.max(c.barrier)));
    }
}
