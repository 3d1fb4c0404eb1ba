//! Metadata side of the data path: allocating, committing, truncating, punching and
//! zeroing file blocks. The data itself is read and written by the caller, directly on
//! the LUN, between [`Ctx::allocate_range`] and [`Ctx::commit_write`]; blocks are
//! allocated unwritten and only marked written once their data is on the LUN, so a
//! crash never shows another file's old bytes.

use crate::alloc::{allocate, free_later};
use crate::error::{MetaError, MetaResult};
use crate::extent::{Extent, Segment, extents_in, insert, remove_range, segments, set_unwritten};
use crate::inode::Inode;
use crate::namespace::Ctx;
use crate::tables::EXTENTS;
use blockdev::FS_BLOCK_SIZE;

const BS: u64 = FS_BLOCK_SIZE as u64;

/// The largest file size: logical block numbers stay far from overflow.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

impl Ctx<'_> {
    fn regular(&self, ino: u64) -> MetaResult<Inode> {
        let inode = self.inode(ino)?;
        if inode.is_dir() {
            return Err(MetaError::IsDir);
        }
        Ok(inode)
    }

    /// Fills the holes of `[from, to)` with unwritten blocks; returns the range's map.
    pub fn allocate_range(&self, ino: u64, from: u64, to: u64) -> MetaResult<Vec<Segment>> {
        let mut inode = self.regular(ino)?;
        if to.saturating_mul(BS) > MAX_FILE_SIZE {
            return Err(MetaError::Invalid("file too large"));
        }
        let mut t = self.txn.open_table(EXTENTS)?;
        let before = extents_in(&t, ino, from, to)?;
        let mut added = 0;
        for seg in segments(&before, from, to) {
            let Segment::Hole { logical, len } = seg else {
                continue;
            };
            // Aim for the block after the previous extent, so files stay contiguous.
            let goal = match extents_in(&t, ino, logical.saturating_sub(1), logical)?.first() {
                Some(prev) if prev.logical_end() == logical => prev.physical + prev.len,
                _ => 0,
            };
            drop(t);
            let runs = allocate(self.txn, goal, len)?;
            t = self.txn.open_table(EXTENTS)?;
            let mut at = logical;
            for (physical, n) in runs {
                insert(
                    &mut t,
                    ino,
                    Extent {
                        logical: at,
                        physical,
                        len: n,
                        unwritten: true,
                    },
                )?;
                at += n;
            }
            added += len;
        }
        let after = extents_in(&t, ino, from, to)?;
        drop(t);
        if added > 0 {
            inode.blocks += added;
            self.put(ino, &inode)?;
        }
        Ok(segments(&after, from, to))
    }

    /// Marks `[from, to)` written after its data reached the LUN, and records a write
    /// that ended at byte `end`.
    pub fn commit_write(&self, ino: u64, from: u64, to: u64, end: u64) -> MetaResult<Inode> {
        let mut inode = self.regular(ino)?;
        set_unwritten(&mut self.txn.open_table(EXTENTS)?, ino, from, to, false)?;
        inode.size = inode.size.max(end);
        inode.mtime = self.now;
        inode.ctime = self.now;
        self.put(ino, &inode)?;
        Ok(inode)
    }

    fn release(&self, ino: u64, inode: &mut Inode, from: u64, to: u64) -> MetaResult<()> {
        let freed = remove_range(&mut self.txn.open_table(EXTENTS)?, ino, from, to)?;
        for e in freed {
            free_later(self.txn, e.physical, e.len)?;
            inode.blocks = inode.blocks.saturating_sub(e.len);
        }
        Ok(())
    }

    /// Sets the size; blocks wholly past the new end are freed. The caller has already
    /// zeroed the tail of a partial last block on the LUN.
    pub fn truncate(&self, ino: u64, size: u64) -> MetaResult<Inode> {
        if size > MAX_FILE_SIZE {
            return Err(MetaError::Invalid("file too large"));
        }
        let mut inode = self.regular(ino)?;
        if size < inode.size {
            self.release(ino, &mut inode, size.div_ceil(BS), u64::MAX)?;
        }
        inode.size = size;
        inode.mtime = self.now;
        inode.ctime = self.now;
        self.put(ino, &inode)?;
        Ok(inode)
    }

    /// Frees whole blocks `[from, to)` (FALLOC_FL_PUNCH_HOLE); the caller zeroed the
    /// partial blocks at the ends.
    pub fn punch(&self, ino: u64, from: u64, to: u64) -> MetaResult<Inode> {
        let mut inode = self.regular(ino)?;
        self.release(ino, &mut inode, from, to)?;
        inode.mtime = self.now;
        inode.ctime = self.now;
        self.put(ino, &inode)?;
        Ok(inode)
    }

    /// Preallocates `[from, to)` (fallocate mode 0, KEEP_SIZE) or zeroes it
    /// (ZERO_RANGE: written blocks become unwritten). `new_size` grows the file unless
    /// KEEP_SIZE.
    pub fn preallocate(
        &self,
        ino: u64,
        from: u64,
        to: u64,
        zero: bool,
        new_size: Option<u64>,
    ) -> MetaResult<Inode> {
        self.allocate_range(ino, from, to)?;
        let mut inode = self.inode(ino)?;
        if zero {
            set_unwritten(&mut self.txn.open_table(EXTENTS)?, ino, from, to, true)?;
            inode.mtime = self.now;
        }
        if let Some(s) = new_size
            && s > inode.size
        {
            inode.size = s;
            inode.mtime = self.now;
        }
        inode.ctime = self.now;
        self.put(ino, &inode)?;
        Ok(inode)
    }
}
