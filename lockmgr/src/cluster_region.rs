//! The cluster region of a volume's LUN: the coordinator record and one disk heartbeat
//! slot per node. mkfs zeroes the region; the lock manager writes it, status and fsck
//! read it. Its place on the LUN comes from the superblock (metadata's business); its
//! contents are the lock manager's.
//!
//! Every entry fills one 4 KiB block, so that it is written whole and alone:
//!
//! | block of the region | entry |
//! |---------------------|-------|
//! | 0 | the coordinator record |
//! | n (1 to 255) | the heartbeat slot of node id n |
//!
//! A record: magic `CSVFSCR1`, epoch u64, coordinator node id u8, then at byte 56 the
//! BLAKE3 hash of bytes 0..56. A slot: magic `CSVFSHB1`, node id u8, 3 zero bytes,
//! incarnation u32, counter u64, wall-clock time of the write in ms since the Unix
//! epoch u64, then at byte 56 the hash of bytes 0..56. Integers are little-endian. A
//! block of zeroes is an entry never written. Anything else is an error that says what
//! is wrong, never a panic.

use std::fmt;

use blockdev::{AlignedBuf, BlockDevice, BlockError, FS_BLOCK_SIZE};

use crate::protocol::{Epoch, NodeId};

const RECORD_MAGIC: &[u8; 8] = b"CSVFSCR1";
const SLOT_MAGIC: &[u8; 8] = b"CSVFSHB1";
const HASHED: usize = 56;
const ENTRY_LEN: usize = HASHED + 32;

/// The coordinator record: who coordinates the volume, in which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorRecord {
    /// The epoch, raised by every takeover.
    pub epoch: Epoch,
    /// The coordinator.
    pub node: NodeId,
}

/// One node's disk heartbeat slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatSlot {
    /// The node.
    pub node: NodeId,
    /// Its incarnation when it wrote.
    pub incarnation: u32,
    /// Raised by every write.
    pub counter: u64,
    /// Wall-clock time of the write, ms since the Unix epoch.
    pub written_ms: u64,
}

/// A cluster region entry that is neither blank nor valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError(String);

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EntryError {}

fn check(block: &[u8], magic: &[u8; 8], what: &str) -> Result<bool, EntryError> {
    if block.len() < ENTRY_LEN {
        return Err(EntryError(format!(
            "{what}: {} bytes, an entry has {ENTRY_LEN}",
            block.len()
        )));
    }
    if block.iter().all(|b| *b == 0) {
        return Ok(false);
    }
    if &block[..8] != magic {
        return Err(EntryError(format!("{what}: bad magic")));
    }
    if blake3::hash(&block[..HASHED]).as_bytes() != &block[HASHED..ENTRY_LEN] {
        return Err(EntryError(format!("{what}: checksum mismatch")));
    }
    Ok(true)
}

fn seal(mut head: Vec<u8>) -> Vec<u8> {
    head.resize(HASHED, 0);
    let hash = blake3::hash(&head);
    head.extend_from_slice(hash.as_bytes());
    head
}

/// `body`'s first 56 bytes (zero-padded) with a correct hash after them, for the
/// fuzz target and the corpus replay: it lets inputs reach the checks behind the
/// checksum.
pub fn seal_for_fuzzing(body: &[u8]) -> Vec<u8> {
    seal(body[..body.len().min(HASHED)].to_vec())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl CoordinatorRecord {
    /// The entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = RECORD_MAGIC.to_vec();
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.push(self.node);
        seal(b)
    }

    /// The record in `block`, `None` if it was never written.
    pub fn decode(block: &[u8]) -> Result<Option<CoordinatorRecord>, EntryError> {
        if !check(block, RECORD_MAGIC, "coordinator record")? {
            return Ok(None);
        }
        if block[17..HASHED].iter().any(|b| *b != 0) {
            return Err(EntryError(
                "coordinator record: reserved bytes are not zero".into(),
            ));
        }
        Ok(Some(CoordinatorRecord {
            epoch: u64_at(block, 8),
            node: block[16],
        }))
    }
}

impl HeartbeatSlot {
    /// The entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = SLOT_MAGIC.to_vec();
        b.push(self.node);
        b.extend_from_slice(&[0, 0, 0]);
        b.extend_from_slice(&self.incarnation.to_le_bytes());
        b.extend_from_slice(&self.counter.to_le_bytes());
        b.extend_from_slice(&self.written_ms.to_le_bytes());
        seal(b)
    }

    /// The slot in `block`, `None` if it was never written.
    pub fn decode(block: &[u8]) -> Result<Option<HeartbeatSlot>, EntryError> {
        if !check(block, SLOT_MAGIC, "heartbeat slot")? {
            return Ok(None);
        }
        if block[9..12].iter().any(|b| *b != 0) || block[36..HASHED].iter().any(|b| *b != 0) {
            return Err(EntryError(
                "heartbeat slot: reserved bytes are not zero".into(),
            ));
        }
        Ok(Some(HeartbeatSlot {
            node: block[8],
            incarnation: u32::from_le_bytes([block[12], block[13], block[14], block[15]]),
            counter: u64_at(block, 16),
            written_ms: u64_at(block, 24),
        }))
    }
}

/// Why the cluster region could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The LUN refused or failed.
    #[error(transparent)]
    Device(#[from] BlockError),
    /// An entry is damaged.
    #[error("{0}")]
    Entry(#[from] EntryError),
    /// A slot holds another node's heartbeat.
    #[error("heartbeat slot {slot} holds node {found}'s heartbeat")]
    WrongSlot {
        /// The slot read.
        slot: NodeId,
        /// The node it names.
        found: NodeId,
    },
}

/// The cluster region of one LUN.
pub struct ClusterRegion<'a> {
    dev: &'a dyn BlockDevice,
    offset: u64,
}

impl<'a> ClusterRegion<'a> {
    /// The region starting at byte `offset` of `dev` (the superblock says where).
    pub fn new(dev: &'a dyn BlockDevice, offset: u64) -> ClusterRegion<'a> {
        ClusterRegion { dev, offset }
    }

    fn block_offset(&self, n: u64) -> u64 {
        self.offset + n * u64::from(FS_BLOCK_SIZE)
    }

    fn read_block(&self, n: u64) -> Result<AlignedBuf, BlockError> {
        let mut buf = AlignedBuf::zeroed(FS_BLOCK_SIZE as usize);
        self.dev.read_at(&mut buf, self.block_offset(n))?;
        Ok(buf)
    }

    fn write_block(&self, n: u64, entry: &[u8]) -> Result<(), BlockError> {
        let mut buf = AlignedBuf::zeroed(FS_BLOCK_SIZE as usize);
        buf[..entry.len()].copy_from_slice(entry);
        self.dev.write_at(&buf, self.block_offset(n))?;
        self.dev.flush()
    }

    /// The coordinator record, `None` on a volume no coordinator has served yet.
    pub fn read_record(&self) -> Result<Option<CoordinatorRecord>, RegionError> {
        Ok(CoordinatorRecord::decode(&self.read_block(0)?)?)
    }

    /// Writes the coordinator record (and flushes).
    pub fn write_record(&self, record: &CoordinatorRecord) -> Result<(), BlockError> {
        self.write_block(0, &record.encode())
    }

    /// Node `node`'s heartbeat slot, `None` if it never wrote one.
    pub fn read_slot(&self, node: NodeId) -> Result<Option<HeartbeatSlot>, RegionError> {
        let slot = HeartbeatSlot::decode(&self.read_block(u64::from(node))?)?;
        match slot {
            Some(s) if s.node != node => Err(RegionError::WrongSlot {
                slot: node,
                found: s.node,
            }),
            s => Ok(s),
        }
    }

    /// Every slot written, by node id. A damaged slot is left out (a live node
    /// rewrites its slot at every heartbeat; one damaged block must not hide the
    /// others); the device failing is an error.
    pub fn read_slots(&self) -> Result<Vec<HeartbeatSlot>, RegionError> {
        let mut out = Vec::new();
        for node in 1..=NodeId::MAX {
            match self.read_slot(node) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(RegionError::Device(e)) => return Err(RegionError::Device(e)),
                Err(e) => tracing::warn!(slot = node, error = %e, "damaged heartbeat slot skipped"),
            }
        }
        Ok(out)
    }

    /// Writes a node's heartbeat slot (and flushes).
    pub fn write_slot(&self, slot: &HeartbeatSlot) -> Result<(), BlockError> {
        self.write_block(u64::from(slot.node), &slot.encode())
    }
}

/// How long [`ClusterRegion::advancing_slots`] watches: longer than any sensible
/// heartbeat interval (DESIGN.md has one a second).
pub const SLOT_WATCH: std::time::Duration = std::time::Duration::from_millis(2500);

impl ClusterRegion<'_> {
    /// The nodes whose heartbeat slots advance over [`SLOT_WATCH`]: nodes using the
    /// volume now. mkfs and fsck refuse a volume with any.
    pub fn advancing_slots(&self) -> Result<Vec<NodeId>, RegionError> {
        let before = self.read_slots()?;
        if before.is_empty() {
            return Ok(Vec::new());
        }
        std::thread::sleep(SLOT_WATCH);
        let after = self.read_slots()?;
        Ok(after
            .iter()
            .filter(|a| {
                !before.iter().any(|b| {
                    b.node == a.node && b.counter == a.counter && b.incarnation == a.incarnation
                })
            })
            .map(|a| a.node)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_blank_is_none() {
        let r = CoordinatorRecord { epoch: 9, node: 3 };
        assert_eq!(CoordinatorRecord::decode(&r.encode()).unwrap(), Some(r));
        let s = HeartbeatSlot {
            node: 255,
            incarnation: 7,
            counter: 1 << 40,
            written_ms: 1_800_000_000_000,
        };
        assert_eq!(HeartbeatSlot::decode(&s.encode()).unwrap(), Some(s));
        assert_eq!(CoordinatorRecord::decode(&[0; 4096]).unwrap(), None);
        assert_eq!(HeartbeatSlot::decode(&[0; 4096]).unwrap(), None);
    }

    #[test]
    fn damage_is_named() {
        let mut b = CoordinatorRecord { epoch: 1, node: 1 }.encode();
        b[9] ^= 1;
        let e = CoordinatorRecord::decode(&b).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let s = HeartbeatSlot {
            node: 1,
            incarnation: 1,
            counter: 1,
            written_ms: 1,
        };
        let e = CoordinatorRecord::decode(&s.encode()).unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
        let e = HeartbeatSlot::decode(&[1; 10]).unwrap_err();
        assert!(e.to_string().contains("10 bytes"), "{e}");
    }
}
