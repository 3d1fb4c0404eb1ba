//! One volume of a cluster node: its metadata reached through whichever node
//! coordinates it, and, while this node coordinates, its store opened here and served
//! to the others.
//!
//! - Following the role: while the lock manager says this node serves the volume at
//!   some epoch, the store is open on the node's own path to the LUN (the same
//!   iSCSI session that holds the node's reservation key, so a fenced coordinator can
//!   no longer write); when the role goes, the store is dropped unopened-again until
//!   the role comes back (a new coordinator reads the store afresh from the LUN).
//!   Dropping it waits for the calls still running on it and commits everything, then
//!   tells the lock manager, so that a planned hand-over moves the role only once the
//!   store is closed.
//! - Calls: on the coordinator, carried out on the store in its group commit; on the
//!   others, sent to the coordinator. While there is no serving coordinator (an
//!   election, a takeover) calls wait and go again: applications see latency, not
//!   errors, up to [`PATIENCE`].
//! - Serving: what the coordinator's answer lets another node see is durable, except
//!   that node's own namespace changes, which it acknowledges early: the node keeps
//!   them until they are durable and replays them to the next coordinator, which
//!   serves nobody else until it has ([`super::unconfirmed`]).
//! - Leases: every answer, its own included, grants the asking node a lease on the
//!   attributes and entries it names, and a change recalls the other holders' leases
//!   before it is answered ([`super::leases`], [`super::recall`]); every node keeps
//!   entries and attributes under them, and lets its kernel keep attributes
//!   ([`super::lease_cache`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blockdev::BlockDevice;
use lockmgr::shell::{IoReport, Shell, VolumeHandle};
use lockmgr::transport::FramedStream;
use metadata::{MetaError, MetaResult, OpenOptions, Volume};
use parking_lot::RwLock;
use redirect_io::PathMonitor;
use tracing::{info, warn};

use super::lease_cache::{LAYOUT_AHEAD, LeaseCache, Name};
use super::leases::{self, LeaseTable, Recall};
use super::recall::Recaller;
use super::stream_pool::StreamPool;
use super::unconfirmed::{Change, MAX_UNCONFIRMED, UnconfirmedLog};
use super::wire::{
    MAX_BATCH, MAX_FRAME, METADATA_SERVICE, MetaAnswers, MetaBatch, MetaRequest, MetaResponse,
    Outcome, RECALL_SERVICE, Unconfirmed, frame_of,
};
use crate::locks::{Done, RangeLocks};
use crate::meta::local::{Early, ForNode};
use crate::meta::{MetaCall, MetaReply, MetaService, local};
use fuser::Errno;
use lockmgr::protocol::{RangeOp, Timing};
use metadata::Inode;

/// How long a call waits for a serving coordinator before it fails with EIO.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// How long one exchange with the coordinator may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a call waits between attempts.
const RETRY: Duration = Duration::from_millis(50);

/// How long a metadata lease lasts unless recalled. Long: a node keeps what it looked
/// up across a whole job; a holder that stops answering is waited for only until its
/// lock manager lease has surely run out (see [`super::recall`]).
pub const METADATA_LEASE: Duration = Duration::from_secs(60);

/// How long a new coordinator serves only the nodes that replay unconfirmed changes
/// (they take milliseconds; a node that has not finished by then has its replay
/// refused, except for changes the store already has).
const REPLAY_WINDOW: Duration = Duration::from_secs(5);

/// How long a node that keeps changes of an earlier epoch waits for the new
/// coordinator's recall before it replays them unasked.
const RECALL_GRACE: Duration = Duration::from_secs(2);

/// What came of a call carried out on the store.
#[derive(Debug)]
pub enum Answer {
    /// Done: the answer; `leased`: the asking node holds leases on what it names, and
    /// on `attrs`.
    Reply {
        /// The answer.
        reply: MetaReply,
        /// With leases.
        leased: bool,
        /// More attributes under lease (a change's directories).
        attrs: Vec<(u64, Inode)>,
    },
    /// A lookup found no such name; `leased`: the asking node holds a lease on its
    /// absence.
    Absent {
        /// The error to return.
        error: MetaError,
        /// With a lease.
        leased: bool,
    },
}

/// While a new coordinator serves only the nodes replaying unconfirmed changes.
struct ReplayWindow {
    epoch: u64,
    waiting: Vec<u8>,
    until: Instant,
}

/// Whom a coordinator serves now.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Admit {
    /// Not this caller, yet.
    No,
    /// Everyone.
    All,
    /// A node replaying within the window.
    Replayer,
}

/// Counters for status.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls this node sent to the coordinator.
    pub remote_calls: AtomicU64,
    /// Calls carried out on this node's store (as the coordinator).
    pub local_calls: AtomicU64,
    /// Calls served for other nodes.
    pub served_calls: AtomicU64,
    /// Calls answered from what this node keeps under lease.
    pub cached_calls: AtomicU64,
}

/// One volume of this node.
pub struct ClusterVolume {
    label: String,
    me: u8,
    dev: Arc<dyn BlockDevice>,
    shell: Arc<Shell>,
    handle: VolumeHandle,
    rt: tokio::runtime::Handle,
    /// The store and the epoch it was opened for, while this node serves.
    store: RwLock<Option<(u64, Arc<Volume>)>>,
    /// Idle request streams to coordinators.
    streams: StreamPool,
    /// The leases granted while this node coordinates.
    leases: LeaseTable,
    /// Lease recalls, both ways, and this node's kernel caches.
    recaller: Arc<Recaller>,
    next_id: AtomicU64,
    /// This node's changes acknowledged early and not yet durable.
    pub unconfirmed: Arc<UnconfirmedLog>,
    /// While this node, a new coordinator, serves only replaying nodes.
    window: parking_lot::Mutex<Option<ReplayWindow>>,
    /// While this node replays its unconfirmed changes to a new coordinator: its
    /// other calls wait, so that none overtakes the replay.
    replaying: std::sync::atomic::AtomicBool,
    /// Since when this node keeps changes of an earlier epoch, unreplayed.
    stale_since: parking_lot::Mutex<Option<Instant>>,
    /// This volume, for tasks a call starts.
    this: std::sync::OnceLock<std::sync::Weak<ClusterVolume>>,
    /// How long after asking for it this node uses a layout for I/O on the LUN.
    pub layout_use: Duration,
    /// How long the coordinator keeps blocks freed after it handed out a layout.
    layout_life: Duration,
    /// Counters.
    pub counters: Counters,
}

impl ClusterVolume {
    /// Starts following the role of `label` and serving its metadata while this node
    /// coordinates it. Must run inside the node's runtime.
    /// `timing` sets how long a layout may be used (a lease) and how long the
    /// coordinator keeps freed blocks from reuse after handing one out (a lease and
    /// the drain interval).
    pub fn start(
        shell: Arc<Shell>,
        label: &str,
        dev: Arc<dyn BlockDevice>,
        timing: &Timing,
    ) -> anyhow::Result<Arc<ClusterVolume>> {
        let handle = shell
            .volume(label)
            .ok_or_else(|| anyhow::anyhow!("volume {label} has no lock manager"))?
            .clone();
        let cache = Arc::new(LeaseCache::new(
            METADATA_LEASE,
            Duration::from_millis(timing.lease),
        ));
        // A holder that cut off drops what it keeps when its lock manager lease
        // runs out: a lease after its last renewal, which is before the recall.
        let give_up = Duration::from_millis(2 * timing.lease + timing.heartbeat);
        let v = Arc::new(ClusterVolume {
            label: label.to_string(),
            me: shell.id(),
            dev,
            shell: shell.clone(),
            handle,
            rt: tokio::runtime::Handle::current(),
            store: RwLock::new(None),
            streams: StreamPool::new(label, METADATA_SERVICE),
            leases: LeaseTable::new(METADATA_LEASE),
            recaller: Arc::new(Recaller::new(shell.clone(), label, cache, give_up)),
            // Ids grow over the node's life and past those of its earlier lives
            // (the coordinator keeps answers by id: see metadata::requests).
            next_id: AtomicU64::new(first_request_id()),
            unconfirmed: Arc::default(),
            window: parking_lot::Mutex::new(None),
            replaying: std::sync::atomic::AtomicBool::new(false),
            stale_since: parking_lot::Mutex::new(None),
            this: std::sync::OnceLock::new(),
            layout_use: Duration::from_millis(timing.lease),
            layout_life: Duration::from_millis(timing.lease + timing.drain),
            counters: Counters::default(),
        });
        let server = v.clone();
        shell.services().register(
            label,
            METADATA_SERVICE,
            Arc::new(move |from, stream| {
                tokio::spawn(server.clone().serve(from, stream));
            }),
        );
        let _ = v.this.set(Arc::downgrade(&v));
        let replayer = Arc::downgrade(&v);
        v.recaller.set_on_takeover(Arc::new(move |to, epoch| {
            let Some(v) = replayer.upgrade() else {
                return false;
            };
            v.start_replay(to, epoch)
        }));
        let holder = v.recaller.clone();
        shell.services().register(
            label,
            RECALL_SERVICE,
            Arc::new(move |from, stream| {
                tokio::spawn(holder.clone().serve(from, stream));
            }),
        );
        v.handle.keep_store();
        tokio::spawn(v.clone().follow_role());
        tokio::spawn(v.clone().drop_when_out_of_touch());
        Ok(v)
    }

    /// Reports this volume's I/O in the node's status: `path`, how the node reaches
    /// the LUN and the bytes it moved each way, and the metadata calls.
    pub fn report_io(self: &Arc<Self>, path: Arc<PathMonitor>) {
        let me = Arc::downgrade(self);
        self.shell.reporters().set(
            &self.label,
            Arc::new(move || {
                let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let calls = me.upgrade();
                let stats = calls
                    .as_ref()
                    .and_then(|v| v.store.read().as_ref().map(|(_, vol)| vol.commit_stats()))
                    .unwrap_or_default();
                let p = path.report();
                IoReport {
                    commits: stats.commits,
                    committed_changes: stats.jobs,
                    state: p.state.to_string(),
                    reason: p.reason.map(|r| r.to_string()),
                    bytes_direct: p.bytes_direct,
                    bytes_redirected: p.bytes_redirected,
                    metadata_calls: calls.as_ref().map_or(0, |v| c(&v.counters.remote_calls)),
                    local_calls: calls.as_ref().map_or(0, |v| c(&v.counters.local_calls)),
                    served_calls: calls.as_ref().map_or(0, |v| c(&v.counters.served_calls)),
                    unconfirmed: calls.as_ref().map_or(0, |v| v.unconfirmed.len() as u64),
                    replayed: calls.as_ref().map_or(0, |v| c(&v.unconfirmed.replayed)),
                    replay_diverged: calls.as_ref().map_or(0, |v| c(&v.unconfirmed.diverged)),
                }
            }),
        );
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What this node keeps of the volume under leases.
    pub fn lease_cache(&self) -> Arc<LeaseCache> {
        self.recaller.cache.clone()
    }

    /// Drops everything kept under lease whenever this node may have lost touch with
    /// the coordinator: its lock manager lease ran out, or the coordinator or the
    /// epoch changed (the new coordinator knows nothing of the old one's leases).
    async fn drop_when_out_of_touch(self: Arc<Self>) {
        let mut watch = self.handle.watch();
        let mut last = None;
        loop {
            let (now, in_touch) = {
                let st = watch.borrow_and_update();
                ((st.coordinator, st.epoch), st.coordinator_serving)
            };
            if !in_touch || last != Some(now) {
                self.recaller.cache.drop_all();
            }
            last = Some(now);
            if watch.changed().await.is_err() {
                self.recaller.cache.drop_all();
                return;
            }
        }
    }

    /// Carries out `call` for `node` on the store with `exec`, keeping the lease
    /// table: whether the answer comes with leases (and with the attributes of the
    /// directories a change altered, under lease too), and the other nodes' leases the
    /// change made stale, to recall before it is answered.
    fn carry_out(
        &self,
        vol: &Volume,
        node: u8,
        call: MetaCall,
        exec: impl FnOnce(&Volume, MetaCall) -> MetaResult<(MetaReply, Option<Early>)>,
    ) -> MetaResult<(Answer, Option<Early>, Vec<Recall>)> {
        let before = self.leases.snapshot();
        let moved: Vec<u64> = leases::moves(&call)
            .into_iter()
            .filter_map(|(parent, name)| {
                let lookup = MetaCall::Lookup {
                    parent,
                    name: name.to_vec(),
                };
                match local::execute(vol, lookup) {
                    Ok(MetaReply::Entry(ino, _)) => Some(ino),
                    _ => None,
                }
            })
            .collect();
        let (reply, early) = match exec(vol, call.clone()) {
            Ok(r) => r,
            Err(error) if error.errno() == libc::ENOENT => {
                let MetaCall::Lookup { parent, name } = &call else {
                    return Err(error);
                };
                let key = super::wire::LeaseKey::Entry(*parent, name.clone());
                let leased = self.leases.grant(node, &before, vec![key]);
                return Ok((Answer::Absent { error, leased }, None, Vec::new()));
            }
            Err(e) => return Err(e),
        };
        let mut granted = leases::granted_by(&call, &reply);
        let mut attrs = Vec::new();
        if call.changes() {
            for dir in leases::parents_of(&call) {
                if let Ok(MetaReply::Inode(i)) = local::execute(vol, MetaCall::Inode { ino: dir }) {
                    attrs.push((dir, i));
                    granted.push(super::wire::LeaseKey::Attr(dir));
                }
            }
        }
        let leased = !granted.is_empty() && self.leases.grant(node, &before, granted);
        if !leased {
            attrs.clear();
        }
        let recalls = if call.changes() {
            self.leases
                .changed(node, &leases::changed_by(&call, &reply, &moved))
        } else {
            Vec::new()
        };
        Ok((
            Answer::Reply {
                reply,
                leased,
                attrs,
            },
            early,
            recalls,
        ))
    }

    /// The store, if this node serves the volume now, to everyone (`replay_from`
    /// `None`) or to a node replaying unconfirmed changes; and whom it serves now.
    fn serving_store(&self, replay_from: Option<u8>) -> Option<(u64, Arc<Volume>, Admit)> {
        let st = self.handle.status();
        let (epoch, vol) = match &*self.store.read() {
            Some((epoch, vol)) if st.serving && *epoch == st.epoch => (*epoch, vol.clone()),
            _ => return None,
        };
        match self.admits(epoch, replay_from) {
            Admit::No => None,
            admit => Some((epoch, vol, admit)),
        }
    }

    /// Whom the replay window of `epoch` lets in; closes it once it is over.
    fn admits(&self, epoch: u64, replay_from: Option<u8>) -> Admit {
        let mut w = self.window.lock();
        let Some(win) = &mut *w else {
            return Admit::All;
        };
        if win.epoch == epoch && !win.waiting.is_empty() && Instant::now() < win.until {
            return match replay_from {
                Some(n) if win.waiting.contains(&n) => Admit::Replayer,
                _ => Admit::No,
            };
        }
        if win.epoch == epoch && !win.waiting.is_empty() {
            warn!(
                volume = self.label,
                nodes = ?win.waiting,
                "serving everyone before these nodes finished replaying the changes the previous coordinator acknowledged; the rest of their replay is refused"
            );
        }
        *w = None;
        Admit::All
    }

    /// Node `node` has replayed its unconfirmed changes.
    fn replay_ended(&self, epoch: u64, node: u8) {
        if let Some(win) = &mut *self.window.lock()
            && win.epoch == epoch
        {
            win.waiting.retain(|&n| n != node);
        }
    }

    /// Opens the store when this node starts serving, drops it when it stops.
    async fn follow_role(self: Arc<Self>) {
        let mut watch = self.handle.watch();
        loop {
            let st = watch.borrow_and_update().clone();
            let held = self.store.read().as_ref().map(|(e, _)| *e);
            if st.serving && held != Some(st.epoch) {
                self.drop_store("a new epoch");
                // Nobody may keep what an earlier coordinator leased: every node drops
                // it while the store opens.
                self.leases.clear();
                let recaller = self.recaller.clone();
                let epoch = st.epoch;
                // Fenced nodes (the coordinator that died among them) are not asked:
                // they can neither answer nor replay.
                let fenced: Vec<u8> = st.refused.iter().map(|&(n, _)| n).collect();
                // The other nodes drop what they keep, and say whether they replay
                // changes the previous coordinator acknowledged early.
                let dropped =
                    tokio::spawn(async move { recaller.recall_everything(epoch, &fenced).await });
                let dev = self.dev.clone();
                let opts = OpenOptions {
                    keep_orphans: true,
                    layout_life: Some(self.layout_life),
                    ..OpenOptions::default()
                };
                match tokio::task::spawn_blocking(move || Volume::open(dev, &opts)).await {
                    Ok(Ok(vol)) => {
                        info!(
                            volume = self.label,
                            epoch = st.epoch,
                            "serving the volume's metadata"
                        );
                        let vol = Arc::new(vol);
                        let own = self.unconfirmed.take();
                        if !own.is_empty() {
                            let me = self.clone();
                            let v = vol.clone();
                            let _ =
                                tokio::task::spawn_blocking(move || me.replay_here(&v, own)).await;
                        }
                        let waiting = dropped.await.unwrap_or_default();
                        if !waiting.is_empty() {
                            info!(volume = self.label, nodes = ?waiting, "serving first the nodes that replay changes the previous coordinator acknowledged");
                        }
                        *self.window.lock() = Some(ReplayWindow {
                            epoch: st.epoch,
                            waiting,
                            until: Instant::now() + REPLAY_WINDOW,
                        });
                        *self.store.write() = Some((st.epoch, vol));
                    }
                    Ok(Err(e)) => {
                        warn!(volume = self.label, error = %e, "cannot open the metadata store; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => warn!(volume = self.label, error = %e, "store opening task failed"),
                }
            } else if !st.serving {
                if held.is_some() {
                    self.quiesce_store("the role went").await;
                }
                if let Some((_, seq)) = st.handing_over {
                    // Also with no store open: the hand-over waits for this word.
                    self.handle.store_closed(st.epoch, seq);
                }
            }
            if watch.changed().await.is_err() {
                self.drop_store("the lock manager stopped");
                return;
            }
        }
    }

    fn drop_store(&self, why: &str) {
        if let Some((epoch, vol)) = self.store.write().take() {
            info!(
                volume = self.label,
                epoch, why, "no longer serving the volume's metadata"
            );
            // Commit what can be; a fenced node's writes fail, which is right.
            if let Err(e) = vol.close() {
                warn!(volume = self.label, error = %e, "closing the store");
            }
        }
    }

    /// Drops the store once the calls running on it have ended, and closes it (every
    /// commit on the LUN) before returning: what a planned hand-over waits for.
    async fn quiesce_store(&self, why: &str) {
        let Some((epoch, vol)) = self.store.write().take() else {
            return;
        };
        // However long it takes: a second instance of the store must never open
        // while a call still runs on this one (a stuck call ends with its I/O's
        // timeout). A hand-over gives up meanwhile if it must.
        let mut next_word = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&vol) > 1 {
            if Instant::now() >= next_word {
                warn!(
                    volume = self.label,
                    calls = Arc::strong_count(&vol) - 1,
                    "closing the store waits for calls still running on it"
                );
                next_word += Duration::from_secs(5);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        info!(
            volume = self.label,
            epoch, why, "no longer serving the volume's metadata"
        );
        let label = self.label.clone();
        let closed = tokio::task::spawn_blocking(move || vol.close()).await;
        match closed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(volume = label, error = %e, "closing the store"),
            Err(e) => warn!(volume = label, error = %e, "store closing task failed"),
        }
    }

    /// Serves the requests of a peer's stream, one after the other, until it ends.
    async fn serve(self: Arc<Self>, from: u8, mut stream: FramedStream) {
        stream.set_max_frame_len(MAX_FRAME);
        while let Ok(Some(bytes)) = stream.recv().await {
            let batch = match MetaBatch::decode_checked(&bytes) {
                Ok(b) => b,
                Err(e) => {
                    warn!(volume = self.label, from, error = %e, "refusing a request; closing its stream");
                    return;
                }
            };
            if self
                .answer(from, batch.requests, &mut stream)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Carries out a batch of another node's requests in order, if this node serves
    /// the volume, and answers them: in one frame those whose changes made no other
    /// node's lease stale, then each of the others once its recalls are done. Once one
    /// request of a batch is refused (this node does not serve, or not yet this
    /// node's replay), so are the rest: the node sends them again in their order.
    async fn answer(
        self: &Arc<Self>,
        from: u8,
        reqs: Vec<MetaRequest>,
        stream: &mut FramedStream,
    ) -> Result<(), String> {
        let mut ready = Vec::new();
        let mut run = Vec::new();
        let mut refused = false;
        for req in reqs {
            let serving = if refused {
                None
            } else {
                self.serving_store(req.replay.then_some(from))
            };
            let Some((epoch, vol, admit)) = serving else {
                refused = true;
                let epoch = self.handle.status().epoch;
                ready.push(response(req.id, 0, Outcome::NotCoordinator { epoch }).encode());
                continue;
            };
            if self.handle.status().evicted.contains(&from) {
                let outcome = Outcome::Failed {
                    errno: libc::EIO,
                    message: format!("node {from} was evicted from the cluster"),
                };
                ready.push(response(req.id, epoch, outcome).encode());
                continue;
            }
            self.counters.served_calls.fetch_add(1, Ordering::Relaxed);
            let how = ForNode {
                durable: req.durable,
                recorded_only: req.replay && admit != Admit::Replayer,
                pinned_ino: req.pinned_ino.filter(|_| req.replay),
            };
            run.push((req, epoch, vol, how));
        }
        let me = self.clone();
        let ids: Vec<(u64, u64)> = run.iter().map(|(r, e, ..)| (r.id, *e)).collect();
        let done = tokio::task::spawn_blocking(move || {
            run.into_iter()
                .map(|(req, epoch, vol, how)| {
                    let replay_end = req.replay && req.call == MetaCall::Sync;
                    let (id, call) = (req.id, req.call);
                    let r = me.carry_out(&vol, from, call, |vol, call| {
                        local::execute_for(vol, from, id, call, how)
                    });
                    // Read after the change's own count: a change is never confirmed
                    // early.
                    let durable_commits = vol.commit_stats().durable_commits;
                    (id, epoch, r, durable_commits, replay_end)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut recalling = tokio::task::JoinSet::new();
        match done {
            Ok(done) => {
                for (id, epoch, r, durable_commits, replay_end) in done {
                    let (outcome, early, recalls, replay_end) = match r {
                        Ok((answer, early, recalls)) => {
                            (outcome_of(answer), early, recalls, replay_end)
                        }
                        Err(e) => {
                            let outcome = Outcome::Failed {
                                errno: e.errno(),
                                message: e.to_string(),
                            };
                            (outcome, None, Vec::new(), false)
                        }
                    };
                    let resp = MetaResponse {
                        id,
                        outcome,
                        epoch,
                        durable_commits,
                        unconfirmed: early.map(|e| Unconfirmed {
                            seq: e.seq,
                            durable_after: e.durable_after,
                        }),
                    };
                    if recalls.is_empty() && !replay_end {
                        ready.push(resp.encode());
                        continue;
                    }
                    let me = self.clone();
                    recalling.spawn(async move {
                        me.recaller.recall_all(epoch, recalls).await;
                        if replay_end {
                            me.replay_ended(epoch, from);
                        }
                        resp.encode()
                    });
                }
            }
            Err(e) => {
                for (id, epoch) in ids {
                    let outcome = Outcome::Failed {
                        errno: libc::EIO,
                        message: format!("the coordinator's worker failed: {e}"),
                    };
                    ready.push(response(id, epoch, outcome).encode());
                }
            }
        }
        send_answers(stream, ready).await?;
        while let Some(r) = recalling.join_next().await {
            let resp = r.map_err(|e| format!("a recall task failed: {e}"))?;
            send_answers(stream, vec![resp]).await?;
        }
        Ok(())
    }

    /// Replays this node's `changes`, acknowledged early by an earlier coordinator, on
    /// its own store before it serves (this node is the new coordinator).
    fn replay_here(&self, vol: &Volume, changes: Vec<Change>) {
        let started = Instant::now();
        let n = changes.len();
        for ch in changes {
            let how = ForNode {
                pinned_ino: ch.pinned_ino(),
                ..ForNode::default()
            };
            let again = local::execute_for(vol, self.me, ch.id, ch.call.clone(), how);
            self.replayed(
                &ch,
                again.map(|(reply, _)| reply).map_err(|e| e.to_string()),
            );
        }
        if let Err(e) = vol.sync() {
            warn!(volume = self.label, error = %e, "committing the replayed changes");
        }
        info!(
            volume = self.label,
            to = self.me,
            changes = n,
            ms = started.elapsed().as_millis() as u64,
            "replayed the changes the previous coordinator had acknowledged"
        );
    }

    /// Counts and logs what came of replaying `ch`: its answer again, or why not.
    fn replayed(&self, ch: &Change, again: Result<MetaReply, String>) {
        match again {
            Ok(reply) => {
                if !self.unconfirmed.count_replay(&ch.reply, &reply) {
                    warn!(volume = self.label, id = ch.id, call = ?ch.call, first = ?ch.reply, again = ?reply, "a replayed change came out differently");
                }
            }
            Err(why) => {
                self.unconfirmed.diverged.fetch_add(1, Ordering::Relaxed);
                self.unconfirmed.replayed.fetch_add(1, Ordering::Relaxed);
                warn!(volume = self.label, id = ch.id, call = ?ch.call, error = why, "a change the previous coordinator acknowledged could not be replayed: it is lost");
            }
        }
    }

    /// Replays `changes`, acknowledged early by an earlier coordinator, to node `to`,
    /// the coordinator of `epoch`, in the order they were applied (in batches, which
    /// the coordinator carries out in order); then a durable commit, which ends this
    /// node's replay there.
    async fn replay_to(self: Arc<Self>, to: u8, epoch: u64, changes: Vec<Change>) {
        let started = Instant::now();
        let deadline = started + REPLAY_WINDOW;
        let n = changes.len();
        for chunk in changes.chunks(MAX_BATCH) {
            let reqs: Vec<MetaRequest> = chunk
                .iter()
                .map(|ch| MetaRequest {
                    id: ch.id,
                    epoch,
                    call: ch.call.clone(),
                    replay: true,
                    durable: false,
                    pinned_ino: ch.pinned_ino(),
                })
                .collect();
            let again = self.replay_batch(to, reqs, deadline).await;
            for (ch, again) in chunk.iter().zip(again) {
                self.replayed(ch, again);
            }
        }
        let end = MetaRequest {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch,
            call: MetaCall::Sync,
            replay: true,
            durable: true,
            pinned_ino: None,
        };
        if let Some(Err(e)) = self.replay_batch(to, vec![end], deadline).await.pop() {
            warn!(volume = self.label, to, error = e, "ending the replay");
        }
        self.replaying.store(false, Ordering::SeqCst);
        info!(
            volume = self.label,
            to,
            epoch,
            changes = n,
            ms = started.elapsed().as_millis() as u64,
            "replayed the changes the previous coordinator had acknowledged"
        );
    }

    /// Starts replaying this node's unconfirmed changes to `to`, the new coordinator of
    /// `epoch`, unless a replay runs already; true when one runs (the new coordinator
    /// then serves this node's replay before anyone else).
    fn start_replay(self: Arc<Self>, to: u8, epoch: u64) -> bool {
        if self.replaying.swap(true, Ordering::SeqCst) {
            return true;
        }
        let changes = self.unconfirmed.take();
        if changes.is_empty() {
            self.replaying.store(false, Ordering::SeqCst);
            return false;
        }
        self.rt.spawn(self.clone().replay_to(to, epoch, changes));
        true
    }

    /// True while this node's calls to `c`, the coordinator of `epoch`, must wait for
    /// a replay: one runs, or this node keeps changes acknowledged under an earlier
    /// epoch (the new coordinator's recall starts their replay; if none came within
    /// [`RECALL_GRACE`] of the coordinator `serving`, this node starts it itself).
    fn replay_first(&self, c: u8, epoch: u64, serving: bool) -> bool {
        if self.replaying.load(Ordering::SeqCst) {
            return true;
        }
        if !self.unconfirmed.has_before(epoch) {
            *self.stale_since.lock() = None;
            return false;
        }
        if !serving {
            *self.stale_since.lock() = None;
            return true;
        }
        let since = *self.stale_since.lock().get_or_insert_with(Instant::now);
        if since.elapsed() >= RECALL_GRACE
            && let Some(me) = self.this.get().and_then(std::sync::Weak::upgrade)
        {
            warn!(
                volume = self.label,
                coordinator = c,
                epoch,
                "no recall from the new coordinator; replaying the changes its predecessor acknowledged unasked"
            );
            me.start_replay(c, epoch);
        }
        true
    }

    /// Sends a batch of replayed requests until the coordinator has taken them all
    /// (it refuses while its store opens, and then the rest of a batch, which goes
    /// again from the first refused) or `deadline`; what came of each, in order.
    async fn replay_batch(
        &self,
        to: u8,
        reqs: Vec<MetaRequest>,
        deadline: Instant,
    ) -> Vec<Result<MetaReply, String>> {
        let mut done = Vec::with_capacity(reqs.len());
        while done.len() < reqs.len() {
            let rest = &reqs[done.len()..];
            let problem =
                match tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(to, rest)).await {
                    Ok(Ok(resps)) => {
                        let mut refused = None;
                        for resp in resps {
                            done.push(match resp.outcome {
                                Outcome::Reply(r) | Outcome::Leased { reply: r, .. } => Ok(r),
                                Outcome::Failed { message, .. } | Outcome::Absent { message } => {
                                    Err(message)
                                }
                                Outcome::NotCoordinator { epoch } => {
                                    refused = Some(format!("not serving yet (epoch {epoch})"));
                                    break;
                                }
                            });
                        }
                        match refused {
                            Some(why) => why,
                            None => continue,
                        }
                    }
                    Ok(Err(e)) => e,
                    Err(_) => format!("no answer within {EXCHANGE_TIMEOUT:?}"),
                };
            if Instant::now() >= deadline {
                let why = format!("node {to} did not take it in time: {problem}");
                done.resize(reqs.len(), Err(why));
                break;
            }
            tokio::time::sleep(RETRY).await;
        }
        done
    }

    /// Returns once the volume's coordinator is no longer node `c` of `epoch`.
    async fn coordinator_change(&self, c: u8, epoch: u64) {
        let mut watch = self.handle.watch();
        loop {
            {
                let st = watch.borrow_and_update();
                if st.coordinator != Some(c) || st.epoch != epoch {
                    return;
                }
            }
            if watch.changed().await.is_err() {
                return;
            }
        }
    }

    /// Sends `reqs` to node `to` in one batch, on a stream of the pool; their
    /// responses, in the batch's order.
    async fn exchange(&self, to: u8, reqs: &[MetaRequest]) -> Result<Vec<MetaResponse>, String> {
        let frames: Vec<Vec<u8>> = reqs.iter().map(MetaRequest::encode).collect();
        let mut got: Vec<Option<MetaResponse>> = vec![None; reqs.len()];
        let mut missing = reqs.len();
        self.streams
            .exchange_until(
                &self.shell,
                to,
                &frame_of(&frames),
                "coordinator",
                |bytes| {
                    let answers = MetaAnswers::decode(bytes).map_err(|e| e.to_string())?;
                    for resp in answers.responses {
                        let i = reqs.iter().position(|r| r.id == resp.id).ok_or_else(|| {
                            format!("an answer to request {}, which was not asked", resp.id)
                        })?;
                        if got[i].replace(resp).is_none() {
                            missing -= 1;
                        }
                    }
                    Ok(missing == 0)
                },
            )
            .await?;
        Ok(got.into_iter().flatten().collect())
    }

    /// Sends one request to node `to`; its response.
    async fn exchange_one(&self, to: u8, req: &MetaRequest) -> Result<MetaResponse, String> {
        let mut r = self.exchange(to, std::slice::from_ref(req)).await?;
        r.pop().ok_or_else(|| "no answer".to_string())
    }

    /// An answer from what this node keeps under lease, if it has one.
    fn kept_answer(&self, call: &MetaCall) -> Option<MetaResult<MetaReply>> {
        let cache = &self.recaller.cache;
        let (reply, until) = match call {
            MetaCall::Lookup { parent, name } => match cache.lookup(*parent, name)? {
                (Name::Is(ino, inode), until) => (MetaReply::Entry(ino, inode), until),
                (Name::Absent, _) => {
                    self.counters.cached_calls.fetch_add(1, Ordering::Relaxed);
                    return Some(Err(MetaError::NotFound));
                }
            },
            MetaCall::Inode { ino } => cache
                .inode(*ino)
                .map(|(inode, until)| (MetaReply::Inode(inode), until))?,
            MetaCall::Layout { ino, from, to } => cache
                .layout(*ino, *from, *to)
                .map(|(inode, extents, until)| (MetaReply::Layout(inode, extents), until))?,
            _ => return None,
        };
        self.counters.cached_calls.fetch_add(1, Ordering::Relaxed);
        LeaseCache::note_lease(until);
        Some(Ok(reply))
    }

    /// Carries out `call` on this node's store while it coordinates, else on the
    /// coordinator's, waiting for one up to [`PATIENCE`].
    fn call_coordinator(&self, call: MetaCall) -> MetaResult<Answer> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + PATIENCE;
        let mut last_problem = String::from("no coordinator yet");
        // Sent to another coordinator once: it may have applied it, and this node
        // may be its successor, which must then answer from the record.
        let mut sent = false;
        loop {
            if let Some((epoch, vol, _)) = self.serving_store(None) {
                self.counters.local_calls.fetch_add(1, Ordering::Relaxed);
                let (answer, _, recalls) = self.carry_out(&vol, self.me, call, |vol, call| {
                    if sent {
                        local::execute_for(vol, self.me, id, call, ForNode::default())
                    } else {
                        local::execute(vol, call).map(|r| (r, None))
                    }
                })?;
                drop(vol);
                if !recalls.is_empty() {
                    self.rt.block_on(self.recaller.recall_all(epoch, recalls));
                }
                return Ok(answer);
            }
            let st = self.handle.status();
            if st.role == lockmgr::protocol::Role::Evicted.to_string() {
                return Err(MetaError::Remote {
                    errno: libc::EIO,
                    message: format!(
                        "volume {}: this node was evicted from the cluster (csvctl node evict); start its daemon again once it may rejoin",
                        self.label
                    ),
                });
            }
            let replay_first = |c: u8| self.replay_first(c, st.epoch, st.coordinator_serving);
            if let Some(c) = st.coordinator.filter(|&c| c != self.me && !replay_first(c)) {
                let req = MetaRequest {
                    id,
                    epoch: st.epoch,
                    call: call.clone(),
                    replay: false,
                    // Enough kept for a failover to replay: make them durable.
                    durable: self.unconfirmed.len() >= MAX_UNCONFIRMED,
                    pinned_ino: None,
                };
                self.counters.remote_calls.fetch_add(1, Ordering::Relaxed);
                sent = true;
                let outcome = self.rt.block_on(async {
                    tokio::select! {
                        r = tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange_one(c, &req)) => {
                            r.unwrap_or_else(|_| Err(format!("no answer within {EXCHANGE_TIMEOUT:?}")))
                        }
                        // A dead coordinator never answers: go to its successor as soon
                        // as there is one (the change's id makes a repeat harmless).
                        () = self.coordinator_change(c, st.epoch) => {
                            Err(format!("node {c} stopped coordinating"))
                        }
                    }
                });
                let outcome = outcome.map(|resp| {
                    if let (Some(at), Outcome::Reply(reply) | Outcome::Leased { reply, .. }) =
                        (resp.unconfirmed, &resp.outcome)
                    {
                        self.unconfirmed.record(Change {
                            epoch: resp.epoch,
                            at,
                            id,
                            call: call.clone(),
                            reply: reply.clone(),
                        });
                    }
                    self.unconfirmed.confirm(resp.epoch, resp.durable_commits);
                    resp.outcome
                });
                match outcome {
                    Ok(Outcome::Leased { reply, attrs }) => {
                        return Ok(Answer::Reply {
                            reply,
                            leased: true,
                            attrs,
                        });
                    }
                    Ok(Outcome::Reply(reply)) => {
                        return Ok(Answer::Reply {
                            reply,
                            leased: false,
                            attrs: Vec::new(),
                        });
                    }
                    Ok(Outcome::Absent { message }) => {
                        return Ok(Answer::Absent {
                            error: MetaError::from_remote(libc::ENOENT, message),
                            leased: true,
                        });
                    }
                    Ok(Outcome::Failed { errno, message }) => {
                        return Err(MetaError::from_remote(errno, message));
                    }
                    Ok(Outcome::NotCoordinator { epoch }) => {
                        last_problem = format!("node {c} does not serve it (epoch {epoch})");
                    }
                    Err(e) => last_problem = e,
                }
            }
            if Instant::now() >= deadline {
                return Err(MetaError::Remote {
                    errno: libc::EIO,
                    message: format!(
                        "volume {}: no coordinator answered within {PATIENCE:?} ({last_problem})",
                        self.label
                    ),
                });
            }
            std::thread::sleep(RETRY);
        }
    }
}

/// A response to request `id` in `epoch` without counts: a refusal or a failure.
fn response(id: u64, epoch: u64, outcome: Outcome) -> MetaResponse {
    MetaResponse {
        id,
        outcome,
        epoch,
        durable_commits: 0,
        unconfirmed: None,
    }
}

/// What an answer of the store tells the asking node.
fn outcome_of(answer: Answer) -> Outcome {
    match answer {
        Answer::Reply {
            reply,
            leased: true,
            attrs,
        } => Outcome::Leased { reply, attrs },
        Answer::Reply { reply, .. } => Outcome::Reply(reply),
        Answer::Absent {
            error,
            leased: true,
        } => Outcome::Absent {
            message: error.to_string(),
        },
        Answer::Absent { error, .. } => Outcome::Failed {
            errno: error.errno(),
            message: error.to_string(),
        },
    }
}

/// Sends `responses` (encoded) on `stream`, in as many frames as they need.
async fn send_answers(stream: &mut FramedStream, responses: Vec<Vec<u8>>) -> Result<(), String> {
    let mut frame: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    for r in responses {
        if !frame.is_empty() && bytes + r.len() > MAX_FRAME / 2 {
            stream
                .send(&frame_of(&frame))
                .await
                .map_err(|e| e.to_string())?;
            (frame, bytes) = (Vec::new(), 0);
        }
        bytes += r.len();
        frame.push(r);
    }
    if !frame.is_empty() {
        stream
            .send(&frame_of(&frame))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The first request id of this process: the clock in ms, shifted past the ids one
/// life can use.
fn first_request_id() -> u64 {
    lockmgr::shell::lun_disk::wall_clock_ms() << 20
}

impl RangeLocks for ClusterVolume {
    fn range(&self, file: u64, owner: u64, op: RangeOp, done: Done) {
        let handle = self.handle.clone();
        self.rt.spawn(async move {
            let r = handle.range(file, owner, op, None).await;
            done(r.map_err(|_| Errno::EIO));
        });
    }
}

impl MetaService for ClusterVolume {
    fn call(&self, call: MetaCall) -> MetaResult<MetaReply> {
        let cache = &self.recaller.cache;
        if let Some(answer) = self.kept_answer(&call) {
            return answer;
        }
        let mut before = cache.snapshot();
        let sent = Instant::now();
        let moved: Vec<u64> = leases::moves(&call)
            .into_iter()
            .filter_map(|(parent, name)| cache.inode_of(parent, name))
            .collect();
        // A layout is asked for ahead, to be kept for the next I/O.
        let call = match call {
            MetaCall::Layout { ino, from, to } => MetaCall::Layout {
                ino,
                from,
                to: to.max(from.saturating_add(LAYOUT_AHEAD)),
            },
            call => call,
        };
        let (reply, leased, attrs) = match self.call_coordinator(call.clone()) {
            Ok(Answer::Reply {
                reply,
                leased,
                attrs,
            }) => (reply, leased, attrs),
            Ok(Answer::Absent { error, leased }) => {
                if let (true, MetaCall::Lookup { parent, name }) = (leased, &call) {
                    cache.keep_absent(&before, sent, *parent, name);
                }
                return Err(error);
            }
            Err(e) => {
                if call.changes() {
                    // The change may have been applied all the same (an answer lost
                    // to a failover, a timeout): what it would make stale goes.
                    let keys = leases::changed_by(&call, &MetaReply::Done, &moved);
                    cache.drop_keys(&keys);
                }
                return Err(e);
            }
        };
        if call.changes() {
            // This node's own change: what it kept of the things changed goes (the
            // coordinator recalls only the other nodes).
            cache.changed_here(
                &mut before,
                &leases::changed_by(&call, &reply, &moved),
                &call,
            );
        }
        let kept = if leased {
            cache.keep(&before, sent, &call, &reply, &attrs)
        } else {
            None
        };
        match kept {
            Some(until) => LeaseCache::note_lease(until),
            None => LeaseCache::note_unleased(),
        }
        Ok(reply)
    }

    fn close(&self) -> MetaResult<()> {
        match self.serving_store(None) {
            Some((_, vol, _)) => vol.sync(),
            // What the coordinator acknowledged early must be durable before this
            // node, which would replay it, goes.
            None if !self.unconfirmed.is_empty() => {
                self.call_coordinator(MetaCall::Sync).map(|_| ())
            }
            None => Ok(()),
        }
    }
}
