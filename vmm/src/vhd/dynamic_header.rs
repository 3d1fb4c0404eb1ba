//! The dynamic disk header: 1024 bytes at the footer's data offset (512 in the files
//! this code writes) saying where the block allocation table (BAT) is, how many
//! entries it has and how large a block is.
//!
//! Layout (big-endian, 1024 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | cookie `cxsparse` |
//! | 8 | 8 | data offset: all ones (unused) |
//! | 16 | 8 | table offset: the BAT's absolute byte offset |
//! | 24 | 4 | header version (0x0001_0000) |
//! | 28 | 4 | max table entries: BAT entries, one per block of the disk |
//! | 32 | 4 | block size in bytes (2 MiB by default; a power of two) |
//! | 36 | 4 | checksum: ones' complement of the sum of every other byte |
//! | 40 | 16 | parent unique id (differencing disks only) |
//! | 56 | 4 | parent time stamp |
//! | 60 | 4 | reserved |
//! | 64 | 512 | parent name, UTF-16 |
//! | 576 | 192 | 8 parent locator entries of 24 bytes |
//! | 768 | 256 | reserved, zero |
//!
//! The BAT is an array of big-endian u32: the sector (512 bytes) at which a block
//! starts, or all ones for a block never written (it reads as zeros). A block is its
//! sector bitmap (one bit per sector, most significant bit first, padded to whole
//! sectors; a set bit means the sector holds data) followed by its data.

use super::{VhdError, be_u32, be_u64, ones_complement_sum};

/// Bytes in the dynamic header.
pub const HEADER_SIZE: usize = 1024;
/// The header's cookie.
pub const HEADER_COOKIE: [u8; 8] = *b"cxsparse";
/// The block size this code writes, as Hyper-V and qemu do.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// The largest block size accepted when reading.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
const VERSION: u32 = 0x0001_0000;

const O_DATA_OFFSET: usize = 8;
const O_TABLE_OFFSET: usize = 16;
const O_VERSION: usize = 24;
const O_MAX_ENTRIES: usize = 28;
const O_BLOCK_SIZE: usize = 32;
const O_CHECKSUM: usize = 36;

/// A decoded dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    pub table_offset: u64,
    pub max_table_entries: u32,
    pub block_size: u32,
}

impl DynamicHeader {
    /// Bytes of a block's sector bitmap, padded to whole sectors.
    pub fn bitmap_size(&self) -> u64 {
        let bits = (self.block_size / 512) as u64;
        bits.div_ceil(8).div_ceil(512) * 512
    }

    /// Bytes the BAT takes in the file, padded to whole sectors.
    pub fn table_size(&self) -> u64 {
        (self.max_table_entries as u64 * 4).div_ceil(512) * 512
    }

    /// The header's 1024 bytes, checksum included.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(&HEADER_COOKIE);
        b[O_DATA_OFFSET..O_DATA_OFFSET + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        b[O_TABLE_OFFSET..O_TABLE_OFFSET + 8].copy_from_slice(&self.table_offset.to_be_bytes());
        b[O_VERSION..O_VERSION + 4].copy_from_slice(&VERSION.to_be_bytes());
        b[O_MAX_ENTRIES..O_MAX_ENTRIES + 4].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[O_BLOCK_SIZE..O_BLOCK_SIZE + 4].copy_from_slice(&self.block_size.to_be_bytes());
        let sum = ones_complement_sum(&b, O_CHECKSUM);
        b[O_CHECKSUM..O_CHECKSUM + 4].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Decodes a header, checking its cookie, checksum, version and block size.
    pub fn decode(b: &[u8]) -> Result<DynamicHeader, VhdError> {
        if b.len() < HEADER_SIZE {
            return Err(VhdError::Truncated(format!(
                "{} bytes where the 1024-byte dynamic disk header belongs",
                b.len()
            )));
        }
        if b[..8] != HEADER_COOKIE {
            return Err(VhdError::Corrupt(
                "the dynamic disk header's cookie 'cxsparse' is missing".into(),
            ));
        }
        let stored = be_u32(b, O_CHECKSUM);
        let computed = ones_complement_sum(&b[..HEADER_SIZE], O_CHECKSUM);
        if stored != computed {
            return Err(VhdError::Checksum {
                what: "dynamic disk header",
                stored,
                computed,
            });
        }
        let version = be_u32(b, O_VERSION);
        if version >> 16 != 1 {
            return Err(VhdError::Unsupported(format!(
                "dynamic header version {version:#010x} (this code reads 1.x)"
            )));
        }
        let block_size = be_u32(b, O_BLOCK_SIZE);
        if !block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(VhdError::Corrupt(format!(
                "block size {block_size} is not a power of two from 512 bytes to 256 MiB"
            )));
        }
        Ok(DynamicHeader {
            table_offset: be_u64(b, O_TABLE_OFFSET),
            max_table_entries: be_u32(b, O_MAX_ENTRIES),
            block_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let h = DynamicHeader {
            table_offset: 1536,
            max_table_entries: 2048,
            block_size: DEFAULT_BLOCK_SIZE,
        };
        let b = h.encode();
        assert_eq!(DynamicHeader::decode(&b).unwrap(), h);
        assert_eq!(h.bitmap_size(), 512);
        assert_eq!(h.table_size(), 8192);
        let mut bad = b;
        bad[500] = 7;
        assert!(matches!(
            DynamicHeader::decode(&bad),
            Err(VhdError::Checksum { .. })
        ));
        let odd = DynamicHeader {
            block_size: 3000,
            ..h
        };
        assert!(matches!(
            DynamicHeader::decode(&odd.encode()),
            Err(VhdError::Corrupt(_))
        ));
    }
}
