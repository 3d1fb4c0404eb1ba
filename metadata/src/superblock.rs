//! The superblock: what a LUN holds and where. Block 0, with a copy in the last block.
//!
//! Layout (little-endian, 4096-byte block, the rest zero):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CSVFSSB\0` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | block size (4096) |
//! | 16 | 16 | volume UUID |
//! | 32 | 64 | label, UTF-8, NUL-padded |
//! | 96 | 8 | total blocks of the LUN |
//! | 104 | 16 | cluster region: start block, block count |
//! | 120 | 16 | metadata region: start block, block count |
//! | 136 | 16 | data region: start block, block count |
//! | 152 | 8 | feature flags (none defined) |
//! | 160 | 8 | creation time, seconds since the epoch |
//! | 168 | 32 | blake3 of bytes 0..168 |

use blockdev::{AlignedBuf, BlockDevice, FS_BLOCK_SIZE};

use crate::error::{MetaError, MetaResult};
use crate::layout::Region;

/// Magic at the start of every csvfs superblock.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"CSVFSSB\0";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

const O_VERSION: usize = 8;
const O_BLOCK_SIZE: usize = 12;
const O_UUID: usize = 16;
const O_LABEL: usize = 32;
const LABEL_FIELD: usize = 64;
const O_TOTAL: usize = 96;
const O_CLUSTER: usize = 104;
const O_METADATA: usize = 120;
const O_DATA: usize = 136;
const O_FEATURES: usize = 152;
const O_CREATED: usize = 160;
const O_CHECKSUM: usize = 168;
const ENCODED_LEN: usize = O_CHECKSUM + 32;

/// The decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Identity of the volume, fixed at mkfs.
    pub uuid: [u8; 16],
    /// The volume's label: its directory under /ClusterStorage.
    pub label: String,
    /// Size of the LUN in blocks.
    pub total_blocks: u64,
    /// Heartbeat slots and the coordinator record.
    pub cluster: Region,
    /// The metadata store.
    pub metadata: Region,
    /// File data.
    pub data: Region,
    /// Feature flags; none are defined yet.
    pub features: u64,
    /// When mkfs ran, seconds since the epoch.
    pub created: u64,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl Superblock {
    /// Encodes into one block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; FS_BLOCK_SIZE as usize];
        b[..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        b[O_VERSION..O_VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[O_BLOCK_SIZE..O_BLOCK_SIZE + 4].copy_from_slice(&FS_BLOCK_SIZE.to_le_bytes());
        b[O_UUID..O_UUID + 16].copy_from_slice(&self.uuid);
        let label = self.label.as_bytes();
        b[O_LABEL..O_LABEL + label.len().min(MAX_LABEL_LEN)]
            .copy_from_slice(&label[..label.len().min(MAX_LABEL_LEN)]);
        b[O_TOTAL..O_TOTAL + 8].copy_from_slice(&self.total_blocks.to_le_bytes());
        for (o, r) in [
            (O_CLUSTER, self.cluster),
            (O_METADATA, self.metadata),
            (O_DATA, self.data),
        ] {
            b[o..o + 8].copy_from_slice(&r.start.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&r.blocks.to_le_bytes());
        }
        b[O_FEATURES..O_FEATURES + 8].copy_from_slice(&self.features.to_le_bytes());
        b[O_CREATED..O_CREATED + 8].copy_from_slice(&self.created.to_le_bytes());
        let sum = blake3::hash(&b[..O_CHECKSUM]);
        b[O_CHECKSUM..ENCODED_LEN].copy_from_slice(sum.as_bytes());
        b
    }

    /// Decodes and checks one block; never panics on any input.
    pub fn decode(b: &[u8]) -> MetaResult<Superblock> {
        if b.len() < ENCODED_LEN {
            return Err(MetaError::Corrupt(format!(
                "superblock is {} bytes, expected 4096",
                b.len()
            )));
        }
        if b[..8] != SUPERBLOCK_MAGIC {
            return Err(MetaError::Corrupt("no csvfs superblock magic".into()));
        }
        let sum = blake3::hash(&b[..O_CHECKSUM]);
        if sum.as_bytes() != &b[O_CHECKSUM..ENCODED_LEN] {
            return Err(MetaError::Corrupt("superblock checksum mismatch".into()));
        }
        let version = u32_at(b, O_VERSION);
        if version != FORMAT_VERSION {
            return Err(MetaError::Corrupt(format!(
                "superblock format version {version}, this csvfs reads version {FORMAT_VERSION}"
            )));
        }
        let bs = u32_at(b, O_BLOCK_SIZE);
        if bs != FS_BLOCK_SIZE {
            return Err(MetaError::Corrupt(format!(
                "block size {bs}, expected {FS_BLOCK_SIZE}"
            )));
        }
        let label_bytes = &b[O_LABEL..O_LABEL + LABEL_FIELD];
        let end = label_bytes
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(MAX_LABEL_LEN)
            .min(MAX_LABEL_LEN);
        let label = std::str::from_utf8(&label_bytes[..end])
            .map_err(|_| MetaError::Corrupt("label is not UTF-8".into()))?
            .to_string();
        let region = |o: usize| Region {
            start: u64_at(b, o),
            blocks: u64_at(b, o + 8),
        };
        let sb = Superblock {
            uuid: b[O_UUID..O_UUID + 16].try_into().expect("16 bytes"),
            label,
            total_blocks: u64_at(b, O_TOTAL),
            cluster: region(O_CLUSTER),
            metadata: region(O_METADATA),
            data: region(O_DATA),
            features: u64_at(b, O_FEATURES),
            created: u64_at(b, O_CREATED),
        };
        sb.check_regions()?;
        Ok(sb)
    }

    /// The regions must follow each other inside the LUN, leaving block 0 and the last
    /// block to the two superblock copies.
    fn check_regions(&self) -> MetaResult<()> {
        let mut next = 1u64;
        for (name, r) in [
            ("cluster", self.cluster),
            ("metadata", self.metadata),
            ("data", self.data),
        ] {
            if r.start != next || r.blocks == 0 {
                return Err(MetaError::Corrupt(format!(
                    "{name} region {r:?} is misplaced"
                )));
            }
            next = r
                .start
                .checked_add(r.blocks)
                .ok_or_else(|| MetaError::Corrupt(format!("{name} region overflows")))?;
        }
        if next.checked_add(1) != Some(self.total_blocks) {
            return Err(MetaError::Corrupt(format!(
                "regions end at block {next}, the LUN has {} blocks",
                self.total_blocks
            )));
        }
        Ok(())
    }

    /// Writes both copies and flushes.
    pub fn write(&self, dev: &dyn BlockDevice) -> MetaResult<()> {
        let mut buf = AlignedBuf::zeroed(FS_BLOCK_SIZE as usize);
        buf.copy_from_slice(&self.encode());
        dev.write_at(&buf, 0)?;
        dev.write_at(&buf, (self.total_blocks - 1) * u64::from(FS_BLOCK_SIZE))?;
        dev.flush()?;
        Ok(())
    }

    /// Reads the primary copy, or the backup in the last block if the primary is bad.
    /// Returns the superblock and whether the primary was bad.
    pub fn read(dev: &dyn BlockDevice) -> MetaResult<(Superblock, bool)> {
        let bs = u64::from(FS_BLOCK_SIZE);
        if dev.capacity() < 2 * bs {
            return Err(MetaError::Corrupt(format!(
                "{} is too small to hold a csvfs volume",
                dev.name()
            )));
        }
        let mut buf = AlignedBuf::zeroed(bs as usize);
        dev.read_at(&mut buf, 0)?;
        let primary = Superblock::decode(&buf);
        if let Ok(sb) = primary {
            return Ok((sb, false));
        }
        let primary_err = primary.unwrap_err();
        let last = (dev.capacity() / bs - 1) * bs;
        dev.read_at(&mut buf, last)?;
        match Superblock::decode(&buf) {
            Ok(sb) => Ok((sb, true)),
            Err(_) => Err(primary_err),
        }
    }

    /// The label as a file-system-safe string.
    pub fn uuid_string(&self) -> String {
        uuid::Uuid::from_bytes(self.uuid).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use proptest::prelude::*;

    fn sample() -> Superblock {
        let l = Layout::plan(1 << 31, None).unwrap();
        l.superblock("Volume1", [7; 16], 1_700_000_000)
    }

    #[test]
    fn round_trips() {
        let sb = sample();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn flipped_bit_is_caught() {
        let mut b = sample().encode();
        b[40] ^= 1;
        assert!(
            matches!(Superblock::decode(&b), Err(MetaError::Corrupt(m)) if m.contains("checksum"))
        );
    }

    #[test]
    fn backup_copy_is_used_when_the_primary_is_bad() {
        let sb = sample();
        let dev = blockdev::CrashSimDevice::new(sb.total_blocks * 4096);
        sb.write(&dev).unwrap();
        dev.write_at(&[0xffu8; 4096], 0).unwrap();
        let (back, primary_bad) = Superblock::read(&dev).unwrap();
        assert!(primary_bad);
        assert_eq!(back, sb);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4200)) {
            let _ = Superblock::decode(&bytes);
        }
    }
}
