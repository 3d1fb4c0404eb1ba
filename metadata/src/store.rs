//! The metadata store as one handle that can be reopened.
//!
//! redb treats a failed growth of its file as an I/O error and refuses every later
//! commit until the database is reopened. The metadata region is fixed, so a full
//! region must not end that way. Three rules make it safe:
//! - while a growth could run past the region (redb doubles its file), every commit is
//!   durable, so reopening loses nothing (`needs_durable_commits`);
//! - a failed growth reopens the store and fails only the jobs that needed the space;
//! - a reserve value of `RESERVE_BYTES` is kept in the store; when the region is full it
//!   is dropped, so that operations that free space (unlink, truncate) always find pages.

use std::sync::Arc;

use parking_lot::RwLock;
use redb::{Database, ReadableTable, WriteTransaction};

use crate::error::{MetaError, MetaResult};
use crate::region_backend::RegionBackend;
use crate::tables::RESERVE;

/// The store: a redb database on the metadata region.
#[derive(Debug)]
pub struct Store {
    db: RwLock<Arc<Database>>,
    backend: RegionBackend,
    cache_bytes: usize,
}

impl Store {
    /// Opens (or, on an empty region, creates) the database.
    pub fn open(backend: RegionBackend, cache_bytes: usize) -> MetaResult<Store> {
        let db = Self::open_db(&backend, cache_bytes)?;
        Ok(Store {
            db: RwLock::new(Arc::new(db)),
            backend,
            cache_bytes,
        })
    }

    fn open_db(backend: &RegionBackend, cache_bytes: usize) -> MetaResult<Database> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(cache_bytes);
        // A damaged store can make redb panic while it opens; that is an error here.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            builder.create_with_backend(backend.clone())
        }))
        .map_err(|_| {
            MetaError::Corrupt(
                "the metadata store is damaged beyond what redb can open; run fsck.csvfs".into(),
            )
        })?
        .map_err(Into::into)
    }

    /// The database, for a read or a write transaction.
    pub fn db(&self) -> Arc<Database> {
        self.db.read().clone()
    }

    /// The storage under the database.
    pub fn backend(&self) -> &RegionBackend {
        &self.backend
    }

    /// Closes and reopens the database (after a failed growth). Waits for readers of
    /// the old instance to finish first, so that two instances never share the region.
    pub fn reopen(&self) -> MetaResult<()> {
        let mut slot = self.db.write();
        let start = std::time::Instant::now();
        while Arc::strong_count(&slot) > 1 {
            if start.elapsed() > std::time::Duration::from_secs(30) {
                tracing::warn!(
                    "readers still hold the metadata store after 30 s; reopening anyway"
                );
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Drop the old instance before the new one reads the region.
        let placeholder =
            Arc::new(Self::open_db(&self.backend, self.cache_bytes).map_err(|e| {
                tracing::error!(error = %e, "reopening the metadata store failed");
                e
            })?);
        let old = std::mem::replace(&mut *slot, placeholder);
        drop(old);
        tracing::info!("metadata store reopened after a failed growth (region full)");
        Ok(())
    }

    /// True while the next growth of redb's file could run past the region: then every
    /// commit must be durable.
    pub fn needs_durable_commits(&self) -> bool {
        let (capacity, len) = self.backend.usage();
        // redb doubles its file (up to 4 GiB regions), plus a few header pages.
        len.saturating_add(len.min(8 << 30)).saturating_add(2 << 20) > capacity
    }
}

/// Bytes held back in the store for operations that free space.
pub fn reserve_bytes(capacity: u64) -> usize {
    (capacity / 32).clamp(256 << 10, 16 << 20) as usize
}

/// Puts the reserve value in place if it is missing.
pub fn put_reserve(txn: &WriteTransaction, capacity: u64) -> MetaResult<bool> {
    let mut t = txn.open_table(RESERVE)?;
    if t.get(0)?.is_some() {
        return Ok(false);
    }
    t.insert(0, vec![0u8; reserve_bytes(capacity)].as_slice())?;
    Ok(true)
}

/// Drops the reserve value, if present.
pub fn take_reserve(txn: &WriteTransaction) -> MetaResult<bool> {
    Ok(txn.open_table(RESERVE)?.remove(0)?.is_some())
}
