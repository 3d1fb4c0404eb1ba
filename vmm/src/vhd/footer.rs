//! The VHD footer: the 512 bytes at the end of every VHD file (and, for a dynamic disk,
//! a copy at its start), as Microsoft's "Virtual Hard Disk Image Format Specification"
//! (version 1.0) lays it out.
//!
//! Layout (big-endian, 512 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | cookie `conectix` |
//! | 8 | 4 | features (2: the reserved bit, always set) |
//! | 12 | 4 | file format version (0x0001_0000) |
//! | 16 | 8 | data offset: the dynamic header's offset, or all ones for a fixed disk |
//! | 24 | 4 | time stamp, seconds since 2000-01-01 00:00:00 UTC |
//! | 28 | 4 | creator application (`win `: readers size the disk by its current size) |
//! | 32 | 4 | creator version |
//! | 36 | 4 | creator host OS (`Wi2k`) |
//! | 40 | 8 | original size in bytes |
//! | 48 | 8 | current size in bytes (the disk's size) |
//! | 56 | 4 | geometry: cylinders (2), heads (1), sectors per track (1) |
//! | 60 | 4 | disk type (2 fixed, 3 dynamic, 4 differencing) |
//! | 64 | 4 | checksum: ones' complement of the sum of every other byte |
//! | 68 | 16 | unique id |
//! | 84 | 1 | saved state |
//! | 85 | 427 | reserved, zero |

use super::{VhdError, be_u16, be_u32, be_u64, ones_complement_sum};

/// Bytes in a footer.
pub const FOOTER_SIZE: usize = 512;
/// The footer's cookie.
pub const FOOTER_COOKIE: [u8; 8] = *b"conectix";
/// The creator application this code writes: Hyper-V's, so that qemu and Windows
/// size the disk by its current size rather than by its CHS geometry.
pub const CREATOR_APP: [u8; 4] = *b"win ";
/// Data offset of a fixed disk (no dynamic header).
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// The file format version.
const FORMAT_VERSION: u32 = 0x0001_0000;
/// The features field: bit 1 is reserved and always set.
const FEATURES_RESERVED: u32 = 2;
const CREATOR_VERSION: u32 = 0x000a_0000;
const CREATOR_HOST_OS: [u8; 4] = *b"Wi2k";
/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the VHD epoch.
const VHD_EPOCH_UNIX: u64 = 946_684_800;

const O_FEATURES: usize = 8;
const O_VERSION: usize = 12;
const O_DATA_OFFSET: usize = 16;
const O_TIMESTAMP: usize = 24;
const O_CREATOR_APP: usize = 28;
const O_CREATOR_VERSION: usize = 32;
const O_CREATOR_OS: usize = 36;
const O_ORIGINAL_SIZE: usize = 40;
const O_CURRENT_SIZE: usize = 48;
const O_CYLINDERS: usize = 56;
const O_HEADS: usize = 58;
const O_SECTORS: usize = 59;
const O_DISK_TYPE: usize = 60;
const O_CHECKSUM: usize = 64;
const O_UNIQUE_ID: usize = 68;
const O_SAVED_STATE: usize = 84;

/// The kinds of VHD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// Data first, footer after it.
    Fixed,
    /// Blocks allocated on first write, found through the block allocation table.
    Dynamic,
}

impl DiskType {
    fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
        }
    }
}

/// Cylinders, heads and sectors per track, as the specification derives them from a
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The specification's CHS calculation (appendix "CHS Calculation") for a disk of
    /// `size` bytes; disks beyond about 127 GiB get the largest geometry.
    pub fn for_size(size: u64) -> Geometry {
        let mut total = (size / 512).min(65535 * 16 * 255);
        let (spt, heads, cth);
        if total >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cth = total / spt;
        } else {
            let mut s = 17;
            let mut c = total / s;
            let mut h = c.div_ceil(1024).max(4);
            if c >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                c = total / s;
            }
            if c >= h * 1024 {
                s = 63;
                h = 16;
                c = total / s;
            }
            (spt, heads, cth) = (s, h, c);
        }
        total = cth / heads;
        Geometry {
            cylinders: total.min(u16::MAX as u64) as u16,
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }
}

/// A decoded footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub data_offset: u64,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub unique_id: [u8; 16],
    pub saved_state: bool,
}

impl Footer {
    /// A new footer for a disk of `size` bytes, stamped now, with a fresh unique id.
    /// A dynamic disk's header follows its footer copy at offset 512.
    pub fn new(disk_type: DiskType, size: u64) -> Footer {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Footer {
            data_offset: match disk_type {
                DiskType::Fixed => NO_DATA_OFFSET,
                DiskType::Dynamic => FOOTER_SIZE as u64,
            },
            timestamp: now.saturating_sub(VHD_EPOCH_UNIX).min(u32::MAX as u64) as u32,
            creator_app: CREATOR_APP,
            original_size: size,
            current_size: size,
            geometry: Geometry::for_size(size),
            disk_type,
            unique_id: *uuid::Uuid::new_v4().as_bytes(),
            saved_state: false,
        }
    }

    /// The footer's 512 bytes, checksum included.
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(&FOOTER_COOKIE);
        b[O_FEATURES..O_FEATURES + 4].copy_from_slice(&FEATURES_RESERVED.to_be_bytes());
        b[O_VERSION..O_VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        b[O_DATA_OFFSET..O_DATA_OFFSET + 8].copy_from_slice(&self.data_offset.to_be_bytes());
        b[O_TIMESTAMP..O_TIMESTAMP + 4].copy_from_slice(&self.timestamp.to_be_bytes());
        b[O_CREATOR_APP..O_CREATOR_APP + 4].copy_from_slice(&self.creator_app);
        b[O_CREATOR_VERSION..O_CREATOR_VERSION + 4].copy_from_slice(&CREATOR_VERSION.to_be_bytes());
        b[O_CREATOR_OS..O_CREATOR_OS + 4].copy_from_slice(&CREATOR_HOST_OS);
        b[O_ORIGINAL_SIZE..O_ORIGINAL_SIZE + 8].copy_from_slice(&self.original_size.to_be_bytes());
        b[O_CURRENT_SIZE..O_CURRENT_SIZE + 8].copy_from_slice(&self.current_size.to_be_bytes());
        b[O_CYLINDERS..O_CYLINDERS + 2].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[O_HEADS] = self.geometry.heads;
        b[O_SECTORS] = self.geometry.sectors_per_track;
        b[O_DISK_TYPE..O_DISK_TYPE + 4].copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[O_UNIQUE_ID..O_UNIQUE_ID + 16].copy_from_slice(&self.unique_id);
        b[O_SAVED_STATE] = self.saved_state as u8;
        let sum = ones_complement_sum(&b, O_CHECKSUM);
        b[O_CHECKSUM..O_CHECKSUM + 4].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Decodes a footer, checking its cookie, checksum, version, disk type and size.
    pub fn decode(b: &[u8]) -> Result<Footer, VhdError> {
        if b.len() < FOOTER_SIZE {
            return Err(VhdError::Truncated(format!(
                "{} bytes where a 512-byte footer belongs",
                b.len()
            )));
        }
        if b[..8] != FOOTER_COOKIE {
            return Err(VhdError::NotVhd);
        }
        let stored = be_u32(b, O_CHECKSUM);
        let computed = ones_complement_sum(&b[..FOOTER_SIZE], O_CHECKSUM);
        if stored != computed {
            return Err(VhdError::Checksum {
                what: "footer",
                stored,
                computed,
            });
        }
        let version = be_u32(b, O_VERSION);
        if version >> 16 != 1 {
            return Err(VhdError::Unsupported(format!(
                "file format version {version:#010x} (this code reads 1.x)"
            )));
        }
        let disk_type = match be_u32(b, O_DISK_TYPE) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => {
                return Err(VhdError::Unsupported(
                    "a differencing disk (only fixed and dynamic VHDs are supported)".into(),
                ));
            }
            t => return Err(VhdError::Corrupt(format!("unknown disk type {t}"))),
        };
        let current_size = be_u64(b, O_CURRENT_SIZE);
        if current_size == 0 || !current_size.is_multiple_of(512) {
            return Err(VhdError::Corrupt(format!(
                "current size {current_size} is not a non-zero multiple of 512"
            )));
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(&b[O_CREATOR_APP..O_CREATOR_APP + 4]);
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&b[O_UNIQUE_ID..O_UNIQUE_ID + 16]);
        Ok(Footer {
            data_offset: be_u64(b, O_DATA_OFFSET),
            timestamp: be_u32(b, O_TIMESTAMP),
            creator_app,
            original_size: be_u64(b, O_ORIGINAL_SIZE),
            current_size,
            geometry: Geometry {
                cylinders: be_u16(b, O_CYLINDERS),
                heads: b[O_HEADS],
                sectors_per_track: b[O_SECTORS],
            },
            disk_type,
            unique_id,
            saved_state: b[O_SAVED_STATE] != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let f = Footer::new(DiskType::Dynamic, 4 << 30);
        let b = f.encode();
        assert_eq!(Footer::decode(&b).unwrap(), f);
        let mut bad = b;
        bad[100] ^= 1;
        assert!(matches!(
            Footer::decode(&bad),
            Err(VhdError::Checksum { .. })
        ));
        let mut other = b;
        other[0] = b'x';
        assert!(matches!(Footer::decode(&other), Err(VhdError::NotVhd)));
    }

    #[test]
    fn geometry_follows_the_specification() {
        // Sizes whose geometry Hyper-V and qemu agree on.
        let g = Geometry::for_size(4 << 30);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (8322, 16, 63));
        let g = Geometry::for_size(10 << 20);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (301, 4, 17));
        let g = Geometry::for_size(4 << 40);
        assert_eq!(
            (g.cylinders, g.heads, g.sectors_per_track),
            (65535, 16, 255)
        );
    }
}
