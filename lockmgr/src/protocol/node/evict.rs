//! Evicting a node from the cluster (`csvctl node evict`): the coordinator fences every
//! key the node has registered, now and later, frees what it held, and answers
//! whatever the node says with [`Msg::Evicted`], on which the node drops everything
//! and stops (it does not rejoin until its daemon starts again). The coordinator tells
//! the other nodes too, so that a later coordinator refuses the node as well.
//!
//! A node cannot be evicted while it coordinates a volume: its role is moved off it
//! first (`csvctl node drain`).

use super::{Node, Phase};
use crate::protocol::types::{Millis, Msg, NodeId, Role};

impl Node {
    /// Evicts `node`: on the coordinator at once, elsewhere by asking the coordinator.
    /// The error says why it cannot be done now.
    pub fn evict(&mut self, now: Millis, node: NodeId) -> Result<Vec<super::Action>, String> {
        if node == self.id {
            return Err(format!(
                "node {node} cannot evict itself: ask the daemon of another node"
            ));
        }
        if !self.peers.contains(&node) {
            return Err(format!("node {node} is not a member of the cluster"));
        }
        match self.phase {
            Phase::Coordinator => self.evict_member(node),
            Phase::Follower(c) if c == node => {
                return Err(format!(
                    "node {node} coordinates the volume: move the role off it first (csvctl node drain)"
                ));
            }
            Phase::Follower(c) => self.send(
                c,
                Msg::Evict {
                    epoch: self.epoch,
                    node,
                },
            ),
            _ => {
                return Err(format!(
                    "the volume has no serving coordinator now (this node is {}): try again in a few seconds",
                    self.role()
                ));
            }
        }
        let _ = now;
        self.pump_disk();
        Ok(std::mem::take(&mut self.out))
    }

    /// The nodes evicted, as far as this node knows.
    pub fn evicted(&self) -> Vec<NodeId> {
        self.evicted.iter().copied().collect()
    }

    /// Whether `node` was evicted (its messages are answered with [`Msg::Evicted`]).
    pub(super) fn is_evicted(&self, node: NodeId) -> bool {
        self.evicted.contains(&node)
    }

    fn evict_member(&mut self, node: NodeId) {
        if self.evicted.insert(node) {
            tracing::warn!(node = self.id, member = node, "evicting a member");
        }
        let epoch = self.epoch;
        for p in self.peers.clone() {
            if p != node {
                self.send(p, Msg::Evict { epoch, node });
            }
        }
        self.send(node, Msg::Evicted { epoch });
        if let Some(c) = self.coord.as_mut() {
            c.fencing.remove(&node);
        }
        self.fence_member_upto(node, u32::MAX);
    }

    pub(super) fn on_evict_message(&mut self, now: Millis, from: NodeId, msg: Msg) {
        match msg {
            Msg::Evict { epoch, node } if node != self.id && node != from => {
                if self.phase == Phase::Coordinator && epoch == self.epoch {
                    self.evict_member(node);
                } else if self.phase == Phase::Follower(from) {
                    // Said by the coordinator: kept for a later coordinator.
                    self.evicted.insert(node);
                }
            }
            Msg::Evicted { .. } => {
                tracing::warn!(
                    node = self.id,
                    by = from,
                    "evicted from the cluster: stopping until the daemon starts again"
                );
                self.drop_everything(now);
                self.phase = Phase::Evicted;
                self.out.push(super::Action::Role(Role::Evicted));
            }
            _ => {}
        }
    }
}
