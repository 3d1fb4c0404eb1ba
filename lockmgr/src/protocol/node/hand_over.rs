//! Planned hand-over of the coordinator role (`csvctl volume move`, `node drain`).
//!
//! The coordinator stops serving (it grants and renews nothing; its decisions wait),
//! waits for its user to close the metadata store (every commit on the LUN), asks the
//! receiver for its initiator port ([`Msg::Offer`], [`Msg::Accept`]), and moves the
//! reservation to the receiver's session with REGISTER AND MOVE, staying registered
//! itself (its own data I/O goes on). Then it follows the receiver and tells it
//! ([`Msg::Moved`], sent again until the receiver speaks as coordinator). The receiver
//! sets the reservation's type by preempting its own key, reads the holder, and takes
//! over as after a failover: drain, a new epoch, the nodes' holdings, the barrier.
//!
//! Until the move, a failure (the receiver silent, fenced or restarted, the store not
//! closed in time, the target refusing) ends the hand-over and the coordinator serves
//! again. After it, a receiver that dies is taken over as any dead coordinator.

use super::{Node, Phase, Purpose};
use crate::protocol::types::{DiskOp, Epoch, Millis, Msg, NodeId, node_key};

/// A hand-over under way on the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HandOver {
    /// This node's number for it: a store closed for an earlier one that was given up
    /// does not count for it.
    seq: u64,
    /// The receiver.
    to: NodeId,
    /// Given up at this time if the reservation has not moved.
    until: Millis,
    /// The user closed the metadata store (or keeps none).
    store_closed: bool,
    /// The receiver's initiator port and incarnation, from its [`Msg::Accept`].
    accepted: Option<(String, u32)>,
    /// REGISTER AND MOVE is out.
    moving: bool,
    next_offer: Millis,
}

impl Node {
    /// Sets how the target knows this node's session (the port a hand-over to this
    /// node moves the reservation to); a node without one cannot receive the role.
    pub fn set_reservation_port(&mut self, port: Option<String>) {
        // A port that does not fit an `Accept` is no port: this node cannot receive.
        self.port = port.filter(|p| !p.is_empty() && p.len() <= crate::wire::MAX_PORT_LEN);
    }

    /// Whether this node's user keeps a metadata store that a hand-over must wait to
    /// be closed ([`Node::store_closed`]).
    pub fn set_store_keeper(&mut self, keeps: bool) {
        self.store_keeper = keeps;
    }

    /// Asks for a planned hand-over of the coordinator role to `to` (`None`: any other
    /// live node). On the coordinator it starts here; elsewhere the request goes to
    /// the coordinator. The error says why it cannot be asked now.
    pub fn hand_over(
        &mut self,
        now: Millis,
        to: Option<NodeId>,
    ) -> Result<Vec<super::Action>, String> {
        if let Some(t) = to
            && t != self.id
            && !self.peers.contains(&t)
        {
            return Err(format!("node {t} is not a member of the cluster"));
        }
        match self.phase {
            Phase::Coordinator => self.begin_hand_over(now, to)?,
            Phase::Follower(c) => self.send(
                c,
                Msg::MoveTo {
                    epoch: self.epoch,
                    to: to.unwrap_or(0),
                },
            ),
            _ => {
                return Err(format!(
                    "the volume has no serving coordinator now (this node is {}): try again in a few seconds",
                    self.role()
                ));
            }
        }
        self.pump_disk();
        Ok(std::mem::take(&mut self.out))
    }

    /// The user closed the metadata store of `epoch` for hand-over `seq` (it saw the
    /// hand-over in the status, then closed the store): the reservation may move.
    pub fn store_closed(&mut self, epoch: Epoch, seq: u64) {
        if epoch == self.epoch
            && let Some(h) = self.coord.as_mut().and_then(|c| c.handing_over.as_mut())
            && h.seq == seq
        {
            h.store_closed = true;
        }
    }

    /// While handing over: the epoch whose metadata store the user must close, and
    /// the hand-over's number.
    pub fn store_to_close(&self) -> Option<(Epoch, u64)> {
        let h = self.coord.as_ref()?.handing_over.as_ref()?;
        (!h.store_closed).then_some((self.epoch, h.seq))
    }

    /// The receiver and number of a hand-over under way.
    pub fn handing_over_to(&self) -> Option<(NodeId, u64)> {
        let h = self.coord.as_ref()?.handing_over.as_ref()?;
        Some((h.to, h.seq))
    }

    /// Why the last hand-over this node began was given up, with its number.
    pub fn hand_over_failure(&self) -> Option<&(u64, String)> {
        self.hand_over_failure_note.as_ref()
    }

    /// A live member to give the role to: `to`, or the first live peer.
    fn receiver(&self, now: Millis, to: Option<NodeId>) -> Result<NodeId, String> {
        let c = self.coord.as_ref().expect("coordinating");
        let live = |n: NodeId| {
            now.saturating_sub(self.heard(n)) < self.timing.fence
                && !c.fencing.contains(&n)
                && self.peer_incarnation.contains_key(&n)
                && c.fenced
                    .get(&n)
                    .is_none_or(|i| self.peer_incarnation.get(&n).is_some_and(|k| k > i))
        };
        match to {
            Some(t) if live(t) => Ok(t),
            Some(t) => Err(format!(
                "node {t} is not up in the cluster (the coordinator has not heard from it)"
            )),
            None => self
                .peers
                .iter()
                .copied()
                .find(|p| live(*p))
                .ok_or_else(|| "no other node is up to take the role".to_string()),
        }
    }

    fn begin_hand_over(&mut self, now: Millis, to: Option<NodeId>) -> Result<(), String> {
        if to == Some(self.id) {
            return Ok(());
        }
        if let Some((t, _)) = self.handing_over_to() {
            return Err(format!("a hand-over to node {t} is under way"));
        }
        let to = self.receiver(now, to)?;
        tracing::info!(
            node = self.id,
            to,
            epoch = self.epoch,
            "handing the coordinator role over"
        );
        let keeper = self.store_keeper;
        self.hand_over_seq += 1;
        let seq = self.hand_over_seq;
        let c = self.coord.as_mut().expect("coordinating");
        c.handing_over = Some(HandOver {
            seq,
            to,
            // Closing the store waits for the calls running on it, and commits.
            until: now + 4 * self.timing.fence,
            store_closed: !keeper,
            accepted: None,
            moving: false,
            next_offer: now,
        });
        self.hand_over_tick(now);
        Ok(())
    }

    /// Moves the hand-over on: offers the role until accepted, moves the reservation
    /// once the store is closed, or gives up.
    pub(super) fn hand_over_tick(&mut self, now: Millis) {
        let Some(h) = self.coord.as_ref().and_then(|c| c.handing_over.clone()) else {
            return;
        };
        if h.moving {
            return;
        }
        let gone = self.receiver(now, Some(h.to)).is_err()
            || h.accepted
                .as_ref()
                .is_some_and(|(_, i)| self.peer_incarnation.get(&h.to) != Some(i));
        if now >= h.until || gone {
            self.end_hand_over(if gone {
                "the receiver went away"
            } else {
                "it did not complete in time"
            });
            return;
        }
        let fresh = self.disk_fresh(now);
        let c = self.coord.as_mut().expect("coordinating");
        let ho = c.handing_over.as_mut().expect("handing over");
        match &h.accepted {
            Some((port, incarnation)) if h.store_closed && fresh => {
                ho.moving = true;
                let op = DiskOp::Move {
                    key: self.key(),
                    to_key: node_key(h.to, *incarnation),
                    to_port: port.clone(),
                };
                self.queue_disk(op, Purpose::Move(h.to));
            }
            None if now >= h.next_offer => {
                ho.next_offer = now + self.timing.heartbeat;
                self.send(h.to, Msg::Offer { epoch: self.epoch });
            }
            _ => {}
        }
    }

    /// Gives the hand-over up: the coordinator serves again.
    pub(super) fn end_hand_over(&mut self, why: &str) {
        if let Some(c) = self.coord.as_mut()
            && let Some(h) = c.handing_over.take()
        {
            tracing::warn!(
                node = self.id,
                to = h.to,
                why,
                "hand-over given up; serving again"
            );
            self.hand_over_failure_note = Some((
                h.seq,
                format!("the hand-over to node {} was given up: {why}", h.to),
            ));
        }
    }

    /// The reservation is `to`'s: follow it, and tell it.
    pub(super) fn handed_over(&mut self, now: Millis, to: NodeId) {
        tracing::info!(
            node = self.id,
            to,
            epoch = self.epoch,
            "coordinator role handed over"
        );
        // This node's own leases hold as they did while it coordinated, until the
        // receiver adopts them from its report.
        self.lease_valid_until = self.leases_valid_until();
        self.coord = None;
        self.alive_check = None;
        // A follower fences nobody: fencing the coordinator queued (a member silent
        // or holding a recalled lease, perhaps the receiver) is the receiver's now.
        self.disk_queue.retain(|(_, p)| {
            !matches!(
                p,
                Purpose::FindKeysOf(..)
                    | Purpose::FenceMember(..)
                    | Purpose::AfterFenceConflict(..)
            )
        });
        self.handed_to = Some((to, self.epoch, now + self.timing.heartbeat));
        self.phase = Phase::Joining;
        self.follow(now, to);
        self.send(to, Msg::Moved { epoch: self.epoch });
    }

    /// After a hand-over: tells the receiver again, every heartbeat, until it speaks
    /// as coordinator of a newer epoch (a lost [`Msg::Moved`] would otherwise leave
    /// both waiting for the other).
    pub(super) fn tell_receiver(&mut self, now: Millis, following: NodeId) {
        let Some((to, epoch, again)) = self.handed_to else {
            return;
        };
        if to != following || epoch != self.epoch {
            self.handed_to = None;
        } else if now >= again {
            self.handed_to = Some((to, epoch, now + self.timing.heartbeat));
            self.send(to, Msg::Moved { epoch });
        }
    }

    /// Messages of a hand-over.
    pub(super) fn on_hand_over_message(
        &mut self,
        now: Millis,
        from: NodeId,
        incarnation: u32,
        msg: Msg,
    ) {
        match msg {
            Msg::MoveTo { epoch, to }
                if epoch == self.epoch && self.phase == Phase::Coordinator =>
            {
                let to = (to != 0).then_some(to);
                if let Err(e) = self.begin_hand_over(now, to) {
                    tracing::warn!(node = self.id, from, error = %e, "hand-over not started");
                    self.hand_over_seq += 1;
                    self.hand_over_failure_note = Some((
                        self.hand_over_seq,
                        format!("node {from} asked for a hand-over, refused: {e}"),
                    ));
                }
            }
            Msg::Offer { epoch } if epoch == self.epoch && self.phase == Phase::Follower(from) => {
                if let Some(port) = self.port.clone() {
                    self.send(from, Msg::Accept { epoch, port });
                }
            }
            Msg::Accept { epoch, port } if epoch == self.epoch => {
                if let Some(h) = self.coord.as_mut().and_then(|c| c.handing_over.as_mut())
                    && h.to == from
                    && !h.moving
                {
                    h.accepted = Some((port, incarnation));
                    self.hand_over_tick(now);
                }
            }
            Msg::Moved { epoch } if epoch == self.epoch && self.phase == Phase::Follower(from) => {
                tracing::info!(
                    node = self.id,
                    from,
                    epoch,
                    "taking the coordinator role handed over"
                );
                self.phase = Phase::TakingOver;
                self.out.push(super::Action::Role(super::Role::TakingOver));
                let key = self.key();
                self.queue_disk(DiskOp::Preempt { key, victim: key }, Purpose::SetType);
            }
            _ => {}
        }
    }
}
