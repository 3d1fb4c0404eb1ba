//! Deterministic simulation of the lock manager's protocol: three nodes, simulated
//! time, a network that loses, delays and reorders messages and can be partitioned,
//! nodes that crash and restart, paths to the LUN that reconnect (before a command, or
//! after the target carried it out and before its answer), stall or fail for a
//! while (the node still on the network), planned hand-overs of the coordinator role
//! (asked of any node, during the faults and after them), and a target that
//! behaves as tgtd does (`blockdev::PrState`: registrations belong to a session, no
//! PREEMPT AND ABORT, nothing kept across a restart; writes it accepted land later).
//!
//! Checked at every step:
//! - metadata writes land in epoch order, and one node writes per epoch;
//! - no two nodes rely on conflicting leases at the same moment;
//! - no two nodes registered on the target hold conflicting byte-range locks;
//!
//! and at the end of each run, after the faults stop: one coordinator, every node
//! following it, every request granted (a request whose holder died is granted once
//! that holder is fenced); and a hand-over asked after the faults, with no stubborn
//! user about, gave the role to the node it named.
//!
//! `cargo test` runs 10,000 seeds; `CSVFS_SIM_SEEDS=N` runs N (the soak).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use blockdev::{Nexus, PrOut, PrState, ReservationType};
use lockmgr::protocol::{
    Action, DiskOp, DiskReply, Epoch, Event, LockKind, Millis, Mode, Msg, Node, NodeId, RangeOp,
    ResourceId, Role, Timing,
};

const NODES: NodeId = 3;
const RESOURCES: ResourceId = 4;
const TICK: Millis = 10;
const CHAOS_END: Millis = 10_000;
const QUIET_START: Millis = 18_000;
const END: Millis = 30_000;
const WE_RO: ReservationType = ReservationType::WriteExclusiveRegistrantsOnly;

/// splitmix64: small, deterministic, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Debug)]
enum Ev {
    Tick(NodeId),
    Deliver {
        to: NodeId,
        from: NodeId,
        incarnation: u32,
        msg: Msg,
    },
    DiskArrive {
        node: NodeId,
        life: u32,
        id: u64,
        op: DiskOp,
    },
    DiskReply {
        node: NodeId,
        life: u32,
        id: u64,
        reply: DiskReply,
    },
    MetaArrive {
        node: NodeId,
        life: u32,
        epoch: Epoch,
    },
    MetaLand {
        node: NodeId,
        life: u32,
        epoch: Epoch,
    },
    /// Node `.0` is asked to hand the coordinator role to `.1` (None: any node);
    /// `.2`: asked after the faults, so it must succeed.
    HandOver(NodeId, Option<NodeId>, bool),
    Crash(NodeId),
    Restart(NodeId),
    Reconnect(NodeId),
    LoseAnswer(NodeId),
    TargetRestart,
    Cut(NodeId, bool),
    Stall(NodeId, Millis),
    PathDown(NodeId, Millis),
}

/// The user of a node's leases and byte-range locks.
#[derive(Default)]
struct App {
    held: BTreeMap<ResourceId, Millis>,
    wanted: BTreeSet<ResourceId>,
    stubborn: bool,
    /// Byte-range requests waiting for their answer.
    range_asked: BTreeSet<u64>,
}

/// Files and lock owners per node of the byte-range lock users.
const FILES: u64 = 2;
const OWNERS: u64 = 2;

struct SimNode {
    node: Option<Node>,
    life: u32,
    incarnation: u32,
    session: u64,
    reconnect_pending: bool,
    /// The next disk operation is carried out, and its answer lost with the session
    /// (a connection reset after the target acted): the node hears "possibly fenced".
    answer_lost: bool,
    /// The node's path to the LUN answers nothing until then (a stalled path).
    stalled_until: Millis,
    /// The node's path to the LUN fails every operation until then (a lost path).
    path_down_until: Millis,
    app: App,
    next_meta: Millis,
    /// Metadata writes of this life not yet landed or refused: the store closes once
    /// they are all done.
    meta_in_flight: u32,
}

struct World {
    seed: u64,
    now: Millis,
    rng: Rng,
    timing: Timing,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    events: Vec<Option<Ev>>,
    nodes: BTreeMap<NodeId, SimNode>,
    target: PrState,
    record: Epoch,
    /// The disk heartbeat slots: (the writer's life, its counter).
    slots: BTreeMap<NodeId, (u32, u64)>,
    landed_max: Epoch,
    writers: BTreeMap<Epoch, NodeId>,
    cut: BTreeSet<NodeId>,
    loss: u64,
    log: Vec<String>,
    /// The node a hand-over asked after the faults named, once it was accepted.
    calm_move: Option<NodeId>,
}

impl World {
    fn new(seed: u64) -> World {
        let timing = Timing::DEFAULT;
        let mut w = World {
            seed,
            now: 0,
            rng: Rng(seed),
            timing,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes: BTreeMap::new(),
            target: PrState::default(),
            record: 0,
            slots: BTreeMap::new(),
            landed_max: 0,
            writers: BTreeMap::new(),
            cut: BTreeSet::new(),
            loss: 0,
            log: Vec::new(),
            calm_move: None,
        };
        for id in 1..=NODES {
            w.nodes.insert(
                id,
                SimNode {
                    node: None,
                    life: 0,
                    incarnation: 0,
                    session: 0,
                    reconnect_pending: false,
                    answer_lost: false,
                    stalled_until: 0,
                    path_down_until: 0,
                    app: App::default(),
                    next_meta: 0,
                    meta_in_flight: 0,
                },
            );
            let start = w.rng.range(0, 300);
            w.at(start, Ev::Restart(id));
        }
        w.plan_faults();
        w
    }

    fn at(&mut self, t: Millis, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((t, self.seq, self.events.len() - 1)));
    }

    fn plan_faults(&mut self) {
        self.loss = self.rng.range(0, 50);
        // Planned hand-overs during the faults, and at most one after them.
        for _ in 0..self.rng.range(0, 2) {
            let t = self.rng.range(1_000, CHAOS_END);
            let asker = self.rng.range(1, u64::from(NODES)) as NodeId;
            let to = self.rng.range(0, u64::from(NODES)) as NodeId;
            self.at(t, Ev::HandOver(asker, (to != 0).then_some(to), false));
        }
        if self.rng.chance(500) {
            let t = self.rng.range(CHAOS_END + 3_000, QUIET_START - 2_000);
            let asker = self.rng.range(1, u64::from(NODES)) as NodeId;
            let to = self.rng.range(1, u64::from(NODES)) as NodeId;
            self.at(t, Ev::HandOver(asker, Some(to), true));
        }
        let faults = self.rng.range(1, 4);
        for _ in 0..faults {
            let t = self.rng.range(1_000, CHAOS_END - 1_000);
            let n = self.rng.range(1, u64::from(NODES)) as NodeId;
            match self.rng.below(7) {
                6 => {
                    let until = t + self.rng.range(500, 4_000);
                    self.at(t, Ev::PathDown(n, until));
                }
                5 => {
                    let until = t + self.rng.range(300, 3_000);
                    self.at(t, Ev::Stall(n, until));
                }
                0 => {
                    self.at(t, Ev::Crash(n));
                    let back = t + self.rng.range(200, 4_000);
                    self.at(back, Ev::Restart(n));
                }
                1 => {
                    self.at(t, Ev::Cut(n, true));
                    let heal = t + self.rng.range(500, 5_000);
                    self.at(heal.min(CHAOS_END), Ev::Cut(n, false));
                }
                2 if self.rng.chance(500) => self.at(t, Ev::LoseAnswer(n)),
                2 => self.at(t, Ev::Reconnect(n)),
                3 => self.at(t, Ev::TargetRestart),
                _ => {
                    // A stubborn user: does not give a recalled lease back.
                    if let Some(s) = self.nodes.get_mut(&n) {
                        s.app.stubborn = true;
                    }
                }
            }
        }
        self.at(CHAOS_END, Ev::Cut(0, false));
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self
            .log
            .iter()
            .rev()
            .take(
                std::env::var("CSVFS_SIM_LOG")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(60),
            )
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(|s| s.as_str()).collect();
        panic!(
            "seed {}: at {} ms: {what}\nlast events:\n{}",
            self.seed,
            self.now,
            tail.join("\n")
        );
    }

    fn note(&mut self, s: String) {
        if self.log.len() > 4000 {
            self.log.drain(..2000);
        }
        self.log.push(format!("{:>6} {s}", self.now));
    }

    fn run(&mut self) {
        while let Some(Reverse((t, _, idx))) = self.queue.pop() {
            if t > END {
                break;
            }
            self.now = t;
            let ev = self.events[idx].take().expect("each event runs once");
            self.step(ev);
            self.check_leases();
            self.check_ranges();
        }
        self.check_end();
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(n) => {
                let alive = self.nodes[&n].node.is_some();
                if !alive {
                    return;
                }
                self.app_step(n);
                self.feed(n, Event::Tick);
                self.meta_step(n);
                self.at(self.now + TICK, Ev::Tick(n));
            }
            Ev::Deliver {
                to,
                from,
                incarnation,
                msg,
            } => {
                if !matches!(msg, Msg::Heartbeat { .. } | Msg::HeartbeatAck { .. }) {
                    self.note(format!("n{from}->n{to} {msg:?}"));
                }
                self.feed(
                    to,
                    Event::Message {
                        from,
                        incarnation,
                        msg,
                    },
                )
            }
            Ev::DiskArrive { node, life, id, op } => {
                let reply = self.target_op(node, life, &op);
                let d = self.rng.range(1, 15);
                self.note(format!("n{node} disk {op:?} -> {reply:?}"));
                self.at(
                    self.now + d,
                    Ev::DiskReply {
                        node,
                        life,
                        id,
                        reply,
                    },
                );
            }
            Ev::DiskReply {
                node,
                life,
                id,
                reply,
            } => {
                if self.nodes[&node].life == life {
                    self.feed(node, Event::Disk { id, reply });
                }
            }
            Ev::MetaArrive { node, life, epoch } => {
                let s = &self.nodes[&node];
                if s.life == life
                    && !s.reconnect_pending
                    && self.now >= s.path_down_until
                    && self.target.may_write(&nexus(node, s.session))
                {
                    let d = self.rng.range(0, 100);
                    self.at(self.now + d, Ev::MetaLand { node, life, epoch });
                } else {
                    self.meta_done(node, life);
                }
            }
            Ev::HandOver(n, to, calm) => {
                let now = self.now;
                let Some(node) = self.nodes.get_mut(&n).and_then(|s| s.node.as_mut()) else {
                    return;
                };
                match node.hand_over(now, to) {
                    Ok(a) => {
                        self.note(format!("n{n} HAND OVER to {to:?}"));
                        if calm {
                            self.calm_move = to;
                        }
                        self.carry_out(n, a);
                    }
                    Err(e) => self.note(format!("n{n} HAND OVER to {to:?} refused: {e}")),
                }
            }
            Ev::MetaLand { node, life, epoch } => {
                self.meta_done(node, life);
                if epoch < self.landed_max {
                    self.fail(format!(
                        "node {node}'s metadata write of epoch {epoch} landed after one of epoch {}",
                        self.landed_max
                    ));
                }
                self.landed_max = epoch;
                if let Some(w) = self.writers.insert(epoch, node)
                    && w != node
                {
                    self.fail(format!(
                        "nodes {w} and {node} both wrote metadata in epoch {epoch}"
                    ));
                }
            }
            Ev::Crash(n) => {
                self.note(format!("n{n} CRASH"));
                let s = self.nodes.get_mut(&n).expect("node");
                s.node = None;
                s.life += 1;
                s.app = App::default();
            }
            Ev::Restart(n) => {
                let now = self.now;
                let s = self.nodes.get_mut(&n).expect("node");
                if s.node.is_some() {
                    return;
                }
                s.life += 1;
                s.incarnation += 1;
                // A new process: a new iSCSI session.
                s.session += 1;
                s.reconnect_pending = false;
                s.answer_lost = false;
                s.next_meta = 0;
                s.meta_in_flight = 0;
                let peers = (1..=NODES).collect();
                let mut node = Node::new(n, s.incarnation, peers, self.timing, now);
                node.set_reservation_port(Some(nexus(n, 0).initiator));
                node.set_store_keeper(true);
                s.node = Some(node);
                let inc = s.incarnation;
                self.note(format!("n{n} START incarnation {inc}"));
                self.feed(n, Event::Tick);
                self.at(now + TICK, Ev::Tick(n));
            }
            Ev::Reconnect(n) => {
                self.note(format!("n{n} RECONNECT"));
                self.nodes.get_mut(&n).expect("node").reconnect_pending = true;
            }
            Ev::LoseAnswer(n) => {
                self.note(format!("n{n} NEXT ANSWER LOST"));
                self.nodes.get_mut(&n).expect("node").answer_lost = true;
            }
            Ev::TargetRestart => {
                self.note("TARGET RESTART".into());
                self.target.reset();
                for s in self.nodes.values_mut() {
                    s.reconnect_pending = true;
                }
            }
            Ev::PathDown(n, until) => {
                self.note(format!("n{n} PATH DOWN until {until}"));
                self.nodes.get_mut(&n).expect("node").path_down_until = until;
            }
            Ev::Stall(n, until) => {
                self.note(format!("n{n} DISK STALL until {until}"));
                self.nodes.get_mut(&n).expect("node").stalled_until = until;
            }
            Ev::Cut(n, on) => {
                self.note(format!("n{n} CUT {on}"));
                if n == 0 {
                    self.cut.clear();
                    self.loss = 0;
                } else if on {
                    self.cut.insert(n);
                } else {
                    self.cut.remove(&n);
                }
            }
        }
    }

    /// The target's answer to a disk operation, as the node hears it.
    fn target_op(&mut self, node: NodeId, life: u32, op: &DiskOp) -> DiskReply {
        let reply = self.target_apply(node, life, op);
        let s = self.nodes.get_mut(&node).expect("node");
        if s.life == life && std::mem::take(&mut s.answer_lost) {
            // Carried out, but the connection went before the answer: the initiator
            // reconnects on a new session and reports it.
            s.session += 1;
            return DiskReply::PossiblyFenced;
        }
        reply
    }

    /// The target's answer to a disk operation, as tgtd gives it.
    fn target_apply(&mut self, node: NodeId, life: u32, op: &DiskOp) -> DiskReply {
        let s = self.nodes.get_mut(&node).expect("node");
        if s.life != life || self.now < s.path_down_until {
            return DiskReply::PossiblyFenced;
        }
        if s.reconnect_pending {
            // The session ended: the initiator reconnects on a new one and reports it.
            s.reconnect_pending = false;
            s.session += 1;
            return DiskReply::PossiblyFenced;
        }
        let me = nexus(node, s.session);
        let pr = |t: &mut PrState, a: PrOut| match t.apply(&me, &a) {
            Ok(()) => DiskReply::Done,
            Err(_) => DiskReply::Conflict,
        };
        match op {
            DiskOp::Register { key } => pr(
                &mut self.target,
                PrOut::RegisterIgnoreExisting { new_key: *key },
            ),
            DiskOp::Reserve { key } => pr(
                &mut self.target,
                PrOut::Reserve {
                    key: *key,
                    kind: WE_RO,
                },
            ),
            DiskOp::Preempt { key, victim } => pr(
                &mut self.target,
                PrOut::Preempt {
                    key: *key,
                    victim: *victim,
                    kind: WE_RO,
                    abort: false,
                },
            ),
            DiskOp::ReadKeys => DiskReply::Keys(self.target.read_keys().keys),
            DiskOp::ReadReservation => {
                DiskReply::Holder(self.target.read_reservation().map(|h| h.key))
            }
            DiskOp::ReadRecord => DiskReply::Record { epoch: self.record },
            DiskOp::WriteRecord { epoch, .. } => {
                if self.target.may_write(&me) {
                    self.record = *epoch;
                    DiskReply::Done
                } else {
                    DiskReply::Conflict
                }
            }
            DiskOp::ReadSlot { node } => DiskReply::Slot(self.slots.get(node).copied()),
            DiskOp::Move {
                key,
                to_key,
                to_port,
            } => match self.target.apply(
                &me,
                &PrOut::RegisterAndMove {
                    key: *key,
                    new_key: *to_key,
                    to_initiator: to_port.clone(),
                    unregister: false,
                },
            ) {
                Ok(()) => DiskReply::Done,
                Err(blockdev::PrRefusal::Invalid) => DiskReply::Refused,
                Err(_) => DiskReply::Conflict,
            },
            DiskOp::Heartbeat { counter } => {
                if self.target.may_write(&me) {
                    self.slots.insert(node, (life, *counter));
                    DiskReply::Done
                } else {
                    DiskReply::Conflict
                }
            }
        }
    }

    fn feed(&mut self, n: NodeId, ev: Event) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&n).and_then(|s| s.node.as_mut()) else {
            return;
        };
        let actions = node.handle(now, ev);
        self.carry_out(n, actions);
    }

    fn carry_out(&mut self, n: NodeId, actions: Vec<Action>) {
        let (life, incarnation) = {
            let s = self.nodes.get_mut(&n).expect("node");
            // The node raises its incarnation itself when it rejoins; the shell keeps
            // the highest one used, so that a restart goes beyond it.
            if let Some(node) = &s.node {
                s.incarnation = s.incarnation.max(node.incarnation());
            }
            (s.life, s.incarnation)
        };
        for a in actions {
            match a {
                Action::Send { to, msg } => {
                    if self.cut.contains(&n) || self.cut.contains(&to) {
                        continue;
                    }
                    let loss = self.loss;
                    if self.rng.chance(loss) {
                        continue;
                    }
                    let d = self.rng.range(1, 30);
                    self.at(
                        self.now + d,
                        Ev::Deliver {
                            to,
                            from: n,
                            incarnation,
                            msg,
                        },
                    );
                }
                Action::Disk { id, op } => {
                    let d = self.rng.range(1, 15);
                    self.at(
                        self.now + d,
                        Ev::DiskArrive {
                            node: n,
                            life,
                            id,
                            op,
                        },
                    );
                }
                Action::Granted { res, mode, .. } => {
                    self.note(format!("n{n} GRANTED {res} {mode:?}"));
                    let now = self.now;
                    let s = self.nodes.get_mut(&n).expect("node");
                    s.app.wanted.remove(&res);
                    s.app.held.insert(res, now);
                }
                Action::Recall { res } => {
                    self.note(format!("n{n} RECALL {res}"));
                    let stubborn = self.nodes[&n].app.stubborn;
                    if !stubborn {
                        self.release(n, res);
                    }
                }
                Action::LostAll => {
                    let s = self.nodes.get_mut(&n).expect("node");
                    s.app.held.clear();
                }
                Action::Role(r) => self.note(format!("n{n} role {r}")),
                Action::RangeAnswer { req, outcome } => {
                    self.note(format!("n{n} RANGE ANSWER {req:#x} {outcome:?}"));
                    let s = self.nodes.get_mut(&n).expect("node");
                    s.app.range_asked.remove(&req);
                }
            }
        }
    }

    fn release(&mut self, n: NodeId, res: ResourceId) {
        self.note(format!("n{n} RELEASE {res}"));
        let now = self.now;
        let s = self.nodes.get_mut(&n).expect("node");
        s.app.held.remove(&res);
        if let Some(node) = s.node.as_mut() {
            let a = node.release(now, res);
            self.carry_out(n, a);
        }
    }

    fn range_op(&mut self, n: NodeId, file: u64, owner: u64, op: RangeOp) {
        let now = self.now;
        let s = self.nodes.get_mut(&n).expect("node");
        let Some(node) = s.node.as_mut() else { return };
        let (req, a) = node.range_request(now, file, owner, op);
        s.app.range_asked.insert(req);
        self.note(format!(
            "n{n} RANGE {req:#x} file {file} owner {owner} {op:?}"
        ));
        self.carry_out(n, a);
    }

    /// The byte-range lock users: lock (waiting or not), test, unlock, close, and
    /// sometimes give up a wait; at the quiet period, close everything.
    fn range_step(&mut self, n: NodeId) {
        let now = self.now;
        if now >= QUIET_START {
            if now < QUIET_START + TICK {
                let waits: Vec<u64> = self.nodes[&n].app.range_asked.iter().copied().collect();
                for req in waits {
                    let s = self.nodes.get_mut(&n).expect("node");
                    if let Some(node) = s.node.as_mut() {
                        let a = node.range_cancel(now, req);
                        s.app.range_asked.remove(&req);
                        self.carry_out(n, a);
                    }
                }
                for file in 1..=FILES {
                    for owner in 1..=OWNERS {
                        self.range_op(n, file, owner, RangeOp::Release);
                    }
                }
            }
            return;
        }
        if !self.rng.chance(20) || self.nodes[&n].app.range_asked.len() >= 2 {
            if self.rng.chance(2)
                && let Some(&req) = self.nodes[&n].app.range_asked.iter().next()
            {
                self.note(format!("n{n} RANGE CANCEL {req:#x}"));
                let s = self.nodes.get_mut(&n).expect("node");
                if let Some(node) = s.node.as_mut() {
                    let a = node.range_cancel(now, req);
                    s.app.range_asked.remove(&req);
                    self.carry_out(n, a);
                }
            }
            return;
        }
        let file = self.rng.range(1, FILES);
        let owner = self.rng.range(1, OWNERS);
        let start = self.rng.range(0, 8);
        let end = if self.rng.chance(100) {
            u64::MAX
        } else {
            start + self.rng.range(1, 4)
        };
        let kind = if self.rng.chance(400) {
            LockKind::Read
        } else {
            LockKind::Write
        };
        let op = match self.rng.below(10) {
            0..=3 => RangeOp::Lock {
                kind,
                start,
                end,
                wait: self.rng.chance(600),
            },
            4 => RangeOp::Test { kind, start, end },
            5..=7 => RangeOp::Unlock { start, end },
            _ => RangeOp::Release,
        };
        self.range_op(n, file, owner, op);
    }

    /// The user: takes and gives back leases at random until the quiet period.
    fn app_step(&mut self, n: NodeId) {
        let now = self.now;
        self.range_step(n);
        if now >= QUIET_START {
            let held: Vec<ResourceId> = self.nodes[&n].app.held.keys().copied().collect();
            for r in held {
                self.release(n, r);
            }
            return;
        }
        if !self.rng.chance(30) {
            return;
        }
        let res = self.rng.range(1, RESOURCES);
        let s = &self.nodes[&n];
        if let Some(since) = s.app.held.get(&res) {
            if now - since > 200 {
                self.release(n, res);
            }
            return;
        }
        if s.app.wanted.contains(&res) {
            return;
        }
        let mode = if self.rng.chance(500) {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let s = self.nodes.get_mut(&n).expect("node");
        s.app.wanted.insert(res);
        let node = s.node.as_mut().expect("alive");
        let (_, a) = node.acquire(now, res, mode);
        self.carry_out(n, a);
    }

    /// A metadata write of `node`'s life `life` landed or was refused.
    fn meta_done(&mut self, node: NodeId, life: u32) {
        let s = self.nodes.get_mut(&node).expect("node");
        if s.life == life {
            s.meta_in_flight = s.meta_in_flight.saturating_sub(1);
        }
    }

    /// The coordinator writes metadata every 50 ms while it serves; handing the role
    /// over, it closes its store once its writes are all on the LUN.
    fn meta_step(&mut self, n: NodeId) {
        let now = self.now;
        let s = self.nodes.get_mut(&n).expect("node");
        if s.meta_in_flight == 0
            && let Some(node) = s.node.as_mut()
            && let Some((epoch, seq)) = node.store_to_close()
        {
            node.store_closed(epoch, seq);
            self.note(format!("n{n} STORE CLOSED epoch {epoch}"));
            return;
        }
        let Some(epoch) = s.node.as_ref().and_then(|x| x.serving_epoch(now)) else {
            return;
        };
        if now < s.next_meta {
            return;
        }
        s.next_meta = now + 50;
        s.meta_in_flight += 1;
        let life = s.life;
        let d = self.rng.range(1, 15);
        self.at(
            self.now + d,
            Ev::MetaArrive {
                node: n,
                life,
                epoch,
            },
        );
    }

    fn check_leases(&self) {
        let mut by_res: BTreeMap<ResourceId, Vec<(NodeId, Mode)>> = BTreeMap::new();
        for (id, s) in &self.nodes {
            if let Some(node) = &s.node {
                for (r, m) in node.valid_leases(self.now) {
                    by_res.entry(r).or_default().push((*id, m));
                }
            }
        }
        for (r, holders) in by_res {
            for (i, (a, ma)) in holders.iter().enumerate() {
                for (b, mb) in &holders[i + 1..] {
                    if ma.conflicts(*mb) {
                        self.fail(format!(
                            "nodes {a} ({ma:?}) and {b} ({mb:?}) both rely on a lease of resource {r}"
                        ));
                    }
                }
            }
        }
    }

    fn check_ranges(&self) {
        let holders: Vec<(NodeId, &Node)> = self
            .nodes
            .iter()
            .filter_map(|(id, s)| s.node.as_ref().map(|n| (*id, n)))
            .filter(|(_, n)| n.holds_range_locks())
            .collect();
        if holders.len() < 2 {
            return;
        }
        let registered = self.target.read_keys().keys;
        let mut held = Vec::new();
        for (id, node) in holders {
            if registered.contains(&node.key()) {
                for (file, l) in node.range_locks_held() {
                    held.push((id, file, l));
                }
            }
        }
        for (i, (a, fa, la)) in held.iter().enumerate() {
            for (b, fb, lb) in &held[i + 1..] {
                if a != b
                    && fa == fb
                    && la.start < lb.end
                    && lb.start < la.end
                    && (la.kind == LockKind::Write || lb.kind == LockKind::Write)
                {
                    self.fail(format!(
                        "nodes {a} and {b}, both registered, hold conflicting range locks on file {fa}: {la:?} and {lb:?}"
                    ));
                }
            }
        }
    }

    fn check_end(&self) {
        let coordinators: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, s)| {
                s.node
                    .as_ref()
                    .is_some_and(|n| n.serving_epoch(self.now).is_some())
            })
            .map(|(id, _)| *id)
            .collect();
        if coordinators.len() != 1 {
            self.fail(format!(
                "after the faults, {} serving coordinators: {coordinators:?}",
                coordinators.len()
            ));
        }
        let c = coordinators[0];
        if let Some(to) = self.calm_move
            && !self.nodes.values().any(|s| s.app.stubborn)
            && c != to
        {
            self.fail(format!(
                "a hand-over to node {to} was asked after the faults, and node {c} coordinates at the end"
            ));
        }
        let table = self.nodes[&c]
            .node
            .as_ref()
            .and_then(|x| x.range_table())
            .unwrap_or_default();
        if !table.is_empty() {
            self.fail(format!(
                "the coordinator's byte-range table is not empty after every close: {table:?}"
            ));
        }
        for (id, s) in &self.nodes {
            let Some(n) = &s.node else { continue };
            if *id != c && n.role() != Role::Follower(c) {
                self.fail(format!(
                    "node {id} is {} at the end, not a follower of {c}",
                    n.role()
                ));
            }
            if n.range_pending() != 0 {
                self.fail(format!(
                    "node {id} still waits for {} byte-range requests at the end",
                    n.range_pending()
                ));
            }
            if !n.range_locks_held().is_empty() {
                self.fail(format!(
                    "node {id} still holds byte-range locks after closing everything: {:?}",
                    n.range_locks_held()
                ));
            }
            if n.pending() != 0 {
                let table = self.nodes[&c]
                    .node
                    .as_ref()
                    .and_then(|x| x.lockspace_holdings());
                self.fail(format!(
                    "node {id} still waits for {} requests at the end; coordinator's table {table:?}; held by the users {:?}",
                    n.pending(),
                    self.nodes.iter().map(|(i, s)| (*i, s.app.held.keys().copied().collect::<Vec<_>>(), s.app.stubborn)).collect::<Vec<_>>()
                ));
            }
        }
    }
}

fn nexus(node: NodeId, session: u64) -> Nexus {
    Nexus::new(format!("iqn.2026-11.io.csvfs.sim:n{node}"), session)
}

fn run_seeds(seeds: std::ops::Range<u64>) {
    for seed in seeds {
        World::new(seed).run();
    }
}

/// `CSVFS_SIM_SEED=N` runs one seed (to look at a failure).
#[test]
fn one_seed_from_the_environment() {
    if let Some(seed) = std::env::var("CSVFS_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        World::new(seed).run();
    }
}

fn seed_count() -> u64 {
    std::env::var("CSVFS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn simulated_seeds_first_half() {
    let n = seed_count();
    let start = std::time::Instant::now();
    run_seeds(0..n / 2);
    println!("seeds 0..{}: {:?}", n / 2, start.elapsed());
}

#[test]
fn simulated_seeds_second_half() {
    let n = seed_count();
    let start = std::time::Instant::now();
    run_seeds(n / 2..n);
    println!("seeds {}..{n}: {:?}", n / 2, start.elapsed());
}
