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
use redb::{Database, Durability, WriteTransaction};

use crate::alloc::release_pending;
use crate::error::{MetaError, MetaResult};
use crate::region_backend::RegionBackend;

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
    db: Arc<Database>,
    backend: RegionBackend,
    stats: Arc<Mutex<CommitStats>>,
}

impl Committer {
    /// Starts the committer; non-durable changes become durable within `interval`.
    pub fn start(db: Arc<Database>, backend: RegionBackend, interval: Duration) -> Committer {
        let (tx, rx) = unbounded();
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let worker = Worker {
            db,
            backend,
            stats: stats.clone(),
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
    fn run(self, rx: Receiver<Request>, interval: Duration) {
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
    fn run_batch(&self, mut batch: Vec<Box<dyn Job>>, durable: bool) -> bool {
        match self.commit(&mut batch, durable) {
            Ok(()) => {
                for j in batch {
                    j.finish(Ok(()));
                }
                durable
            }
            Err(e) if batch.len() == 1 => {
                batch.pop().expect("one job").finish(Err(e));
                false
            }
            Err(_) => {
                let mut all_durable = durable;
                for j in batch {
                    let mut one = [j];
                    let r = self.commit(&mut one, durable);
                    all_durable &= r.is_ok();
                    let [j] = one;
                    j.finish(r);
                }
                all_durable
            }
        }
    }

    fn commit(&self, jobs: &mut [Box<dyn Job>], durable: bool) -> MetaResult<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        if durable {
            txn.set_quick_repair(true);
        }
        self.backend
            .set_allow_reserve(jobs.iter().any(|j| j.frees_space()));
        let outcome = (|| {
            for j in jobs.iter_mut() {
                j.run(&txn)?;
            }
            if durable {
                // Freed extents become reusable only once their freeing is durable.
                self.backend.set_allow_reserve(true);
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
        self.backend.set_allow_reserve(false);
        if result.is_ok() {
            let mut s = self.stats.lock();
            s.commits += 1;
            s.jobs += jobs.len() as u64;
            s.durable_commits += u64::from(durable);
        }
        result
    }
}
