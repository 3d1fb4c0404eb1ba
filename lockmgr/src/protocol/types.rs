//! The vocabulary of the protocol: node identities and reservation keys, epochs, lock
//! modes, the timing it runs on, and the messages, disk operations, events and actions
//! of the state machines.

use std::fmt;

pub use super::range_locks::{LockKind, Owner, RangeLock};

/// A node's number in the cluster configuration (1 to 255).
pub type NodeId = u8;
/// The coordinator generation of a volume: raised by every takeover, written in the
/// coordinator record, carried by every grant as the fencing token.
pub type Epoch = u64;
/// Milliseconds of a node's monotonic clock.
pub type Millis = u64;
/// A named resource of a lockspace (the name hashed by the caller).
pub type ResourceId = u64;
/// A reservation key.
pub type Key = u64;

const KEY_TAG: u64 = 0xC5F5;

/// The reservation key of a node in one incarnation: a csvfs tag, the node id and the
/// incarnation, so that keys of different nodes and lives never collide.
pub fn node_key(node: NodeId, incarnation: u32) -> Key {
    (KEY_TAG << 48) | (u64::from(node) << 32) | u64::from(incarnation)
}

/// The node and incarnation of a key made by [`node_key`].
pub fn key_owner(key: Key) -> Option<(NodeId, u32)> {
    if key >> 48 != KEY_TAG || (key >> 40) & 0xff != 0 {
        return None;
    }
    Some((((key >> 32) & 0xff) as NodeId, key as u32))
}

/// How the protocol is timed. Every node of a cluster must use the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Interval of network heartbeats (and lease renewals) and disk heartbeats.
    pub heartbeat: Millis,
    /// How long a lease stays valid after the request that renewed it was sent.
    pub lease: Millis,
    /// Silence after which a peer is fenced.
    pub fence: Millis,
    /// How long a new coordinator waits after its PREEMPT before it writes (tgtd has no
    /// PREEMPT AND ABORT: the old holder's accepted writes may still land).
    pub drain: Millis,
    /// How long a holder has to release a recalled lease before it is fenced.
    pub recall: Millis,
    /// How long a new coordinator waits for the nodes' holdings before it fences the
    /// nodes that did not answer.
    pub report: Millis,
}

impl Timing {
    /// The defaults: a failover in about 3 s.
    pub const DEFAULT: Timing = Timing {
        heartbeat: 100,
        lease: 1000,
        fence: 1500,
        drain: 300,
        recall: 2000,
        report: 500,
    };

    /// How long after the start of a successful disk heartbeat a coordinator may go on
    /// serving without another: two heartbeats.
    pub fn grace(&self) -> Millis {
        2 * self.heartbeat
    }

    /// Checks the relations the protocol's safety rests on.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat == 0 {
            return Err("the heartbeat interval must be above 0".into());
        }
        if self.lease < 3 * self.heartbeat {
            return Err(format!(
                "the lease ({} ms) must be at least three heartbeats ({} ms)",
                self.lease, self.heartbeat
            ));
        }
        if self.fence <= self.lease + self.heartbeat {
            return Err(format!(
                "the fencing timeout ({} ms) must exceed the lease plus a heartbeat ({} ms)",
                self.fence,
                self.lease + self.heartbeat
            ));
        }
        Ok(())
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::DEFAULT
    }
}

/// A lease's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Many holders.
    Shared,
    /// One holder.
    Exclusive,
}

impl Mode {
    /// True when a lease of `self` and one of `other` cannot be held at once.
    pub fn conflicts(self, other: Mode) -> bool {
        self == Mode::Exclusive || other == Mode::Exclusive
    }
}

/// A POSIX byte-range lock operation of one lock owner on one file, as a node asks
/// the coordinator for it. Ranges are `[start, end)`, `end = u64::MAX` for "to the end".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// F_GETLK: which lock, if any, keeps this one from being taken.
    Test {
        /// The kind asked about.
        kind: LockKind,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// F_SETLK (`wait` false: refused at once on a conflict) or F_SETLKW (`wait`
    /// true: granted when what conflicts goes).
    Lock {
        /// The kind.
        kind: LockKind,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// F_SETLKW.
        wait: bool,
    },
    /// F_UNLCK.
    Unlock {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Everything the owner holds or waits for on the file (its close).
    Release,
}

/// The answer to a [`RangeOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Taken, unlocked or released.
    Done,
    /// F_SETLK refused: a conflicting lock is held.
    Busy,
    /// F_GETLK: nothing conflicts.
    Free,
    /// F_GETLK: this lock conflicts.
    Blocker(RangeLock),
    /// The node was fenced before the answer came: its locks are gone.
    Lost,
}

/// What nodes send each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Liveness, every heartbeat. `sent` is the sender's clock; a coordinator answers
    /// with [`Msg::HeartbeatAck`], which renews the sender's leases.
    Heartbeat {
        /// The sender's clock when it sent this.
        sent: Millis,
        /// The sender's epoch.
        epoch: Epoch,
        /// True when the sender coordinates the volume in `epoch`.
        coordinator: bool,
    },
    /// The coordinator's answer to a heartbeat: leases of `epoch` are valid until
    /// `sent + lease` on the receiver's clock.
    HeartbeatAck {
        /// The `sent` of the heartbeat answered.
        sent: Millis,
        /// The coordinator's epoch.
        epoch: Epoch,
    },
    /// A lease request to the coordinator.
    Acquire {
        /// The epoch the requester knows.
        epoch: Epoch,
        /// The requester's request number.
        req: u64,
        /// The resource.
        res: ResourceId,
        /// The mode wanted.
        mode: Mode,
        /// The requester's clock when it sent the request.
        sent: Millis,
    },
    /// A lease granted; valid until `sent + lease` of the request.
    Grant {
        /// The coordinator's epoch: the fencing token.
        epoch: Epoch,
        /// The request granted.
        req: u64,
        /// The resource.
        res: ResourceId,
        /// The mode granted.
        mode: Mode,
        /// The `sent` of the request.
        sent: Millis,
    },
    /// The coordinator wants a lease back.
    Recall {
        /// The coordinator's epoch.
        epoch: Epoch,
        /// The resource.
        res: ResourceId,
        /// The request the lease was granted for.
        req: u64,
    },
    /// A lease given back.
    Release {
        /// The epoch of the holder.
        epoch: Epoch,
        /// The resource.
        res: ResourceId,
        /// The request the lease was granted for.
        req: u64,
    },
    /// A new coordinator asks what each node holds and waits for.
    Report {
        /// The new epoch.
        epoch: Epoch,
    },
    /// The new coordinator took in the holdings a node reported: from now on its
    /// heartbeats renew them.
    Adopted {
        /// The new epoch.
        epoch: Epoch,
    },
    /// A node's answer to [`Msg::Report`].
    Holdings {
        /// The epoch asked about.
        epoch: Epoch,
        /// The leases the node holds, with the requests they were granted for.
        held: Vec<(ResourceId, Mode, u64)>,
        /// The requests it waits for: (request, resource, mode, sent).
        pending: Vec<(u64, ResourceId, Mode, Millis)>,
        /// The byte-range locks it holds, by file.
        ranges: Vec<(u64, RangeLock)>,
    },
    /// A byte-range lock operation, to the coordinator.
    Range {
        /// The epoch the sender knows.
        epoch: Epoch,
        /// The sender's request number.
        req: u64,
        /// The file.
        file: u64,
        /// The lock owner on the sender.
        owner: u64,
        /// The operation.
        op: RangeOp,
    },
    /// A waiting F_SETLKW given up (the caller was interrupted).
    RangeCancel {
        /// The epoch the sender knows.
        epoch: Epoch,
        /// The request given up.
        req: u64,
    },
    /// The coordinator's answer to a [`Msg::Range`].
    RangeAnswer {
        /// The coordinator's epoch.
        epoch: Epoch,
        /// The request answered.
        req: u64,
        /// The answer.
        outcome: RangeOutcome,
    },
    /// A planned hand-over asked of the coordinator (`csvctl volume move`, `node
    /// drain`): give the role to `to`, or to any live node if `to` is 0.
    MoveTo {
        /// The epoch the sender knows.
        epoch: Epoch,
        /// The node to hand over to (0: any other live node).
        to: NodeId,
    },
    /// The coordinator, handing over, asks the receiver to take the role and to say
    /// how the target knows its session (REGISTER AND MOVE names the receiver).
    Offer {
        /// The coordinator's epoch.
        epoch: Epoch,
    },
    /// The answer to [`Msg::Offer`].
    Accept {
        /// The epoch of the offer.
        epoch: Epoch,
        /// The receiver's initiator port on the LUN.
        port: String,
    },
    /// The reservation is the receiver's now: it takes the role.
    Moved {
        /// The epoch handed over.
        epoch: Epoch,
    },
    /// `csvctl node evict`: to the coordinator, evict `node`; from the coordinator to
    /// the other nodes, `node` is evicted (so that a later coordinator refuses it too).
    Evict {
        /// The sender's epoch.
        epoch: Epoch,
        /// The node evicted.
        node: NodeId,
    },
    /// To an evicted node: it is out of the cluster and must stop.
    Evicted {
        /// The sender's epoch.
        epoch: Epoch,
    },
}

/// A disk operation on the node's own path to the LUN. One is out at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    /// REGISTER AND IGNORE EXISTING KEY.
    Register {
        /// The key.
        key: Key,
    },
    /// RESERVE, Write Exclusive - Registrants Only.
    Reserve {
        /// This node's key.
        key: Key,
    },
    /// PREEMPT `victim`, taking the reservation if the victim held it.
    Preempt {
        /// This node's key.
        key: Key,
        /// The key to remove.
        victim: Key,
    },
    /// READ KEYS.
    ReadKeys,
    /// READ RESERVATION.
    ReadReservation,
    /// Reads the coordinator record of the cluster region.
    ReadRecord,
    /// Writes the coordinator record.
    WriteRecord {
        /// The new epoch.
        epoch: Epoch,
        /// The coordinator.
        node: NodeId,
    },
    /// Writes this node's disk heartbeat slot: proves the node may still write.
    Heartbeat {
        /// The slot's counter.
        counter: u64,
    },
    /// Reads a node's disk heartbeat slot.
    ReadSlot {
        /// The node.
        node: NodeId,
    },
    /// REGISTER AND MOVE without UNREG: the reservation goes to the session `to_port`
    /// registered with `to_key`; this node stays registered.
    Move {
        /// This node's key (the holder's).
        key: Key,
        /// The receiver's key.
        to_key: Key,
        /// The receiver's initiator port.
        to_port: String,
    },
}

/// The outcome of a [`DiskOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskReply {
    /// Done.
    Done,
    /// RESERVATION CONFLICT.
    Conflict,
    /// The target refused the command as invalid (ILLEGAL REQUEST) and changed
    /// nothing; only a [`DiskOp::Move`] is answered so.
    Refused,
    /// The path failed, or came back after a reconnect: this node's registration may be
    /// gone (the same as a conflict for the protocol).
    PossiblyFenced,
    /// READ KEYS.
    Keys(Vec<Key>),
    /// READ RESERVATION: the holder's key.
    Holder(Option<Key>),
    /// The coordinator record.
    Record {
        /// Its epoch (0 on a fresh volume).
        epoch: Epoch,
    },
    /// A heartbeat slot: the writer's incarnation and counter, `None` if never written
    /// (or unreadable).
    Slot(Option<(u32, u64)>),
}

/// What a node is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed.
    Tick,
    /// A message from a peer, with the peer's incarnation.
    Message {
        /// The sender.
        from: NodeId,
        /// The sender's incarnation.
        incarnation: u32,
        /// The message.
        msg: Msg,
    },
    /// The reply to disk operation `id`.
    Disk {
        /// The operation's number.
        id: u64,
        /// Its outcome.
        reply: DiskReply,
    },
}

/// What a node asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a message.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: Msg,
    },
    /// Run a disk operation and report its reply with `id`.
    Disk {
        /// The operation's number.
        id: u64,
        /// The operation.
        op: DiskOp,
    },
    /// A lease the local user asked for is granted.
    Granted {
        /// The request.
        req: u64,
        /// The resource.
        res: ResourceId,
        /// The mode.
        mode: Mode,
    },
    /// The coordinator wants this lease back: flush and release it.
    Recall {
        /// The resource.
        res: ResourceId,
    },
    /// Every lease is gone (fenced, or a takeover did not keep them): drop every cache.
    LostAll,
    /// A byte-range lock request of the local user is answered.
    RangeAnswer {
        /// The request.
        req: u64,
        /// The answer.
        outcome: RangeOutcome,
    },
    /// The node's role changed (for status and logs).
    Role(Role),
}

/// A node's role in one volume, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Registering its key and finding the coordinator.
    Joining,
    /// Following the coordinator.
    Follower(NodeId),
    /// Taking over: preempting, draining, rebuilding the lockspace.
    TakingOver,
    /// Coordinating in this epoch.
    Coordinator(Epoch),
    /// Fenced: will rejoin with a new incarnation.
    Fenced,
    /// Evicted from the cluster (`csvctl node evict`): stopped, rejoins only when its
    /// daemon starts again.
    Evicted,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Joining => write!(f, "joining"),
            Role::Follower(n) => write!(f, "follower of node {n}"),
            Role::TakingOver => write!(f, "taking over"),
            Role::Coordinator(e) => write!(f, "coordinator, epoch {e}"),
            Role::Fenced => write!(f, "fenced"),
            Role::Evicted => write!(f, "evicted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_node_and_incarnation() {
        let k = node_key(7, 42);
        assert_eq!(key_owner(k), Some((7, 42)));
        assert_eq!(key_owner(0xA1), None);
        assert_ne!(node_key(1, 2), node_key(2, 1));
    }

    #[test]
    fn timing_relations_are_checked() {
        Timing::DEFAULT.check().unwrap();
        let bad = Timing {
            fence: 900,
            ..Timing::DEFAULT
        };
        assert!(bad.check().unwrap_err().contains("fencing timeout"));
        let bad = Timing {
            lease: 100,
            ..Timing::DEFAULT
        };
        assert!(bad.check().unwrap_err().contains("three heartbeats"));
    }
}
