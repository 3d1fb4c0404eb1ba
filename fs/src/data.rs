//! The data path of one node: file bytes read and written directly on the LUN at the
//! blocks of the file's extents.
//!
//! Writes into holes first get unwritten blocks from the metadata store, then write
//! whole blocks (partial ones merged with their old contents, or zeros), then commit
//! the blocks as written together with the new size. Bytes past the end of a file
//! inside its last block are not trusted to be zero on the LUN: an in-place write past
//! the end can land while the crash loses its new size. So every operation that grows
//! a file (a write past the end, truncate, fallocate) first zeroes the old last block
//! from the old end on. Callers hold the inode's data lock (shared to read, exclusive
//! to change).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blockdev::{AlignedBuf, BlockDevice, FS_BLOCK_SIZE};
use metadata::{Inode, MetaError, MetaResult, Segment, Timestamp};

use crate::meta::Meta;
use crate::times::PendingTimes;

const BS: u64 = FS_BLOCK_SIZE as u64;

/// Bytes read from a file: an aligned buffer and the part of it to return.
pub struct ReadBuf {
    buf: AlignedBuf,
    start: usize,
    len: usize,
}

impl ReadBuf {
    /// The bytes read.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// Reads and writes file data of one volume.
pub struct DataPath {
    meta: Meta,
    dev: Arc<dyn BlockDevice>,
    /// Keep the times of in-place overwrites here until fsync or close (a node that
    /// shares the volume must not: the others see a change by its time).
    defer_times: bool,
    /// Times of in-place overwrites not yet committed.
    pub times: PendingTimes,
    /// File bytes this node moved on the LUN itself.
    pub counters: Arc<DataCounters>,
    /// On a shared volume, how long after asking for a layout its blocks may still be
    /// read or written (the coordinator keeps freed blocks from reuse that long and a
    /// drain interval more: see metadata::free_hold).
    layout_use: Option<Duration>,
}

/// Attempts of one read or write whose layout goes stale before its I/O starts.
const STALE_ATTEMPTS: u32 = 5;

/// File bytes read and written on the LUN by one node, for status.
#[derive(Debug, Default)]
pub struct DataCounters {
    /// Bytes read.
    pub read: AtomicU64,
    /// Bytes written.
    pub written: AtomicU64,
}

fn segment_slice(buf: &mut [u8], first_block: u64, logical: u64, len: u64) -> &mut [u8] {
    let at = ((logical - first_block) * BS) as usize;
    &mut buf[at..at + (len * BS) as usize]
}

impl DataPath {
    /// The data path of a volume on `dev` whose metadata `meta` keeps.
    pub fn new(meta: Meta, dev: Arc<dyn BlockDevice>, defer_times: bool) -> DataPath {
        DataPath {
            meta,
            dev,
            defer_times,
            times: PendingTimes::default(),
            counters: Arc::default(),
            layout_use: None,
        }
    }

    /// Uses a layout for I/O on the LUN only within `limit` of asking for it; an
    /// operation whose layout is older when its next I/O would start asks again.
    pub fn set_layout_use(&mut self, limit: Duration) {
        self.layout_use = Some(limit);
    }

    /// Fails with `StaleLayout` if a layout asked for at `asked` may no longer be used.
    fn check_fresh(&self, asked: Instant) -> MetaResult<()> {
        match self.layout_use {
            Some(limit) if asked.elapsed() >= limit => Err(MetaError::StaleLayout(1)),
            _ => Ok(()),
        }
    }

    /// Runs `op` (given the moment it asks for its layout) again while its layout goes
    /// stale before its I/O, up to [`STALE_ATTEMPTS`] times. Reads and writes of whole
    /// ranges are idempotent, so a partly done attempt is simply done again.
    fn fresh<R>(&self, op: impl Fn(Instant) -> MetaResult<R>) -> MetaResult<R> {
        for _ in 1..STALE_ATTEMPTS {
            match op(Instant::now()) {
                Err(MetaError::StaleLayout(_)) => {
                    tracing::debug!("a layout went stale before its I/O: asking again");
                }
                other => return other,
            }
        }
        op(Instant::now()).map_err(|e| match e {
            MetaError::StaleLayout(_) => MetaError::StaleLayout(STALE_ATTEMPTS),
            e => e,
        })
    }

    /// Reads file blocks at byte `at` of the LUN, with a layout asked for at `asked`.
    fn lun_read(&self, asked: Instant, buf: &mut [u8], at: u64) -> MetaResult<()> {
        self.check_fresh(asked)?;
        self.dev.read_at(buf, at)?;
        self.counters
            .read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes file blocks at byte `at` of the LUN, with a layout asked for at `asked`.
    fn lun_write(&self, asked: Instant, buf: &[u8], at: u64) -> MetaResult<()> {
        self.check_fresh(asked)?;
        self.dev.write_at(buf, at)?;
        self.counters
            .written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> MetaResult<ReadBuf> {
        self.fresh(|asked| self.read_once(asked, ino, offset, size))
    }

    fn read_once(&self, asked: Instant, ino: u64, offset: u64, size: u32) -> MetaResult<ReadBuf> {
        let want_end = offset.saturating_add(u64::from(size));
        let (inode, extents) = self.meta.layout(ino, offset / BS, want_end.div_ceil(BS))?;
        if inode.is_dir() {
            return Err(MetaError::IsDir);
        }
        let end = want_end.min(inode.size);
        if offset >= end {
            return Ok(ReadBuf {
                buf: AlignedBuf::zeroed(0),
                start: 0,
                len: 0,
            });
        }
        let (b0, b1) = (offset / BS, end.div_ceil(BS));
        let mut buf = AlignedBuf::for_overwrite(((b1 - b0) * BS) as usize);
        for seg in metadata::extent::segments(&extents, b0, b1) {
            match seg {
                Segment::Mapped(e) if !e.unwritten => self.lun_read(
                    asked,
                    segment_slice(&mut buf, b0, e.logical, e.len),
                    e.physical * BS,
                )?,
                Segment::Mapped(e) => segment_slice(&mut buf, b0, e.logical, e.len).fill(0),
                Segment::Hole { logical, len } => segment_slice(&mut buf, b0, logical, len).fill(0),
            }
        }
        Ok(ReadBuf {
            buf,
            start: (offset - b0 * BS) as usize,
            len: (end - offset) as usize,
        })
    }

    /// Runs an allocating operation; when the volume is full, makes pending frees
    /// durable (which releases them) and tries once more, so that space freed a moment
    /// ago is usable at once. On a shared volume freed blocks may also be held while
    /// layouts handed out before their freeing run out (metadata::free_hold): it keeps
    /// trying for that long.
    fn with_space<R>(&self, op: impl Fn() -> MetaResult<R>) -> MetaResult<R> {
        let deadline = self.layout_use.map(|u| Instant::now() + 2 * u);
        let mut result = op();
        while matches!(result, Err(MetaError::NoSpace)) {
            self.meta.sync()?;
            result = op();
            if !matches!(result, Err(MetaError::NoSpace))
                || deadline.is_none_or(|d| Instant::now() >= d)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        result
    }

    /// Fills `out` with one block of a range's map: its data if it holds written data,
    /// zeros otherwise.
    fn load_block(
        &self,
        asked: Instant,
        segs: &[Segment],
        block: u64,
        out: &mut [u8],
    ) -> MetaResult<()> {
        for seg in segs {
            if let Segment::Mapped(e) = seg
                && !e.unwritten
                && e.logical <= block
                && block < e.logical_end()
            {
                return self.lun_read(asked, out, (e.physical + block - e.logical) * BS);
            }
        }
        out.fill(0);
        Ok(())
    }

    fn map(&self, ino: u64, b0: u64, b1: u64) -> MetaResult<Vec<Segment>> {
        let (_, extents) = self.meta.layout(ino, b0, b1)?;
        Ok(metadata::extent::segments(&extents, b0, b1))
    }

    /// Writes `data` at `offset`; returns the inode after the write.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> MetaResult<Inode> {
        self.fresh(|asked| self.write_once(asked, ino, offset, data))
    }

    fn write_once(&self, asked: Instant, ino: u64, offset: u64, data: &[u8]) -> MetaResult<Inode> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(MetaError::Invalid("write past the largest offset"))?;
        if end > metadata::filemap::MAX_FILE_SIZE {
            return Err(MetaError::Invalid("file too large"));
        }
        if data.is_empty() {
            return self.meta.inode(ino);
        }
        let (b0, b1) = (offset / BS, end.div_ceil(BS));
        let (inode, extents) = self.meta.layout(ino, b0, b1)?;
        let size = inode.size;
        if offset > size && size / BS < b0 {
            self.zero_beyond_eof(ino, size)?;
        }
        let before = metadata::extent::segments(&extents, b0, b1);
        let in_place = self.defer_times
            && end <= size
            && before
                .iter()
                .all(|s| matches!(s, Segment::Mapped(e) if !e.unwritten));
        let segs = if before.iter().any(|s| matches!(s, Segment::Hole { .. })) {
            self.with_space(|| self.meta.allocate_range(ino, b0, b1))?
        } else {
            before.clone()
        };
        // Every byte of the buffer is set below: the data, and around it the old
        // contents of partial blocks (or zeros).
        let mut buf = AlignedBuf::for_overwrite(((b1 - b0) * BS) as usize);
        if !offset.is_multiple_of(BS) {
            self.load_block(asked, &before, b0, &mut buf[..BS as usize])?;
        }
        if !end.is_multiple_of(BS) && (b1 - 1 != b0 || offset.is_multiple_of(BS)) {
            let at = ((b1 - 1 - b0) * BS) as usize;
            self.load_block(asked, &before, b1 - 1, &mut buf[at..at + BS as usize])?;
        }
        if offset > size && size / BS == b0 {
            // The old end is inside the first block: what lies between it and this write
            // reads as zeros.
            buf[(size - b0 * BS) as usize..(offset - b0 * BS) as usize].fill(0);
        }
        let at = (offset - b0 * BS) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        for seg in &segs {
            match seg {
                Segment::Mapped(e) => {
                    let at = ((e.logical - b0) * BS) as usize;
                    self.lun_write(asked, &buf[at..at + (e.len * BS) as usize], e.physical * BS)?;
                }
                Segment::Hole { .. } => {
                    return Err(MetaError::Store("allocation left a hole".into()));
                }
            }
        }
        if in_place {
            // Nothing changed on disk but the times: defer them (see crate::times).
            let mut inode = inode;
            self.times.touch(ino, Timestamp::now());
            self.times.overlay(ino, &mut inode);
            return Ok(inode);
        }
        let inode = self.meta.commit_write(ino, b0, b1, end)?;
        self.times.discard(ino);
        Ok(inode)
    }

    /// Commits the deferred times of `ino`.
    pub fn flush_times(&self, ino: u64) -> MetaResult<()> {
        match self.times.take(ino) {
            Some(t) => self.meta.touch_times(vec![(ino, t)]),
            None => Ok(()),
        }
    }

    /// Commits every deferred time.
    pub fn flush_all_times(&self) -> MetaResult<()> {
        let all = self.times.take_all();
        if all.is_empty() {
            return Ok(());
        }
        self.meta.touch_times(all)
    }

    /// Zeroes bytes `[from, to)` of one block on the LUN, if the block holds written data.
    fn zero_partial(&self, ino: u64, block: u64, from: u64, to: u64) -> MetaResult<()> {
        if from >= to {
            return Ok(());
        }
        self.fresh(|asked| {
            let segs = self.map(ino, block, block + 1)?;
            if let Some(Segment::Mapped(e)) = segs.first()
                && !e.unwritten
            {
                let mut buf = AlignedBuf::zeroed(BS as usize);
                self.lun_read(asked, &mut buf, e.physical * BS)?;
                buf[(from - block * BS) as usize..(to - block * BS) as usize].fill(0);
                self.lun_write(asked, &buf, e.physical * BS)?;
            }
            Ok(())
        })
    }

    /// Zeroes the old last block from the old end `size` on, before the file grows.
    fn zero_beyond_eof(&self, ino: u64, size: u64) -> MetaResult<()> {
        if size.is_multiple_of(BS) {
            return Ok(());
        }
        let block = size / BS;
        self.zero_partial(ino, block, size, (block + 1) * BS)
    }

    /// Zeroes the partial blocks at the ends of `[from, to)`; returns the whole blocks
    /// inside it as `[first, last)`.
    fn zero_edges(&self, ino: u64, from: u64, to: u64) -> MetaResult<(u64, u64)> {
        let (first, last) = (from.div_ceil(BS), to / BS);
        if first > last {
            // Inside one block.
            self.zero_partial(ino, from / BS, from, to)?;
            return Ok((first, first));
        }
        if !from.is_multiple_of(BS) {
            self.zero_partial(ino, from / BS, from, first * BS)?;
        }
        if !to.is_multiple_of(BS) {
            self.zero_partial(ino, last, last * BS, to)?;
        }
        Ok((first, last))
    }

    /// Sets the file size.
    pub fn truncate(&self, ino: u64, size: u64) -> MetaResult<Inode> {
        let inode = self.meta.inode(ino)?;
        if inode.is_dir() {
            return Err(MetaError::IsDir);
        }
        if size > metadata::filemap::MAX_FILE_SIZE {
            return Err(MetaError::Invalid("file too large"));
        }
        // Shrinking: the new last block's tail; growing: the old one's.
        self.zero_beyond_eof(ino, size.min(inode.size))?;
        let inode = self.meta.truncate(ino, size)?;
        self.times.discard(ino);
        Ok(inode)
    }

    /// fallocate(2): `mode` as the syscall takes it.
    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> MetaResult<Inode> {
        let inode = self.fallocate_ops(ino, offset, len, mode)?;
        self.times.discard(ino);
        Ok(inode)
    }

    fn fallocate_ops(&self, ino: u64, offset: u64, len: u64, mode: i32) -> MetaResult<Inode> {
        let end = offset
            .checked_add(len)
            .ok_or(MetaError::Invalid("range overflows"))?;
        if len == 0 {
            return Err(MetaError::Invalid("zero length"));
        }
        if end > metadata::filemap::MAX_FILE_SIZE {
            return Err(MetaError::Invalid("file too large"));
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let new_size = if keep_size { None } else { Some(end) };
        let size = self.meta.inode(ino)?.size;
        if !keep_size && end > size {
            self.zero_beyond_eof(ino, size)?;
        }
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => {
                let (b0, b1) = (offset / BS, end.div_ceil(BS));
                self.with_space(|| self.meta.preallocate(ino, (b0, b1), false, new_size))
            }
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => {
                let (first, last) = self.zero_edges(ino, offset, end)?;
                self.meta.punch(ino, first, last)
            }
            libc::FALLOC_FL_ZERO_RANGE => {
                // Partial blocks were zeroed on the LUN; whole blocks become unwritten.
                let (first, last) = self.zero_edges(ino, offset, end)?;
                self.with_space(|| self.meta.preallocate(ino, (first, last), true, new_size))
            }
            _ => Err(MetaError::NotSupported),
        }
    }
}
