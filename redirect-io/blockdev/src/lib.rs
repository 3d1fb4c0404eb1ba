//! The bottom of the csvfs crate graph: how a node reaches a LUN.
//!
//! This crate owns the [`BlockDevice`] trait that every storage path implements, the
//! aligned buffers direct I/O needs, the file / block-device backend ([`FileDevice`]),
//! and a crash-simulating in-memory device ([`CrashSimDevice`]) for tests. It knows
//! nothing of files, inodes or the cluster.

mod aligned;
mod crash_sim;
mod error;
mod file;
mod file_reservations;
pub mod iscsi;
mod lun;
mod overlay;
mod pr_state;
mod reservation;
pub mod size;

pub use aligned::AlignedBuf;
pub use crash_sim::CrashSimDevice;
pub use error::BlockError;
pub use file::FileDevice;
pub use lun::{HOST_LOCK_WAIT, LunUrl, host_lock_path, open_lun, open_lun_exclusive};
pub use overlay::OverlayDevice;
pub use pr_state::{Nexus, PrState, PrStateError};
pub use reservation::{PrHolder, PrKey, PrKeys, PrOut, PrRefusal, ReservationType};

/// The unit every csvfs structure is aligned to. Devices with 512-byte logical blocks
/// are fine: 4096 is a multiple of every logical block size Linux supports.
pub const FS_BLOCK_SIZE: u32 = 4096;

/// A LUN, as csvfs sees it: a fixed number of bytes that can be read, written and
/// flushed at block-aligned offsets, from many threads at once.
///
/// Offsets and lengths must be multiples of [`BlockDevice::block_size`]; buffers need
/// no particular alignment (backends that need one copy through an [`AlignedBuf`], so
/// callers on hot paths pass aligned buffers to avoid the copy).
pub trait BlockDevice: Send + Sync + std::fmt::Debug {
    /// The logical block size in bytes; offsets and lengths are multiples of it.
    fn block_size(&self) -> u32;
    /// The size of the LUN in bytes.
    fn capacity(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Writes `buf` at `offset`. The data is durable only after [`BlockDevice::flush`].
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Makes every completed write durable (a cache flush of the device).
    fn flush(&self) -> Result<(), BlockError>;
    /// A short name of the LUN for messages (a path or a URL).
    fn name(&self) -> &str;

    /// Sends a PERSISTENT RESERVE OUT action. A refusal by the target is
    /// [`BlockError::Fenced`] (RESERVATION CONFLICT) or [`BlockError::Refused`].
    fn persistent_reserve_out(&self, action: &PrOut) -> Result<(), BlockError> {
        let _ = action;
        Err(BlockError::Unsupported {
            lun: self.name().to_string(),
            what: "persistent reservations",
        })
    }

    /// PERSISTENT RESERVE IN, READ KEYS: every registered key.
    fn read_keys(&self) -> Result<PrKeys, BlockError> {
        Err(BlockError::Unsupported {
            lun: self.name().to_string(),
            what: "persistent reservations",
        })
    }

    /// PERSISTENT RESERVE IN, READ RESERVATION: the holder, if any.
    fn read_reservation(&self) -> Result<Option<PrHolder>, BlockError> {
        Err(BlockError::Unsupported {
            lun: self.name().to_string(),
            what: "persistent reservations",
        })
    }

    /// The name under which the target knows this device's session in its persistent
    /// reservations, as REGISTER AND MOVE names its receiver: an iSCSI initiator port
    /// (`NAME,i,0xISID`), the image-file emulation's initiator name; `None` for
    /// backends without reservations.
    fn reservation_port(&self) -> Option<String> {
        None
    }

    /// Counts the events after which this node may have lost its registration without
    /// being told: a reconnect to the target, a UNIT ATTENTION for a reset or for a
    /// change of reservations. Whoever holds a key compares it before and after its
    /// work; a change means "possibly fenced". Backends without such events return 0.
    fn path_generation(&self) -> u64 {
        0
    }

    /// Whether a write would go to the LUN now: [`BlockError::PossiblyFenced`] while
    /// this node's registration may have been lost with a reconnect and waits to be
    /// renewed (a path that came back is usable for writes only after that). Backends
    /// without registrations are always ready.
    fn write_ready(&self) -> Result<(), BlockError> {
        Ok(())
    }

    /// Checks the alignment and range rules every backend enforces.
    fn check_range(&self, offset: u64, len: usize) -> Result<(), BlockError> {
        let bs = u64::from(self.block_size());
        let len = len as u64;
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(BlockError::Unaligned {
                offset,
                len,
                block_size: self.block_size(),
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity() => Ok(()),
            _ => Err(BlockError::OutOfRange {
                offset,
                len,
                capacity: self.capacity(),
            }),
        }
    }
}
