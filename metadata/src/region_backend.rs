//! The metadata store's storage: a redb `StorageBackend` over the metadata region.
//!
//! redb wants a growable file; the region is fixed. The backend keeps redb's logical
//! length in a small header (redb forces a recovery when `len()` disagrees with its
//! own layout) and refuses growth past the region with `StorageFull`, which the store
//! reports as ENOSPC (see [`crate::store`] for how a full region is survived).
//!
//! Region layout: blocks 0 and 1 hold two header slots, written alternately, so a torn
//! header write leaves the other; redb's bytes start at block 2.
//!
//! Header slot (little-endian, rest of the block zero):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CSVFSMR\0` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | sequence number, the higher valid slot wins |
//! | 24 | 8 | logical length of the store in bytes |
//! | 32 | 32 | blake3 of bytes 0..32 |

use std::io;
use std::sync::Arc;

use blockdev::{AlignedBuf, BlockDevice, FS_BLOCK_SIZE};
use parking_lot::Mutex;

use crate::error::{MetaError, MetaResult};
use crate::layout::Region;

const MAGIC: [u8; 8] = *b"CSVFSMR\0";
const VERSION: u32 = 1;
const HEADER_SLOTS: u64 = 2;
const BS: u64 = FS_BLOCK_SIZE as u64;

/// One decoded header slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionHeader {
    /// Higher is newer.
    pub sequence: u64,
    /// redb's logical length in bytes.
    pub len: u64,
}

impl RegionHeader {
    /// Encodes into one block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BS as usize];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        let sum = blake3::hash(&b[..32]);
        b[32..64].copy_from_slice(sum.as_bytes());
        b
    }

    /// Decodes one slot; never panics.
    pub fn decode(b: &[u8]) -> MetaResult<RegionHeader> {
        if b.len() < 64 {
            return Err(MetaError::Corrupt(
                "metadata region header is truncated".into(),
            ));
        }
        if b[..8] != MAGIC {
            return Err(MetaError::Corrupt(
                "metadata region header has no magic".into(),
            ));
        }
        if blake3::hash(&b[..32]).as_bytes() != &b[32..64] {
            return Err(MetaError::Corrupt(
                "metadata region header checksum mismatch".into(),
            ));
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(MetaError::Corrupt(format!(
                "metadata region header version {version}"
            )));
        }
        Ok(RegionHeader {
            sequence: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            len: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        })
    }
}

#[derive(Debug)]
struct LenState {
    header: RegionHeader,
}

/// redb's storage on the metadata region of a LUN.
#[derive(Debug, Clone)]
pub struct RegionBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dev: Arc<dyn BlockDevice>,
    /// Byte offset of the store's byte 0 on the LUN.
    base: u64,
    /// Bytes the store may use.
    capacity: u64,
    len: Mutex<LenState>,
    /// Serialises read-modify-write of partial blocks.
    rmw: Mutex<()>,
    read_only: bool,
}

impl RegionBackend {
    /// Formats the region's header for an empty store.
    pub fn format(dev: &dyn BlockDevice, region: Region) -> MetaResult<()> {
        let mut buf = AlignedBuf::zeroed(BS as usize);
        for slot in 0..HEADER_SLOTS {
            let h = RegionHeader {
                sequence: slot,
                len: 0,
            };
            buf.copy_from_slice(&h.encode());
            dev.write_at(&buf, region.byte_offset() + slot * BS)?;
        }
        Ok(())
    }

    /// Opens the region of an existing volume.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        region: Region,
        read_only: bool,
    ) -> MetaResult<RegionBackend> {
        let header = Self::read_header(&*dev, region)?;
        let capacity = region.byte_len().saturating_sub(HEADER_SLOTS * BS);
        if header.len > capacity {
            return Err(MetaError::Corrupt(format!(
                "metadata store length {} exceeds its region ({capacity} bytes)",
                header.len
            )));
        }
        Ok(RegionBackend {
            inner: Arc::new(Inner {
                dev,
                base: region.byte_offset() + HEADER_SLOTS * BS,
                capacity,
                len: Mutex::new(LenState { header }),
                rmw: Mutex::new(()),
                read_only,
            }),
        })
    }

    /// The newest valid header slot.
    pub fn read_header(dev: &dyn BlockDevice, region: Region) -> MetaResult<RegionHeader> {
        let mut buf = AlignedBuf::zeroed(BS as usize);
        let mut best: Option<RegionHeader> = None;
        let mut last_err = None;
        for slot in 0..HEADER_SLOTS {
            dev.read_at(&mut buf, region.byte_offset() + slot * BS)?;
            match RegionHeader::decode(&buf) {
                Ok(h) if best.is_none_or(|b| h.sequence > b.sequence) => best = Some(h),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
        }
        best.ok_or_else(|| last_err.expect("two slots were read"))
    }

    /// Bytes the store may grow to, and its current length.
    pub fn usage(&self) -> (u64, u64) {
        (self.inner.capacity, self.inner.len.lock().header.len)
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        let cur = self.inner.len.lock().header.len;
        match offset.checked_add(len as u64) {
            Some(end) if end <= cur => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("metadata store access at {offset}+{len} past its length {cur}"),
            )),
        }
    }

    fn write_zeros(&self, from: u64, to: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let mut at = from;
        while at < to {
            let head = at % BS;
            if head != 0 {
                let n = (BS - head).min(to - at);
                self.write_unaligned(at, &vec![0u8; n as usize])?;
                at += n;
                continue;
            }
            let n = (to - at).min(CHUNK);
            if !n.is_multiple_of(BS) {
                self.write_unaligned(at, &vec![0u8; n as usize])?;
            } else {
                let zero = AlignedBuf::zeroed(n as usize);
                self.inner.dev.write_at(&zero, self.inner.base + at)?;
            }
            at += n;
        }
        Ok(())
    }

    fn write_unaligned(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _g = self.inner.rmw.lock();
        let start = offset / BS * BS;
        let end = (offset + data.len() as u64).div_ceil(BS) * BS;
        let mut buf = AlignedBuf::zeroed((end - start) as usize);
        self.inner.dev.read_at(&mut buf, self.inner.base + start)?;
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.inner.dev.write_at(&buf, self.inner.base + start)?;
        Ok(())
    }
}

impl redb::StorageBackend for RegionBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.len.lock().header.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.check(offset, out.len())?;
        if offset.is_multiple_of(BS) && (out.len() as u64).is_multiple_of(BS) {
            return Ok(self.inner.dev.read_at(out, self.inner.base + offset)?);
        }
        let start = offset / BS * BS;
        let end = (offset + out.len() as u64).div_ceil(BS) * BS;
        let mut buf = AlignedBuf::zeroed((end - start) as usize);
        self.inner.dev.read_at(&mut buf, self.inner.base + start)?;
        let at = (offset - start) as usize;
        out.copy_from_slice(&buf[at..at + out.len()]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.inner.read_only {
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                "volume is read-only",
            ));
        }
        if len > self.inner.capacity {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "metadata region is full",
            ));
        }
        let old = self.inner.len.lock().header.len;
        if len > old {
            // New bytes must read as zero; the region may hold an older volume's bytes.
            self.write_zeros(old, len)?;
        }
        let mut st = self.inner.len.lock();
        let header = RegionHeader {
            sequence: st.header.sequence + 1,
            len,
        };
        let mut buf = AlignedBuf::zeroed(BS as usize);
        buf.copy_from_slice(&header.encode());
        let slot = header.sequence % HEADER_SLOTS;
        self.inner
            .dev
            .write_at(&buf, self.inner.base - (HEADER_SLOTS - slot) * BS)?;
        st.header = header;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(self.inner.dev.flush()?)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.inner.read_only {
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                "volume is read-only",
            ));
        }
        self.check(offset, data.len())?;
        if offset.is_multiple_of(BS) && (data.len() as u64).is_multiple_of(BS) {
            return Ok(self.inner.dev.write_at(data, self.inner.base + offset)?);
        }
        self.write_unaligned(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redb::StorageBackend;

    #[test]
    fn length_persists_and_growth_stops_at_the_region() {
        let dev: Arc<dyn BlockDevice> = Arc::new(blockdev::CrashSimDevice::new(64 * BS));
        let region = Region {
            start: 4,
            blocks: 40,
        };
        RegionBackend::format(&*dev, region).unwrap();
        let b = RegionBackend::open(dev.clone(), region, false).unwrap();
        b.set_len(10 * BS).unwrap();
        b.write(100, b"hello").unwrap();
        let b2 = RegionBackend::open(dev.clone(), region, false).unwrap();
        assert_eq!(b2.len().unwrap(), 10 * BS);
        let mut out = [0u8; 5];
        b2.read(100, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        let err = b2.set_len(39 * BS).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        b2.set_len(38 * BS).unwrap();
    }

    proptest! {
        #[test]
        fn header_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RegionHeader::decode(&bytes);
        }
    }
}
