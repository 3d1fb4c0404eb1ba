//! Where the regions of a LUN go, decided once by mkfs.

use crate::error::{MetaError, MetaResult};
use crate::superblock::Superblock;
use blockdev::FS_BLOCK_SIZE;

/// A run of blocks of the LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub blocks: u64,
}

impl Region {
    /// Byte offset of the first block.
    pub fn byte_offset(&self) -> u64 {
        self.start * u64::from(FS_BLOCK_SIZE)
    }
    /// Size in bytes.
    pub fn byte_len(&self) -> u64 {
        self.blocks * u64::from(FS_BLOCK_SIZE)
    }
    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start + self.blocks
    }
}

/// Blocks of the cluster region: a heartbeat slot per node (up to 64) and the
/// coordinator record, with room to spare.
pub const CLUSTER_REGION_BLOCKS: u64 = 256;
/// The smallest metadata region mkfs makes.
pub const MIN_METADATA_BYTES: u64 = 16 << 20;
/// The smallest data region mkfs makes.
pub const MIN_DATA_BYTES: u64 = 4 << 20;
/// The smallest LUN csvfs can use.
pub const MIN_LUN_BYTES: u64 = 2 * FS_BLOCK_SIZE as u64
    + CLUSTER_REGION_BLOCKS * FS_BLOCK_SIZE as u64
    + MIN_METADATA_BYTES
    + MIN_DATA_BYTES;

/// The regions of a LUN of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Blocks of the LUN (the last partial block, if any, is unused).
    pub total_blocks: u64,
    /// Heartbeats and the coordinator record.
    pub cluster: Region,
    /// The metadata store.
    pub metadata: Region,
    /// File data.
    pub data: Region,
}

impl Layout {
    /// Plans a LUN of `lun_bytes`; the metadata region is `metadata_bytes`, or by default
    /// 1/32 of the LUN, between 64 MiB and 64 GiB (and never more than half the LUN).
    pub fn plan(lun_bytes: u64, metadata_bytes: Option<u64>) -> MetaResult<Layout> {
        let bs = u64::from(FS_BLOCK_SIZE);
        if lun_bytes < MIN_LUN_BYTES {
            return Err(MetaError::Invalid(
                "LUN too small: csvfs needs at least 21 MiB",
            ));
        }
        let total_blocks = lun_bytes / bs;
        let cluster = Region {
            start: 1,
            blocks: CLUSTER_REGION_BLOCKS,
        };
        let default_meta = (lun_bytes / 32)
            .clamp(64 << 20, 64 << 30)
            .min(lun_bytes / 2);
        let meta_bytes = metadata_bytes
            .unwrap_or(default_meta)
            .max(MIN_METADATA_BYTES);
        let meta_blocks = meta_bytes.div_ceil(bs);
        let metadata = Region {
            start: cluster.end(),
            blocks: meta_blocks,
        };
        let data_start = metadata.end();
        // The last block holds the backup superblock.
        let data_blocks = total_blocks.saturating_sub(data_start + 1);
        if data_blocks * bs < MIN_DATA_BYTES {
            return Err(MetaError::Invalid(
                "LUN too small for that metadata region size",
            ));
        }
        Ok(Layout {
            total_blocks,
            cluster,
            metadata,
            data: Region {
                start: data_start,
                blocks: data_blocks,
            },
        })
    }

    /// The superblock that describes this layout.
    pub fn superblock(&self, label: &str, uuid: [u8; 16], created: u64) -> Superblock {
        Superblock {
            uuid,
            label: label.to_string(),
            total_blocks: self.total_blocks,
            cluster: self.cluster,
            metadata: self.metadata,
            data: self.data,
            features: 0,
            created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_tile_the_lun() {
        for size in [MIN_LUN_BYTES, 1 << 31, (1 << 40) + 12345] {
            let l = Layout::plan(size, None).unwrap();
            assert_eq!(l.cluster.start, 1);
            assert_eq!(l.metadata.start, l.cluster.end());
            assert_eq!(l.data.start, l.metadata.end());
            assert_eq!(l.data.end() + 1, l.total_blocks);
        }
        assert!(Layout::plan(MIN_LUN_BYTES - 1, None).is_err());
        assert!(Layout::plan(1 << 30, Some(1 << 30)).is_err());
    }
}
