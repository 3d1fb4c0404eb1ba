//! An open VHD: the disk's bytes read and written by sector, for either kind.
//!
//! Opening checks everything a later read or write relies on, so that a malformed
//! file is refused up front with an error naming the problem: the footer (cookie,
//! checksum, type, size), a fixed disk's length, a dynamic disk's header, a BAT that
//! fits in the file and covers the disk, and blocks that lie inside the file and
//! overlap neither the header, the BAT nor each other.
//!
//! A dynamic disk's new block is placed where the footer was: the footer is written
//! first at the new end, then the block's data, then its bitmap (over the old
//! footer), and only then its BAT entry, so a crash at any point leaves a valid image
//! in which the block is either absent (its space leaked) or complete.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::Path;

use parking_lot::Mutex;

use super::dynamic_header::{DEFAULT_BLOCK_SIZE, DynamicHeader, HEADER_SIZE, MAX_BLOCK_SIZE};
use super::footer::{DiskType, FOOTER_SIZE, Footer};
use super::{Backing, SECTOR, VhdError};

/// A BAT entry for a block never written.
const UNALLOCATED: u32 = u32::MAX;
/// The largest disk this code creates: the format's limit (2040 GiB).
pub const MAX_DISK_SIZE: u64 = 2040 << 30;

/// An open VHD over a backing store.
pub struct VhdImage<B: Backing = File> {
    backing: B,
    footer: Footer,
    dynamic: Option<Mutex<Dynamic>>,
    read_only: bool,
}

/// A dynamic disk's table and where its next block goes.
struct Dynamic {
    header: DynamicHeader,
    bat: Vec<u32>,
    /// Where the footer is now, and where the next new block will start.
    footer_at: u64,
    /// Sector bitmaps read so far, by block; `None` once known to be all ones.
    bitmaps: HashMap<u32, Option<Box<[u8]>>>,
}

impl<B: Backing> std::fmt::Debug for VhdImage<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdImage")
            .field("type", &self.footer.disk_type)
            .field("size", &self.footer.current_size)
            .finish()
    }
}

impl VhdImage<File> {
    /// Opens the VHD file at `path`, read-write unless `read_only`.
    pub fn open_path(path: &Path, read_only: bool) -> Result<VhdImage<File>, VhdError> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        VhdImage::open(file, read_only)
    }

    /// Creates a new VHD file at `path` (which must not exist) of `size` bytes.
    pub fn create_path(path: &Path, kind: DiskType, size: u64) -> Result<VhdImage<File>, VhdError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        VhdImage::create(file, kind, size)
    }
}

impl<B: Backing> VhdImage<B> {
    /// Writes a new, empty VHD of `size` bytes into `backing` (which should be empty).
    /// A fixed disk's data is left sparse where the backing allows.
    pub fn create(backing: B, kind: DiskType, size: u64) -> Result<VhdImage<B>, VhdError> {
        VhdImage::create_with_block_size(backing, kind, size, DEFAULT_BLOCK_SIZE)
    }

    /// As [`VhdImage::create`], with a dynamic disk's blocks of `block_size` bytes (a
    /// power of two from 512 bytes to 256 MiB) instead of the usual 2 MiB.
    pub fn create_with_block_size(
        backing: B,
        kind: DiskType,
        size: u64,
        block_size: u32,
    ) -> Result<VhdImage<B>, VhdError> {
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(VhdError::InvalidRequest(format!(
                "a VHD's block size must be a power of two from 512 bytes to 256 MiB, not {block_size}"
            )));
        }
        if size == 0 || !size.is_multiple_of(SECTOR) || size > MAX_DISK_SIZE {
            return Err(VhdError::InvalidRequest(format!(
                "a VHD's size must be a non-zero multiple of 512 bytes up to 2040 GiB, not {size}"
            )));
        }
        let footer = Footer::new(kind, size);
        let encoded = footer.encode();
        match kind {
            DiskType::Fixed => backing.write_all_at(&encoded, size)?,
            DiskType::Dynamic => {
                let entries = u32::try_from(size.div_ceil(block_size as u64)).map_err(|_| {
                    VhdError::InvalidRequest(format!(
                        "{size} bytes in blocks of {block_size} need too many BAT entries"
                    ))
                })?;
                let header = DynamicHeader {
                    table_offset: (FOOTER_SIZE + HEADER_SIZE) as u64,
                    max_table_entries: entries,
                    block_size,
                };
                backing.write_all_at(&encoded, 0)?;
                backing.write_all_at(&header.encode(), FOOTER_SIZE as u64)?;
                let table = vec![0xffu8; header.table_size() as usize];
                backing.write_all_at(&table, header.table_offset)?;
                backing.write_all_at(&encoded, header.table_offset + header.table_size())?;
            }
        }
        backing.sync()?;
        VhdImage::open(backing, false)
    }

    /// Opens the VHD in `backing`, checking its structure (module docs).
    pub fn open(backing: B, read_only: bool) -> Result<VhdImage<B>, VhdError> {
        let len = backing.len()?;
        if len < FOOTER_SIZE as u64 {
            return Err(VhdError::Truncated(format!(
                "the file has {len} bytes, fewer than a footer's 512"
            )));
        }
        let footer_at = len - FOOTER_SIZE as u64;
        let mut raw = [0u8; FOOTER_SIZE];
        backing.read_exact_at(&mut raw, footer_at)?;
        let footer = match Footer::decode(&raw) {
            Err(VhdError::NotVhd) => {
                // A dynamic disk keeps a copy of its footer at the start: if that one is
                // there, the file lost its end.
                backing.read_exact_at(&mut raw, 0)?;
                return Err(match Footer::decode(&raw) {
                    Ok(_) => VhdError::Truncated(format!(
                        "the footer copy at the start is there but the footer at the end \
                         (byte {footer_at}) is not: the file has lost its end"
                    )),
                    Err(_) => VhdError::NotVhd,
                });
            }
            other => other?,
        };
        let dynamic = match footer.disk_type {
            DiskType::Fixed => {
                if footer_at < footer.current_size {
                    return Err(VhdError::Truncated(format!(
                        "a fixed disk of {} bytes in a file of {len} bytes",
                        footer.current_size
                    )));
                }
                if footer_at != footer.current_size {
                    return Err(VhdError::Corrupt(format!(
                        "a fixed disk of {} bytes has its footer at byte {footer_at}",
                        footer.current_size
                    )));
                }
                None
            }
            DiskType::Dynamic => Some(Mutex::new(open_dynamic(&backing, &footer, footer_at)?)),
        };
        Ok(VhdImage {
            backing,
            footer,
            dynamic,
            read_only,
        })
    }

    /// The disk's size in bytes, as the guest sees it.
    pub fn size(&self) -> u64 {
        self.footer.current_size
    }

    /// Fixed or dynamic.
    pub fn disk_type(&self) -> DiskType {
        self.footer.disk_type
    }

    /// The footer as read (or written) at open.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Bytes of the file taken by data blocks (a dynamic disk's allocated blocks, a
    /// fixed disk's whole size).
    pub fn allocated(&self) -> u64 {
        match &self.dynamic {
            None => self.footer.current_size,
            Some(d) => {
                let d = d.lock();
                let n = d.bat.iter().filter(|&&e| e != UNALLOCATED).count() as u64;
                n * d.header.block_size as u64
            }
        }
    }

    /// The backing store.
    pub fn backing(&self) -> &B {
        &self.backing
    }

    /// Reads `buf.len()` bytes of the disk at `offset`; both must be whole sectors.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), VhdError> {
        self.check_range(buf.len(), offset)?;
        let Some(dynamic) = &self.dynamic else {
            return Ok(self.backing.read_exact_at(buf, offset)?);
        };
        let block_size = dynamic.lock().header.block_size as u64;
        for (block, within, range) in pieces(offset, buf.len(), block_size) {
            let out = &mut buf[range];
            let (start, bitmap) = {
                let mut d = dynamic.lock();
                match d.bat[block as usize] {
                    UNALLOCATED => (None, None),
                    sector => {
                        let bitmap = d.bitmap(&self.backing, block)?;
                        (
                            Some(sector as u64 * SECTOR + d.header.bitmap_size()),
                            bitmap,
                        )
                    }
                }
            };
            match (start, bitmap) {
                (None, _) => out.fill(0),
                (Some(start), None) => self.backing.read_exact_at(out, start + within)?,
                (Some(start), Some(bits)) => {
                    read_by_bitmap(&self.backing, out, start, within, &bits)?
                }
            }
        }
        Ok(())
    }

    /// Writes `buf` to the disk at `offset`; both must be whole sectors. A dynamic
    /// disk allocates the blocks it first writes.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), VhdError> {
        if self.read_only {
            return Err(VhdError::ReadOnly);
        }
        self.check_range(buf.len(), offset)?;
        let Some(dynamic) = &self.dynamic else {
            return Ok(self.backing.write_all_at(buf, offset)?);
        };
        let block_size = dynamic.lock().header.block_size as u64;
        for (block, within, range) in pieces(offset, buf.len(), block_size) {
            let n = range.len();
            let data = &buf[range];
            let mut d = dynamic.lock();
            match d.bat[block as usize] {
                UNALLOCATED => d.allocate(&self.backing, &self.footer, block, within, data)?,
                sector => {
                    let start = sector as u64 * SECTOR;
                    let data_at = start + d.header.bitmap_size() + within;
                    let complete = d.bitmap(&self.backing, block)?.is_none();
                    drop(d);
                    self.backing.write_all_at(data, data_at)?;
                    if !complete {
                        // A block from another writer that marks sectors absent: mark
                        // these present, under the lock so no other update is lost.
                        let mut d = dynamic.lock();
                        if let Some(old) = d.bitmap(&self.backing, block)? {
                            let mut bits = Vec::from(old);
                            let first = within / SECTOR;
                            (first..first + n as u64 / SECTOR).for_each(|s| set_bit(&mut bits, s));
                            self.backing.write_all_at(&bits, start)?;
                            d.remember_bitmap(block, bits.into_boxed_slice());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), VhdError> {
        Ok(self.backing.sync()?)
    }

    fn check_range(&self, len: usize, offset: u64) -> Result<(), VhdError> {
        let end = offset.checked_add(len as u64);
        if !offset.is_multiple_of(SECTOR) || !(len as u64).is_multiple_of(SECTOR) {
            return Err(VhdError::InvalidRequest(format!(
                "I/O of {len} bytes at {offset} is not in whole 512-byte sectors"
            )));
        }
        if end.is_none_or(|e| e > self.footer.current_size) {
            return Err(VhdError::InvalidRequest(format!(
                "I/O of {len} bytes at {offset} runs past the end of a {}-byte disk",
                self.footer.current_size
            )));
        }
        Ok(())
    }
}

impl Dynamic {
    /// Block `block`'s sector bitmap, `None` when every sector holds data.
    fn bitmap<B: Backing>(
        &mut self,
        backing: &B,
        block: u32,
    ) -> Result<Option<Box<[u8]>>, VhdError> {
        if let Some(known) = self.bitmaps.get(&block) {
            return Ok(known.clone());
        }
        let mut bits = vec![0u8; self.header.bitmap_size() as usize];
        backing.read_exact_at(&mut bits, self.bat[block as usize] as u64 * SECTOR)?;
        let sectors = self.header.block_size as u64 / SECTOR;
        let full = (0..sectors).all(|s| bit(&bits, s));
        let bits = (!full).then(|| bits.into_boxed_slice());
        self.bitmaps.insert(block, bits.clone());
        Ok(bits)
    }

    fn remember_bitmap(&mut self, block: u32, bits: Box<[u8]>) {
        let sectors = self.header.block_size as u64 / SECTOR;
        let full = (0..sectors).all(|s| bit(&bits, s));
        self.bitmaps.insert(block, (!full).then_some(bits));
    }

    /// Places block `block` at the end of the file holding `data` at `within`: footer
    /// at the new end, data, bitmap (every sector present: the rest of the block reads
    /// as zeros, since the file is extended over it), then the BAT entry. The old
    /// footer's 512 bytes always fall within the new bitmap, which overwrites them.
    fn allocate<B: Backing>(
        &mut self,
        backing: &B,
        footer: &Footer,
        block: u32,
        within: u64,
        data: &[u8],
    ) -> Result<(), VhdError> {
        let start = self.footer_at.div_ceil(SECTOR) * SECTOR;
        let sector = u32::try_from(start / SECTOR).map_err(|_| {
            VhdError::Unsupported("the file would grow past the 2 TiB a BAT can address".into())
        })?;
        let bitmap_size = self.header.bitmap_size();
        let block_size = self.header.block_size as u64;
        let new_footer_at = start + bitmap_size + block_size;
        backing.write_all_at(&footer.encode(), new_footer_at)?;
        backing.write_all_at(data, start + bitmap_size + within)?;
        backing.write_all_at(&vec![0xffu8; bitmap_size as usize], start)?;
        backing.write_all_at(
            &sector.to_be_bytes(),
            self.header.table_offset + block as u64 * 4,
        )?;
        self.bat[block as usize] = sector;
        self.footer_at = new_footer_at;
        self.bitmaps.insert(block, None);
        Ok(())
    }
}

/// Reads and checks a dynamic disk's header and BAT (module docs).
fn open_dynamic<B: Backing>(
    backing: &B,
    footer: &Footer,
    footer_at: u64,
) -> Result<Dynamic, VhdError> {
    let at = footer.data_offset;
    if at
        .checked_add(HEADER_SIZE as u64)
        .is_none_or(|end| end > footer_at)
    {
        return Err(VhdError::Truncated(format!(
            "the dynamic disk header at byte {at} is not inside the file"
        )));
    }
    let mut raw = [0u8; HEADER_SIZE];
    backing.read_exact_at(&mut raw, at)?;
    let header = DynamicHeader::decode(&raw)?;
    let block_size = header.block_size as u64;
    let needed = footer.current_size.div_ceil(block_size);
    if (header.max_table_entries as u64) < needed {
        return Err(VhdError::Corrupt(format!(
            "the BAT has {} entries of {block_size} bytes, fewer than the {needed} a {}-byte disk needs",
            header.max_table_entries, footer.current_size
        )));
    }
    let table_end = header.table_offset.checked_add(header.table_size());
    if header.table_offset < (at + HEADER_SIZE as u64).min(FOOTER_SIZE as u64 + HEADER_SIZE as u64)
        || table_end.is_none_or(|end| end > footer_at)
    {
        return Err(VhdError::Truncated(format!(
            "the BAT ({} entries at byte {}) is not inside the file before its footer at byte {footer_at}",
            header.max_table_entries, header.table_offset
        )));
    }
    let table_end = header.table_offset + header.table_size();
    let mut raw = vec![0u8; needed as usize * 4];
    backing.read_exact_at(&mut raw, header.table_offset)?;
    let bat: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // Every allocated block inside the file, past the header and the BAT, and not
    // overlapping another.
    let reserved_end = table_end.max(at + HEADER_SIZE as u64);
    let mut spans = Vec::new();
    for (i, &entry) in bat.iter().enumerate() {
        if entry == UNALLOCATED {
            continue;
        }
        let start = entry as u64 * SECTOR;
        let data = block_size.min(footer.current_size - i as u64 * block_size);
        let end = start + header.bitmap_size() + data;
        if start < reserved_end || end > footer_at {
            return Err(VhdError::Corrupt(format!(
                "BAT entry {i} points to sector {entry}, outside the data area \
                 (bytes {reserved_end} to {footer_at})"
            )));
        }
        spans.push((start, end, i));
    }
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
        return Err(VhdError::Corrupt(format!(
            "blocks {} and {} overlap in the file (BAT entries {} and {})",
            w[0].2, w[1].2, w[0].2, w[1].2
        )));
    }
    Ok(Dynamic {
        header,
        bat,
        footer_at,
        bitmaps: HashMap::new(),
    })
}

/// Splits `len` bytes of the disk at `offset` at block boundaries: for each piece, its
/// block, its offset within the block, and its range within the caller's buffer.
fn pieces(
    offset: u64,
    len: usize,
    block_size: u64,
) -> impl Iterator<Item = (u32, u64, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done == len {
            return None;
        }
        let pos = offset + done as u64;
        let within = pos % block_size;
        let n = ((block_size - within) as usize).min(len - done);
        let piece = ((pos / block_size) as u32, within, done..done + n);
        done += n;
        Some(piece)
    })
}

fn bit(bits: &[u8], sector: u64) -> bool {
    bits[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0
}

fn set_bit(bits: &mut [u8], sector: u64) {
    bits[(sector / 8) as usize] |= 0x80 >> (sector % 8);
}

/// Reads a block's sectors into `out` where the bitmap says they hold data, zeros
/// where it says they do not.
fn read_by_bitmap<B: Backing>(
    backing: &B,
    out: &mut [u8],
    start: u64,
    within: u64,
    bits: &[u8],
) -> Result<(), VhdError> {
    let first = within / SECTOR;
    let mut i = 0u64;
    let count = out.len() as u64 / SECTOR;
    while i < count {
        let present = bit(bits, first + i);
        let run = (i..count)
            .take_while(|&s| bit(bits, first + s) == present)
            .count() as u64;
        let dst = &mut out[(i * SECTOR) as usize..((i + run) * SECTOR) as usize];
        if present {
            backing.read_exact_at(dst, start + within + i * SECTOR)?;
        } else {
            dst.fill(0);
        }
        i += run;
    }
    Ok(())
}
