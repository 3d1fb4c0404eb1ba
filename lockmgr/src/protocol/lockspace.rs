//! The lockspace of a volume as its coordinator keeps it: who holds each resource in
//! which mode, who waits, and which recalls are out. Pure bookkeeping: the coordinator
//! ([`super::node`]) turns what it returns into messages.

use std::collections::{BTreeMap, VecDeque};

use super::types::{Millis, Mode, NodeId, ResourceId};

/// A request waiting in a resource's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    /// The requester.
    pub node: NodeId,
    /// Its request number.
    pub req: u64,
    /// The mode wanted.
    pub mode: Mode,
    /// The requester's clock when it asked (the lease runs from there).
    pub sent: Millis,
}

/// What the lockspace decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Grant `waiter` the resource.
    Grant(ResourceId, Waiter),
    /// Ask `node` to give back the lease it holds by request `req`.
    Recall(ResourceId, NodeId, u64),
}

#[derive(Debug, Default, Clone)]
struct Entry {
    /// Each holder's mode and the request it holds by: a release names the request,
    /// so that a late release of an earlier lease cannot free a newer one.
    holders: BTreeMap<NodeId, (Mode, u64)>,
    queue: VecDeque<Waiter>,
}

/// The table of one epoch.
#[derive(Debug, Default, Clone)]
pub struct Lockspace {
    entries: BTreeMap<ResourceId, Entry>,
    /// Outstanding recalls and their deadlines.
    recalls: BTreeMap<(ResourceId, NodeId), Millis>,
}

impl Lockspace {
    /// Records a lease a node reported holding after a takeover. Reports that conflict
    /// with ones already recorded cannot come from a sound lockspace; the later one is
    /// queued instead, as a request.
    pub fn adopt(&mut self, node: NodeId, res: ResourceId, mode: Mode, req: u64, sent: Millis) {
        let e = self.entries.entry(res).or_default();
        if e.holders
            .iter()
            .all(|(n, (m, _))| *n == node || !m.conflicts(mode))
        {
            e.holders.insert(node, (mode, req));
        } else {
            e.queue.push_back(Waiter {
                node,
                req,
                mode,
                sent,
            });
        }
    }

    /// A request: granted at once when nothing conflicts and nobody waits ahead of it;
    /// else queued, with recalls to the conflicting holders.
    pub fn acquire(
        &mut self,
        res: ResourceId,
        w: Waiter,
        now: Millis,
        recall: Millis,
    ) -> Vec<Decision> {
        let e = self.entries.entry(res).or_default();
        match e.holders.get(&w.node) {
            // The same request again (its grant was lost, or a takeover came between):
            // grant it again.
            Some((_, req)) if *req == w.req => return vec![Decision::Grant(res, w)],
            // A late copy of an older request (request numbers grow with every request
            // of a node, across its lives): the holder's newer lease stays.
            Some((_, req)) if *req > w.req => return Vec::new(),
            // A new request of a holder: it gave the old lease up (its release may
            // still be on the way).
            Some(_) => {
                e.holders.remove(&w.node);
                self.recalls.remove(&(res, w.node));
            }
            None => {}
        }
        // Already waiting, or a late copy of a request older than one waiting.
        if e.queue.iter().any(|q| q.node == w.node && q.req >= w.req) {
            return Vec::new();
        }
        e.queue.push_back(w);
        self.progress(res, now, recall)
    }

    /// The lease `node` holds by request `req` given back (a release of any other
    /// request is stale and changes nothing).
    pub fn release(
        &mut self,
        res: ResourceId,
        node: NodeId,
        req: u64,
        now: Millis,
        recall: Millis,
    ) -> Vec<Decision> {
        let Some(e) = self.entries.get_mut(&res) else {
            return Vec::new();
        };
        if e.holders.get(&node).is_none_or(|(_, r)| *r != req) {
            return Vec::new();
        }
        e.holders.remove(&node);
        self.recalls.remove(&(res, node));
        self.progress(res, now, recall)
    }

    /// Removes everything of a node that is fenced (and whose leases have run out).
    pub fn drop_node(&mut self, node: NodeId, now: Millis, recall: Millis) -> Vec<Decision> {
        let mut touched = Vec::new();
        for (res, e) in self.entries.iter_mut() {
            let before = (e.holders.len(), e.queue.len());
            e.holders.remove(&node);
            e.queue.retain(|w| w.node != node);
            if before != (e.holders.len(), e.queue.len()) {
                touched.push(*res);
            }
        }
        self.recalls.retain(|(_, n), _| *n != node);
        let mut out = Vec::new();
        for res in touched {
            out.extend(self.progress(res, now, recall));
        }
        out
    }

    /// The holders whose recall deadline has passed.
    pub fn overdue(&self, now: Millis) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .recalls
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|((_, n), _)| *n)
            .collect();
        v.dedup();
        v
    }

    /// What `node` holds.
    pub fn held_by(&self, node: NodeId) -> Vec<(ResourceId, Mode)> {
        self.entries
            .iter()
            .filter_map(|(r, e)| e.holders.get(&node).map(|(m, _)| (*r, *m)))
            .collect()
    }

    /// Every (resource, node, mode) held, for checks.
    pub fn holdings(&self) -> Vec<(ResourceId, NodeId, Mode)> {
        self.entries
            .iter()
            .flat_map(|(r, e)| e.holders.iter().map(move |(n, (m, _))| (*r, *n, *m)))
            .collect()
    }

    /// Grants what the queue's head allows and recalls what blocks it.
    fn progress(&mut self, res: ResourceId, now: Millis, recall: Millis) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some(e) = self.entries.get_mut(&res) else {
            return out;
        };
        while let Some(w) = e.queue.front().copied() {
            let blockers: Vec<(NodeId, u64)> = e
                .holders
                .iter()
                .filter(|(n, (m, _))| **n != w.node && m.conflicts(w.mode))
                .map(|(n, (_, r))| (*n, *r))
                .collect();
            if blockers.is_empty() {
                e.queue.pop_front();
                e.holders.insert(w.node, (w.mode, w.req));
                out.push(Decision::Grant(res, w));
                continue;
            }
            for (b, req) in blockers {
                if let std::collections::btree_map::Entry::Vacant(v) = self.recalls.entry((res, b))
                {
                    v.insert(now + recall);
                    out.push(Decision::Recall(res, b, req));
                }
            }
            break;
        }
        if e.holders.is_empty() && e.queue.is_empty() {
            self.entries.remove(&res);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(node: NodeId, req: u64, mode: Mode) -> Waiter {
        Waiter {
            node,
            req,
            mode,
            sent: 0,
        }
    }

    #[test]
    fn shared_leases_share_and_exclusive_waits_with_recalls() {
        let mut l = Lockspace::default();
        assert_eq!(l.acquire(1, w(1, 1, Mode::Shared), 0, 10).len(), 1);
        assert_eq!(l.acquire(1, w(2, 1, Mode::Shared), 0, 10).len(), 1);
        let d = l.acquire(1, w(3, 1, Mode::Exclusive), 0, 10);
        assert_eq!(
            d,
            vec![Decision::Recall(1, 1, 1), Decision::Recall(1, 2, 1)]
        );
        assert!(l.overdue(9).is_empty());
        assert_eq!(l.overdue(10), vec![1, 2]);
        // A stale release (of another request) frees nothing.
        assert!(l.release(1, 1, 99, 1, 10).is_empty());
        assert!(l.release(1, 1, 1, 1, 10).is_empty());
        let d = l.release(1, 2, 1, 1, 10);
        assert_eq!(d, vec![Decision::Grant(1, w(3, 1, Mode::Exclusive))]);
        assert_eq!(l.holdings(), vec![(1, 3, Mode::Exclusive)]);
    }

    #[test]
    fn a_dropped_node_lets_the_queue_go_on() {
        let mut l = Lockspace::default();
        l.acquire(5, w(1, 1, Mode::Exclusive), 0, 10);
        l.acquire(5, w(2, 7, Mode::Exclusive), 0, 10);
        let d = l.drop_node(1, 20, 10);
        assert_eq!(d, vec![Decision::Grant(5, w(2, 7, Mode::Exclusive))]);
        assert!(l.overdue(100).is_empty());
    }

    #[test]
    fn adopted_conflicts_are_queued() {
        let mut l = Lockspace::default();
        l.adopt(1, 9, Mode::Exclusive, 1, 0);
        l.adopt(2, 9, Mode::Exclusive, 1, 0);
        assert_eq!(l.holdings(), vec![(9, 1, Mode::Exclusive)]);
        assert_eq!(l.held_by(1), vec![(9, Mode::Exclusive)]);
    }
}
