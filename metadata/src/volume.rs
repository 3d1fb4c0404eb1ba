//! A volume: the superblock, the metadata store on its region and the committer, as
//! one handle. `format` is mkfs; `open` is what a mount does.

use std::sync::Arc;
use std::time::Duration;

use blockdev::{AlignedBuf, BlockDevice, FS_BLOCK_SIZE};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use crate::alloc::{add_counter, free_now};
use crate::commit::{CommitStats, Committer, JobKind};
use crate::error::{MetaError, MetaResult};
use crate::free_hold::FreeHold;
use crate::inode::{Inode, ROOT_INO, Timestamp};
use crate::layout::{Layout, Region};
use crate::namespace::Ctx;
use crate::query::Snapshot;
use crate::region_backend::RegionBackend;
use crate::store::Store;
use crate::superblock::{MAX_LABEL_LEN, Superblock};
use crate::tables::{
    COUNTERS, DIR_COOKIES, DIRENTS, EXTENTS, FREE, FREE_BY_LEN, INODES, ORPHANS, PENDING_FREE,
    SYMLINKS, XATTRS, counter,
};

/// How to open a volume.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Never write to the LUN.
    pub read_only: bool,
    /// Bytes of metadata pages redb keeps in memory.
    pub cache_bytes: usize,
    /// Longest time a non-durable change waits for a durable commit.
    pub durable_interval: Duration,
    /// Leave the inodes unlinked while open where they are (a shared volume: another
    /// node may have them open still) instead of deleting them at open.
    pub keep_orphans: bool,
    /// On a shared volume, how long a layout handed out may be in use (its holder's
    /// limit plus the drain interval): freed blocks are not reused before
    /// (see [`crate::free_hold`]). `None` on a single node.
    pub layout_life: Option<Duration>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            cache_bytes: 64 << 20,
            durable_interval: Duration::from_secs(1),
            keep_orphans: false,
            layout_life: None,
        }
    }
}

/// What mkfs is asked to make.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// The volume's label (its directory under /ClusterStorage).
    pub label: String,
    /// Size of the metadata region; default: see [`Layout::plan`].
    pub metadata_bytes: Option<u64>,
    /// Format even if the LUN holds a csvfs volume.
    pub force: bool,
}

/// Space figures for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Blocks of the data region.
    pub data_blocks: u64,
    /// Free data blocks.
    pub free_blocks: u64,
    /// Inodes in use.
    pub inodes: u64,
    /// An estimate of how many inodes the metadata region holds in all.
    pub inode_capacity: u64,
}

/// An open volume.
#[derive(Debug)]
pub struct Volume {
    dev: Arc<dyn BlockDevice>,
    sb: Superblock,
    store: Arc<Store>,
    committer: Option<Committer>,
    /// Freed blocks kept from reuse while layouts may cover them (a shared volume).
    hold: Option<Arc<FreeHold>>,
}

/// Bytes of metadata one small file costs, for the inode estimate of statfs.
const BYTES_PER_INODE_ESTIMATE: u64 = 512;

/// Checks a label: 1 to 63 bytes, usable as a directory name.
pub fn check_label(label: &str) -> MetaResult<()> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(MetaError::Invalid("the label must be 1 to 63 bytes"));
    }
    if label == "."
        || label == ".."
        || label.contains('/')
        || label.contains('\0')
        || label.contains(char::is_whitespace)
    {
        return Err(MetaError::Invalid(
            "the label must be a plain directory name without spaces",
        ));
    }
    Ok(())
}

impl Volume {
    /// Formats `dev` (mkfs). Refuses a LUN that holds a csvfs volume unless `force`.
    pub fn format(dev: Arc<dyn BlockDevice>, opts: &FormatOptions) -> MetaResult<Superblock> {
        check_label(&opts.label)?;
        if !opts.force
            && let Ok((existing, _)) = Superblock::read(&*dev)
        {
            return Err(MetaError::AlreadyFormatted {
                lun: dev.name().to_string(),
                label: existing.label.clone(),
                uuid: existing.uuid_string(),
            });
        }
        let layout = Layout::plan(dev.capacity(), opts.metadata_bytes)?;
        let bs = u64::from(FS_BLOCK_SIZE);
        // Wipe both superblock copies first: a crash during mkfs must not leave an old
        // superblock pointing at a half-written metadata region.
        let zero = AlignedBuf::zeroed(bs as usize);
        dev.write_at(&zero, 0)?;
        dev.write_at(&zero, (layout.total_blocks - 1) * bs)?;
        let cluster_zero = AlignedBuf::zeroed(layout.cluster.byte_len() as usize);
        dev.write_at(&cluster_zero, layout.cluster.byte_offset())?;
        RegionBackend::format(&*dev, layout.metadata)?;
        dev.flush()?;
        let backend = RegionBackend::open(dev.clone(), layout.metadata, false)?;
        let capacity = backend.usage().0;
        let db = redb::Builder::new().create_with_backend(backend)?;
        let now = Timestamp::now();
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        Self::init_tables(&txn, layout.data, now)?;
        crate::store::put_reserve(&txn, capacity)?;
        txn.commit()?;
        drop(db);
        let created = now.secs.max(0) as u64;
        let sb = layout.superblock(&opts.label, *uuid::Uuid::new_v4().as_bytes(), created);
        sb.write(&*dev)?;
        Ok(sb)
    }

    fn init_tables(txn: &WriteTransaction, data: Region, now: Timestamp) -> MetaResult<()> {
        // Create every table so that read transactions never meet a missing one.
        txn.open_table(INODES)?;
        txn.open_table(DIRENTS)?;
        txn.open_table(DIR_COOKIES)?;
        txn.open_table(EXTENTS)?;
        txn.open_table(XATTRS)?;
        txn.open_table(SYMLINKS)?;
        txn.open_table(FREE)?;
        txn.open_table(FREE_BY_LEN)?;
        txn.open_table(PENDING_FREE)?;
        txn.open_table(ORPHANS)?;
        txn.open_table(COUNTERS)?
            .insert(counter::NEXT_INO, ROOT_INO + 1)?;
        let mut root = Inode::new(libc::S_IFDIR | 0o755, 0, 0, now);
        root.nlink = 2;
        root.parent = ROOT_INO;
        root.generation = ROOT_INO;
        txn.open_table(INODES)?
            .insert(ROOT_INO, root.encode().as_slice())?;
        add_counter(txn, counter::INODES, 1)?;
        free_now(txn, data.start, data.blocks)?;
        Ok(())
    }

    /// Opens a formatted volume.
    pub fn open(dev: Arc<dyn BlockDevice>, opts: &OpenOptions) -> MetaResult<Volume> {
        let (sb, primary_bad) = Superblock::read(&*dev).map_err(|e| match e {
            MetaError::Corrupt(m) => {
                MetaError::Corrupt(format!("{} is not a csvfs volume ({m})", dev.name()))
            }
            other => other,
        })?;
        let bs = u64::from(FS_BLOCK_SIZE);
        if sb.total_blocks * bs > dev.capacity() {
            return Err(MetaError::Corrupt(format!(
                "the superblock describes {} bytes but the LUN has {}",
                sb.total_blocks * bs,
                dev.capacity()
            )));
        }
        if primary_bad && !opts.read_only {
            tracing::warn!(
                lun = dev.name(),
                "primary superblock is damaged; restoring it from the backup copy"
            );
            sb.write(&*dev)?;
        }
        // A read-only mount must never write the LUN, but redb may write while it opens
        // (recovery after a crash): give it a copy-on-write view that keeps such writes
        // in memory.
        let store_dev: Arc<dyn BlockDevice> = if opts.read_only {
            Arc::new(blockdev::OverlayDevice::new(dev.clone()))
        } else {
            dev.clone()
        };
        let backend = RegionBackend::open(store_dev, sb.metadata, false)?;
        // Read-only mounts open the same way but never commit: redb's read-only open
        // refuses a store that was not shut down cleanly, and such a volume must still
        // mount read-only.
        let store = Arc::new(Store::open(backend, opts.cache_bytes)?);
        let hold = opts.layout_life.map(|l| Arc::new(FreeHold::new(l)));
        let committer = if opts.read_only {
            None
        } else {
            Some(Committer::start(
                store.clone(),
                opts.durable_interval,
                hold.clone(),
            ))
        };
        let vol = Volume {
            dev,
            sb,
            store,
            committer,
            hold,
        };
        if !opts.read_only && !opts.keep_orphans {
            let n = vol.write(
                JobKind {
                    frees_space: true,
                    durable: true,
                    ..JobKind::default()
                },
                |c| c.delete_orphans(),
            )?;
            if n > 0 {
                tracing::info!(
                    orphans = n,
                    "deleted orphan inodes left by an earlier mount"
                );
            }
        }
        Ok(vol)
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The LUN.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// True when opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.committer.is_none()
    }

    /// A layout (extents to read or write directly) is about to be read and handed
    /// out: blocks freed from now on wait until it has run out (a shared volume; a
    /// single node needs nothing).
    pub fn layout_given(&self) {
        if let Some(h) = &self.hold {
            h.layout_given();
        }
    }

    /// How many freed runs wait for layouts to run out.
    pub fn held_frees(&self) -> usize {
        self.hold.as_ref().map_or(0, |h| h.held())
    }

    /// A consistent view of the store as of now.
    pub fn snapshot(&self) -> MetaResult<Snapshot> {
        Ok(Snapshot::new(self.store.db().begin_read()?))
    }

    /// Runs `f` in the next group commit and returns its result once committed.
    pub fn write<R, F>(&self, kind: JobKind, f: F) -> MetaResult<R>
    where
        R: Send + 'static,
        F: Fn(&Ctx<'_>) -> MetaResult<R> + Send + 'static,
    {
        let committer = self.committer.as_ref().ok_or(MetaError::ReadOnly)?;
        committer.submit(kind, move |txn| {
            f(&Ctx {
                txn,
                now: Timestamp::now(),
            })
        })
    }

    /// Makes every change so far durable (fsync).
    pub fn sync(&self) -> MetaResult<()> {
        match &self.committer {
            Some(c) => c.sync(),
            None => Ok(()),
        }
    }

    /// True while committed changes wait for a durable commit.
    pub fn has_unsynced(&self) -> bool {
        self.committer.as_ref().is_some_and(|c| c.has_unsynced())
    }

    /// True while changes of an origin other than `origin` wait for a durable commit
    /// (see [`crate::commit`]).
    pub fn has_unsynced_beyond(&self, origin: crate::commit::Origin) -> bool {
        self.committer
            .as_ref()
            .is_some_and(|c| c.has_unsynced_beyond(origin))
    }

    /// Space and inode figures.
    pub fn usage(&self) -> MetaResult<Usage> {
        let snap = self.snapshot()?;
        let c = snap.txn().open_table(COUNTERS)?;
        let get = |n: &str| -> MetaResult<u64> { Ok(c.get(n)?.map(|v| v.value()).unwrap_or(0)) };
        let (capacity, _) = self.store.backend().usage();
        // Extents freed since the last durable commit are free within a second; a full
        // volume releases them at once (see the data path), so they count as free.
        let mut pending = 0;
        for e in snap.txn().open_table(PENDING_FREE)?.iter()? {
            pending += e?.1.value();
        }
        Ok(Usage {
            data_blocks: self.sb.data.blocks,
            free_blocks: get(counter::FREE_BLOCKS)? + pending,
            inodes: get(counter::INODES)?,
            inode_capacity: capacity / BYTES_PER_INODE_ESTIMATE,
        })
    }

    /// Committer counters.
    pub fn commit_stats(&self) -> CommitStats {
        self.committer
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default()
    }

    /// Makes everything durable and stops the committer (unmount).
    pub fn close(&self) -> MetaResult<()> {
        match &self.committer {
            Some(c) => c.shutdown(),
            None => Ok(()),
        }
    }
}

/// A volume freshly formatted on a 64 MiB image in `dir`, opened: for unit tests.
#[cfg(test)]
pub(crate) fn scratch_volume(dir: &std::path::Path) -> Volume {
    let img = dir.join("lun.img");
    blockdev::FileDevice::create_image(&img, 64 << 20).unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(blockdev::FileDevice::open(&img, false).unwrap());
    let opts = FormatOptions {
        label: "t".into(),
        metadata_bytes: None,
        force: false,
    };
    Volume::format(dev.clone(), &opts).unwrap();
    Volume::open(dev, &OpenOptions::default()).unwrap()
}
