//! Group commit: the single writer of the metadata store.
//!
//! Every change to the store is a job, a closure over a write transaction, sent to one
//! committer thread. The committer runs all the jobs waiting at that moment in one
//! transaction, so concurrent operations share one commit (and, when durable, one
//! flush). A job that fails must leave nothing behind: when any job of a batch fails,
//! the batch is thrown away and each job runs again in a transaction of its own, so
//! only the failing one fails.
//!
//! Commits are not durable by default (redb `Durability::None`): they are visible to
//! readers at once and become durable at the next durable commit, which happens when a
//! job asks for it (fsync) or at the latest `interval` after the first change, as a
//! journal commit does in ext4. Extents freed in between wait in PENDING_FREE and are
//! released in the durable commit (see [`crate::alloc`]).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use parking_lot::Mutex;
use redb::{Durability, WriteTransaction};

use crate::alloc::release_pending;
use crate::error::{MetaError, MetaResult};
use crate::store::{Store, put_reserve, take_reserve};

/// Most jobs one transaction takes.
const MAX_BATCH: usize = 256;

trait Job: Send {
    fn run(&mut self, txn: &WriteTransaction) -> MetaResult<()>;
    fn finish(self: Box<Self>, outcome: MetaResult<()>);
    fn frees_space(&self) -> bool;
    fn durable(&self) -> bool;
}

struct TypedJob<F, R> {
    f: F,
    result: Option<R>,
    reply: Sender<MetaResult<R>>,
    frees: bool,
    durable: bool,
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
}

enum Request {
    Job(Box<dyn Job>),
    Shutdown(Sender<MetaResult<()>>),
}

/// How a job wants to be committed.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobKind {
    /// The job frees space, so it may use the metadata reserve.
    pub frees_space: bool,
    /// The job's commit must be durable before it returns (fsync).
    pub durable: bool,
}

impl JobKind {
    /// A job that removes things (unlink, truncate, delete): it may use the metadata
    /// region's reserve, so that a full volume can always be emptied.
    pub const FREES: JobKind = JobKind {
        frees_space: true,
        durable: false,
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

/// The handle to the committer thread.
#[derive(Debug)]
pub struct Committer {
    tx: Sender<Request>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Mutex<CommitStats>>,
}

struct Worker {
    store: Arc<Store>,
    stats: Arc<Mutex<CommitStats>>,
    /// The reserve value was given up to let a full volume free space.
    reserve_missing: bool,
}

/// A failure that means the metadata region is full (redb then has to be reopened).
fn is_space_failure(e: &MetaError) -> bool {
    e.is_metadata_full()
}

impl Committer {
    /// Starts the committer; non-durable changes become durable within `interval`.
    pub fn start(store: Arc<Store>, interval: Duration) -> Committer {
        let (tx, rx) = unbounded();
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let worker = Worker {
            store,
            stats: stats.clone(),
            reserve_missing: false,
        };
        let thread = std::thread::Builder::new()
            .name("csvfs-commit".into())
            .spawn(move || worker.run(rx, interval))
            .expect("spawn committer thread");
        Committer {
            tx,
            thread: Mutex::new(Some(thread)),
            stats,
        }
    }

    /// Runs `f` in a write transaction and returns its result once committed.
    pub fn submit<R, F>(&self, kind: JobKind, f: F) -> MetaResult<R>
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
        };
        self.tx
            .send(Request::Job(Box::new(job)))
            .map_err(|_| MetaError::Store("the committer has stopped".into()))?;
        rx.recv()
            .map_err(|_| MetaError::Store("the committer has stopped".into()))?
    }

    /// Makes every change committed so far durable.
    pub fn sync(&self) -> MetaResult<()> {
        self.submit(
            JobKind {
                frees_space: false,
                durable: true,
            },
            |_| Ok(()),
        )
    }

    /// Makes everything durable and stops the thread.
    pub fn shutdown(&self) -> MetaResult<()> {
        let Some(thread) = self.thread.lock().take() else {
            return Ok(());
        };
        let (ack, rx) = bounded(1);
        let sent = self.tx.send(Request::Shutdown(ack)).is_ok();
        let result = if sent {
            rx.recv().unwrap_or(Ok(()))
        } else {
            Ok(())
        };
        let _ = thread.join();
        result
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitStats {
        *self.stats.lock()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Worker {
    fn run(mut self, rx: Receiver<Request>, interval: Duration) {
        let mut dirty_since: Option<Instant> = None;
        loop {
            let timeout = match dirty_since {
                Some(t) => interval.saturating_sub(t.elapsed()),
                None => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(timeout) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    if dirty_since.is_some() && self.commit(&mut [], true).is_ok() {
                        dirty_since = None;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.commit(&mut [], true);
                    return;
                }
            };
            let mut batch: Vec<Box<dyn Job>> = Vec::new();
            let mut shutdown = None;
            match first {
                Request::Job(j) => batch.push(j),
                Request::Shutdown(ack) => shutdown = Some(ack),
            }
            while shutdown.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Request::Job(j)) => batch.push(j),
                    Ok(Request::Shutdown(ack)) => shutdown = Some(ack),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let due = dirty_since.is_some_and(|t| t.elapsed() >= interval);
                let durable = due || shutdown.is_some() || batch.iter().any(|j| j.durable());
                if self.run_batch(batch, durable) {
                    dirty_since = None;
                } else if dirty_since.is_none() {
                    dirty_since = Some(Instant::now());
                }
            }
            if let Some(ack) = shutdown {
                let r = self.commit(&mut [], true);
                let _ = ack.send(r);
                return;
            }
        }
    }

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
        txn.set_quick_repair(true);
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
        let outcome = (|| {
            for j in jobs.iter_mut() {
                j.run(&txn)?;
            }
            if durable {
                // Freed extents become reusable only once their freeing is durable.
                release_pending(&txn)?;
            }
            Ok(())
        })();
        let result = match outcome {
            Ok(()) => txn.commit().map_err(MetaError::from),
            Err(e) => {
                let _ = txn.abort();
                Err(e)
            }
        };
        if result.is_ok() {
            let mut s = self.stats.lock();
            s.commits += 1;
            s.jobs += jobs.len() as u64;
            s.durable_commits += u64::from(durable);
        }
        result
    }
}
