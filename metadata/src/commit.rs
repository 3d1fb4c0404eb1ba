//! Group commit: the single writer of the metadata store.
//!
//! Every change to the store is a job, a closure over a write transaction. The first
//! thread to submit a job while no commit is running becomes the leader: it commits
//! every job waiting at that moment in one transaction, its own and other threads',
//! and goes on until the queue is empty, so concurrent operations share one commit
//! (and, when durable, one flush) and a lone thread commits without a thread switch. A job that fails must leave nothing behind: when any job of a batch fails,
//! the batch is thrown away and each job runs again in a transaction of its own, so
//! only the failing one fails.
//!
//! Commits are not durable by default (redb `Durability::None`): they are visible to
//! readers at once and become durable at the next durable commit, which happens when a
//! job asks for it (fsync) or at the latest `interval` after the first change (a timer
//! thread sees to it), as a journal commit does in ext4. Extents freed in between wait in PENDING_FREE and are
//! released in the durable commit (see [`crate::alloc`]).
//!
//! On a shared volume, jobs carry their [`Origin`]: this node's own applications, or
//! another node. A coordinator may acknowledge another node's change before it is
//! durable (the node keeps it and replays it after a failover) only while that node
//! is the one origin of everything not yet durable: a batch with another node's job
//! is committed durably as soon as it, or what waits for a durable commit, holds a
//! job of any other origin. Then what a crash of the coordinator loses is, at most,
//! one node's changes (which that node replays on the state they were first applied
//! to) followed by the coordinator's own applications' (which die with it).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use parking_lot::{Condvar, Mutex};
use redb::{Durability, WriteTransaction};

use crate::alloc::release_pending;
use crate::error::{MetaError, MetaResult};
use crate::free_hold::FreeHold;
use crate::store::{Store, put_reserve, take_reserve};

/// Most jobs one transaction takes.
const MAX_BATCH: usize = 256;

trait Job: Send {
    fn run(&mut self, txn: &WriteTransaction) -> MetaResult<()>;
    fn finish(self: Box<Self>, outcome: MetaResult<()>);
    fn frees_space(&self) -> bool;
    fn durable(&self) -> bool;
    fn origin(&self) -> Origin;
}

struct TypedJob<F, R> {
    f: F,
    result: Option<R>,
    reply: Sender<MetaResult<R>>,
    frees: bool,
    durable: bool,
    origin: Origin,
}

impl<F, R> Job for TypedJob<F, R>
where
    F: FnMut(&WriteTransaction) -> MetaResult<R> + Send,
    R: Send,
{
    fn run(&mut self, txn: &WriteTransaction) -> MetaResult<()> {
        self.result = Some((self.f)(txn)?);
        Ok(())
    }
    fn finish(mut self: Box<Self>, outcome: MetaResult<()>) {
        let msg = outcome.and_then(|()| {
            self.result
                .take()
                .ok_or(MetaError::Store("job produced no result".into()))
        });
        let _ = self.reply.send(msg);
    }
    fn frees_space(&self) -> bool {
        self.frees
    }
    fn durable(&self) -> bool {
        self.durable
    }
    fn origin(&self) -> Origin {
        self.origin
    }
}

/// Whose change a job is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Origin {
    /// This node's own applications.
    #[default]
    Local,
    /// Another node of a shared volume, by its id.
    Node(u8),
}

/// How a job wants to be committed.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobKind {
    /// The job frees space, so it may use the metadata reserve.
    pub frees_space: bool,
    /// The job's commit must be durable before it returns (fsync).
    pub durable: bool,
    /// Whose change it is.
    pub origin: Origin,
}

impl JobKind {
    /// A job that removes things (unlink, truncate, delete): it may use the metadata
    /// region's reserve, so that a full volume can always be emptied.
    pub const FREES: JobKind = JobKind {
        frees_space: true,
        durable: false,
        origin: Origin::Local,
    };

    /// A durable job of this node.
    pub const DURABLE: JobKind = JobKind {
        frees_space: false,
        durable: true,
        origin: Origin::Local,
    };
}

/// Counters of the committer, for benchmarks and status.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: u64,
    /// Of which durable.
    pub durable_commits: u64,
    /// Jobs applied.
    pub jobs: u64,
}

/// The single writer of the store.
#[derive(Debug)]
pub struct Committer {
    shared: Arc<Shared>,
    timer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Box<dyn Job>>,
    /// A thread is committing batches.
    leading: bool,
    /// Since when non-durable changes wait for a durable commit.
    dirty_since: Option<Instant>,
    /// The origins of those changes (and of a non-durable batch being committed).
    pending: Vec<Origin>,
    stopped: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake_timer: Condvar,
    worker: Mutex<Worker>,
    stats: Mutex<CommitStats>,
    interval: Duration,
    /// Freed runs kept from reuse while layouts may cover them (a shared volume).
    hold: Option<Arc<FreeHold>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

struct Worker {
    store: Arc<Store>,
    hold: Option<Arc<FreeHold>>,
    /// The reserve value was given up to let a full volume free space.
    reserve_missing: bool,
}

/// A failure that means the metadata region is full (redb then has to be reopened).
fn is_space_failure(e: &MetaError) -> bool {
    e.is_metadata_full()
}

impl Committer {
    /// Starts the committer; non-durable changes become durable within `interval`.
    /// Freed runs that `hold` keeps back are released by a durable commit once it lets
    /// them go.
    pub fn start(store: Arc<Store>, interval: Duration, hold: Option<Arc<FreeHold>>) -> Committer {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake_timer: Condvar::new(),
            worker: Mutex::new(Worker {
                store,
                hold: hold.clone(),
                reserve_missing: false,
            }),
            stats: Mutex::new(CommitStats::default()),
            interval,
            hold,
        });
        let s = shared.clone();
        let timer = std::thread::Builder::new()
            .name("csvfs-commit-timer".into())
            .spawn(move || s.run_timer())
            .expect("spawn commit timer thread");
        Committer {
            shared,
            timer: Mutex::new(Some(timer)),
        }
    }

    /// Runs `f` in a write transaction and returns its result once committed.
    pub fn submit<R, F>(&self, kind: JobKind, f: F) -> MetaResult<R>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> MetaResult<R> + Send + 'static,
    {
        self.shared.submit(kind, f)
    }

    /// Makes every change committed so far durable.
    pub fn sync(&self) -> MetaResult<()> {
        self.submit(JobKind::DURABLE, |_| Ok(()))
    }

    /// True while committed changes wait for a durable commit.
    pub fn has_unsynced(&self) -> bool {
        self.shared.queue.lock().dirty_since.is_some()
    }

    /// True while changes of an origin other than `origin` wait for a durable commit:
    /// what `origin` sees of the store must not be lost to a crash, unless it is its
    /// own (see the module's notes). Check it after taking the snapshot to answer from.
    pub fn has_unsynced_beyond(&self, origin: Origin) -> bool {
        self.shared
            .queue
            .lock()
            .pending
            .iter()
            .any(|&o| o != origin)
    }

    /// Makes everything durable and stops.
    pub fn shutdown(&self) -> MetaResult<()> {
        let Some(timer) = self.timer.lock().take() else {
            return Ok(());
        };
        // Stopped first: a job submitted from now on is refused, and the durable
        // commit below (let through) covers every job queued before.
        self.shared.queue.lock().stopped = true;
        let result = self.shared.submit_job(JobKind::DURABLE, |_| Ok(()), true);
        self.shared.wake_timer.notify_all();
        let _ = timer.join();
        result
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitStats {
        *self.shared.stats.lock()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Shared {
    fn submit<R, F>(&self, kind: JobKind, f: F) -> MetaResult<R>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> MetaResult<R> + Send + 'static,
    {
        self.submit_job(kind, f, false)
    }

    /// Queues a job and waits for its commit; once stopped, only the closing commit
    /// (`closing`) is taken.
    fn submit_job<R, F>(&self, kind: JobKind, f: F, closing: bool) -> MetaResult<R>
    where
        R: Send + 'static,
        F: FnMut(&WriteTransaction) -> MetaResult<R> + Send + 'static,
    {
        let (reply, rx) = bounded(1);
        let job = TypedJob {
            f,
            result: None,
            reply,
            frees: kind.frees_space,
            durable: kind.durable,
            origin: kind.origin,
        };
        let lead = {
            let mut q = self.queue.lock();
            if q.stopped && !closing {
                return Err(MetaError::Store("the volume is closed".into()));
            }
            q.jobs.push(Box::new(job));
            !std::mem::replace(&mut q.leading, true)
        };
        if lead {
            self.lead();
        }
        rx.recv()
            .map_err(|_| MetaError::Store("the committer dropped a job".into()))?
    }

    /// Commits batches until the queue is empty.
    fn lead(&self) {
        loop {
            let (batch, durable, was_dirty) = {
                let mut q = self.queue.lock();
                if q.jobs.is_empty() {
                    q.leading = false;
                    return;
                }
                let n = q.jobs.len().min(MAX_BATCH);
                let batch: Vec<Box<dyn Job>> = q.jobs.drain(..n).collect();
                let was_dirty = q.dirty_since.is_some();
                let due = q.dirty_since.is_some_and(|t| t.elapsed() >= self.interval);
                let durable =
                    due || batch.iter().any(|j| j.durable()) || mixes_origins(&q.pending, &batch);
                if !durable {
                    // Recorded before the commit makes the batch visible: a reader
                    // that sees it then sees it pending (`has_unsynced_beyond`).
                    for j in &batch {
                        if !q.pending.contains(&j.origin()) {
                            q.pending.push(j.origin());
                        }
                    }
                    q.dirty_since.get_or_insert_with(Instant::now);
                }
                (batch, durable, was_dirty)
            };
            let jobs = batch.len() as u64;
            let origins: Vec<Origin> = batch.iter().map(|j| j.origin()).collect();
            let outcome = self.worker.lock().run_batch(batch, durable);
            {
                let mut s = self.stats.lock();
                s.commits += 1;
                s.jobs += jobs;
                s.durable_commits += u64::from(outcome);
            }
            let mut q = self.queue.lock();
            if outcome {
                q.dirty_since = None;
                q.pending.clear();
                if self.hold.as_ref().is_some_and(|h| h.held() > 0) {
                    // Held runs: the timer commits again when the first may go.
                    self.wake_timer.notify_all();
                }
            } else {
                if q.dirty_since.is_none() {
                    q.dirty_since = Some(Instant::now());
                }
                for j in origins {
                    if !q.pending.contains(&j) {
                        q.pending.push(j);
                    }
                }
                // The timer learns once that changes wait (not at every commit).
                if !was_dirty {
                    self.wake_timer.notify_all();
                }
            }
        }
    }

    /// Makes non-durable changes durable at most `interval` after the first one.
    fn run_timer(&self) {
        loop {
            let due = {
                let mut q = self.queue.lock();
                loop {
                    if q.stopped {
                        return;
                    }
                    let release = self.hold.as_ref().and_then(|h| h.next_release());
                    if release.is_some_and(|at| at <= Instant::now()) {
                        break;
                    }
                    let until_release = release.map_or(Duration::from_secs(3600), |at| {
                        at.saturating_duration_since(Instant::now())
                    });
                    match q.dirty_since {
                        Some(t) if t.elapsed() >= self.interval => break,
                        Some(t) => {
                            let left = (self.interval - t.elapsed()).min(until_release);
                            self.wake_timer.wait_for(&mut q, left);
                        }
                        None => {
                            self.wake_timer.wait_for(&mut q, until_release);
                        }
                    }
                }
                true
            };
            if due {
                let _ = self.submit(JobKind::DURABLE, |_| Ok(()));
            }
        }
    }
}

/// True when committing `batch` without a flush would let another node's change see,
/// or sit beside, a change of a different origin that is not durable either (see the
/// module's notes). This node's own changes may follow another node's without one:
/// they die with this node anyway.
fn mixes_origins(pending: &[Origin], batch: &[Box<dyn Job>]) -> bool {
    let all = || {
        pending
            .iter()
            .copied()
            .chain(batch.iter().map(|j| j.origin()))
    };
    batch.iter().any(|j| match j.origin() {
        Origin::Node(n) => all().any(|o| o != Origin::Node(n)),
        Origin::Local => false,
    })
}

impl Worker {
    /// Runs a batch; returns true when everything is now durable.
    fn run_batch(&mut self, mut batch: Vec<Box<dyn Job>>, durable: bool) -> bool {
        let first = self.commit(&mut batch, durable);
        match first {
            Ok(()) => {
                let frees = batch.iter().any(|j| j.frees_space());
                for j in batch {
                    j.finish(Ok(()));
                }
                if frees && self.reserve_missing {
                    self.restore_reserve();
                }
                durable || self.store.needs_durable_commits()
            }
            Err(e) => {
                if is_space_failure(&e) {
                    self.after_full();
                }
                let mut all_durable = true;
                for j in batch {
                    let mut one = [j];
                    let mut r = self.commit(&mut one, durable);
                    if r.as_ref().is_err_and(is_space_failure) {
                        self.after_full();
                        if one[0].frees_space() && self.give_up_reserve() {
                            r = self.commit(&mut one, durable);
                            if r.as_ref().is_err_and(is_space_failure) {
                                self.after_full();
                            }
                        }
                    }
                    all_durable &= r.is_ok();
                    let [j] = one;
                    j.finish(r.map_err(|e| {
                        if is_space_failure(&e) {
                            MetaError::MetadataFull
                        } else {
                            e
                        }
                    }));
                }
                all_durable && durable
            }
        }
    }

    /// The store failed to grow: reopen it (nothing is lost: near a full region every
    /// commit is durable).
    fn after_full(&self) {
        if let Err(e) = self.store.reopen() {
            tracing::error!(error = %e, "cannot reopen the metadata store");
        }
    }

    /// Drops the reserve value so that operations that free space find pages.
    fn give_up_reserve(&mut self) -> bool {
        if self.reserve_missing {
            return false;
        }
        let given = self.commit_with(true, |txn| take_reserve(txn).map(|_| ()));
        if given.is_ok() {
            tracing::warn!("metadata region full: using its reserve to free space");
            self.reserve_missing = true;
            true
        } else {
            self.after_full();
            false
        }
    }

    fn restore_reserve(&mut self) {
        let capacity = self.store.backend().usage().0;
        match self.commit_with(true, |txn| put_reserve(txn, capacity).map(|_| ())) {
            Ok(()) => self.reserve_missing = false,
            Err(e) if is_space_failure(&e) => self.after_full(),
            Err(e) => tracing::warn!(error = %e, "cannot restore the metadata reserve"),
        }
    }

    fn commit_with(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> MetaResult<()>,
    ) -> MetaResult<()> {
        let db = self.store.db();
        let mut txn = db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        if durable {
            txn.set_quick_repair(true);
        }
        match f(&txn) {
            Ok(()) => Ok(txn.commit()?),
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    fn commit(&self, jobs: &mut [Box<dyn Job>], durable: bool) -> MetaResult<()> {
        let durable = durable || self.store.needs_durable_commits();
        self.commit_with(durable, |txn| {
            for j in jobs.iter_mut() {
                j.run(txn)?;
            }
            if durable {
                // Freed extents become reusable only once their freeing is durable,
                // and on a shared volume once no layout handed out may cover them.
                release_pending(txn, self.hold.as_deref())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{JobKind, Origin};
    use crate::volume::Volume;

    fn change(vol: &Volume, origin: Origin) {
        vol.write(
            JobKind {
                origin,
                ..JobKind::default()
            },
            |_| Ok(()),
        )
        .unwrap();
    }

    #[test]
    fn another_nodes_change_waits_for_a_flush_only_beside_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let vol = crate::volume::scratch_volume(dir.path());
        vol.sync().unwrap();
        let flushes = || vol.commit_stats().durable_commits;
        let start = flushes();
        let (two, three) = (Origin::Node(2), Origin::Node(3));
        change(&vol, two);
        change(&vol, two);
        assert_eq!(flushes(), start, "node 2 alone: no flush");
        assert!(!vol.has_unsynced_beyond(two));
        assert!(vol.has_unsynced_beyond(three) && vol.has_unsynced_beyond(Origin::Local));
        // This node's own change may follow without a flush (it dies with this node)...
        change(&vol, Origin::Local);
        assert_eq!(flushes(), start);
        assert!(
            vol.has_unsynced_beyond(two),
            "node 2 would now see a local change"
        );
        // ...but node 2's next change may not sit beside it.
        change(&vol, two);
        assert_eq!(flushes(), start + 1);
        assert!(!vol.has_unsynced());
        // Nor may node 3's beside node 2's.
        change(&vol, two);
        assert_eq!(flushes(), start + 1);
        change(&vol, three);
        assert_eq!(flushes(), start + 2);
        // Local changes alone never flush.
        change(&vol, Origin::Local);
        change(&vol, Origin::Local);
        assert_eq!(flushes(), start + 2);
    }
}
