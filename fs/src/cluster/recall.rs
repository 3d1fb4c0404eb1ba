//! Recalling metadata leases: the coordinator's side (before it answers a change, it
//! asks every other holder of a lease the change makes stale to drop it; before it
//! serves at all, it asks every node to drop everything) and the holder's side (drop
//! it, then say so).
//!
//! A holder that does not answer is asked again until it does, its lease runs out, or
//! [`Recaller::give_up`] has passed: by then a holder that lost touch with the
//! coordinator has dropped everything on its own, since its lock manager lease ran
//! out ([`super::lease_cache`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lockmgr::shell::Shell;
use lockmgr::transport::FramedStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::lease_cache::LeaseCache;
use super::leases::Recall;
use super::stream_pool::StreamPool;
use super::wire::{MAX_FRAME, RECALL_SERVICE, RecallDone, RecallRequest};

/// How long after a failed recall a holder is asked again.
const AGAIN: Duration = Duration::from_millis(50);

/// How long a new coordinator waits for each node it has not fenced to drop
/// everything (and to say whether it replays changes): a live node answers at once
/// unless starved of CPU; a dead node's link fails at once, and the node that died as
/// coordinator is fenced and not asked.
const TAKEOVER_WAIT: Duration = Duration::from_secs(3);

/// What a node does when a new coordinator (node, epoch) asks it to drop everything:
/// starts replaying its unconfirmed changes to it, if it has any (true).
pub type OnTakeover = Arc<dyn Fn(u8, u64) -> bool + Send + Sync>;

/// Both sides of lease recalls for one volume of this node.
pub struct Recaller {
    label: String,
    me: u8,
    shell: Arc<Shell>,
    /// What this node keeps of the volume.
    pub cache: Arc<LeaseCache>,
    pool: StreamPool,
    give_up: Duration,
    on_takeover: OnceLock<OnTakeover>,
}

impl Recaller {
    /// Recalls for volume `label` of node `me`; a holder that does not answer is
    /// waited for `give_up` at most (more than a lock manager lease).
    pub fn new(
        shell: Arc<Shell>,
        label: &str,
        cache: Arc<LeaseCache>,
        give_up: Duration,
    ) -> Recaller {
        Recaller {
            label: label.to_string(),
            me: shell.id(),
            shell,
            cache,
            pool: StreamPool::new(label, RECALL_SERVICE),
            give_up,
            on_takeover: OnceLock::new(),
        }
    }

    /// Sets what this node does when a new coordinator asks it to drop everything.
    pub fn set_on_takeover(&self, f: OnTakeover) {
        let _ = self.on_takeover.set(f);
    }

    /// Recalls every lease of `recalls` at once; returns when each holder has dropped
    /// them, or its lease has run out, or it was given up.
    pub async fn recall_all(self: &Arc<Self>, epoch: u64, recalls: Vec<Recall>) {
        let mut set = tokio::task::JoinSet::new();
        for r in recalls {
            let me = self.clone();
            let until = Instant::from_std(r.until).min(Instant::now() + self.give_up);
            let req = RecallRequest {
                epoch,
                keys: r.keys,
                all: false,
            };
            set.spawn(async move { me.recall_from(r.node, req, until, true).await });
        }
        while set.join_next().await.is_some() {}
    }

    /// Has every other node but the `fenced` drop everything it keeps (a new
    /// coordinator does this before it serves; it drops its own cache itself),
    /// waiting [`TAKEOVER_WAIT`] at most for each; returns the nodes that replay unconfirmed changes to it, which
    /// it serves before anyone else. Each node also drops everything by itself when it
    /// sees the epoch change, which it does before the takeover ends (it reports its
    /// locks to the new coordinator, or is fenced); and a node that cannot be reached
    /// is dead, or cut off and dropped everything when its lock manager lease ran out
    /// (and is fenced: what it would replay is lost with it).
    pub async fn recall_everything(self: &Arc<Self>, epoch: u64, fenced: &[u8]) -> Vec<u8> {
        let mut set = tokio::task::JoinSet::new();
        for node in self.shell.peer_ids() {
            if fenced.contains(&node) {
                continue;
            }
            let me = self.clone();
            let req = RecallRequest {
                epoch,
                keys: Vec::new(),
                all: true,
            };
            let until = Instant::now() + TAKEOVER_WAIT;
            set.spawn(async move { (node, me.recall_from(node, req, until, false).await) });
        }
        let cache = self.cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.drop_all()).await;
        let mut replaying = Vec::new();
        while let Some(done) = set.join_next().await {
            if let Ok((node, true)) = done {
                replaying.push(node);
            }
        }
        replaying
    }

    /// Recalls `req` from `node` until `until` (asking `again` after failures);
    /// true when the node answered that it replays unconfirmed changes.
    async fn recall_from(&self, node: u8, req: RecallRequest, until: Instant, again: bool) -> bool {
        if node == self.me {
            let cache = self.cache.clone();
            let _ = tokio::task::spawn_blocking(move || apply(&cache, &req)).await;
            return false;
        }
        loop {
            let e = match tokio::time::timeout_at(until, self.exchange(node, &req)).await {
                Ok(Ok(done)) => return done.replaying,
                Ok(Err(e)) => e,
                Err(_) => "no answer".to_string(),
            };
            if !again {
                debug!(volume = self.label, node, error = %e, "recall not answered; going on");
                return false;
            }
            if Instant::now() + AGAIN >= until {
                debug!(volume = self.label, node, error = %e, "recall not answered until the lease ran out");
                tokio::time::sleep_until(until).await;
                return false;
            }
            tokio::time::sleep(AGAIN).await;
        }
    }

    async fn exchange(&self, to: u8, req: &RecallRequest) -> Result<RecallDone, String> {
        self.pool
            .exchange(&self.shell, to, &req.encode(), "holder", |bytes| {
                RecallDone::decode(bytes).map_err(|e| e.to_string())
            })
            .await
    }

    /// Serves the recalls a coordinator sends on `stream`, one after the other.
    pub async fn serve(self: Arc<Self>, from: u8, mut stream: FramedStream) {
        stream.set_max_frame_len(MAX_FRAME);
        while let Ok(Some(bytes)) = stream.recv().await {
            let req = match RecallRequest::decode(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    warn!(volume = self.label, from, error = %e, "refusing a recall; closing its stream");
                    return;
                }
            };
            let epoch = req.epoch;
            let cache = self.cache.clone();
            if req.all {
                // A new coordinator, which waits only briefly for each node: what
                // this node keeps goes at once, the replay of what the predecessor
                // may have lost starts, the answer goes; then the kernel's attributes
                // (a notice per inode: seconds for many thousands).
                let in_kernel = cache.forget_all();
                let replaying = self.on_takeover.get().is_some_and(|f| f(from, epoch));
                let done = RecallDone { epoch, replaying };
                let sent = stream.send(&done.encode()).await;
                let _ = tokio::task::spawn_blocking(move || cache.invalidate(&in_kernel)).await;
                if sent.is_err() {
                    return;
                }
                continue;
            }
            if let Err(e) = tokio::task::spawn_blocking(move || apply(&cache, &req)).await {
                warn!(volume = self.label, error = %e, "recall task failed");
                return;
            }
            let done = RecallDone {
                epoch,
                replaying: false,
            };
            if stream.send(&done.encode()).await.is_err() {
                return;
            }
        }
    }
}

fn apply(cache: &LeaseCache, req: &RecallRequest) {
    if req.all {
        cache.drop_all();
    } else {
        cache.drop_keys(&req.keys);
    }
}
