//! VHD disk images (Microsoft's Virtual Hard Disk format, version 1.0): fixed and
//! dynamic disks, read, written, created and checked by the project's own code (no
//! crate writes them). Differencing disks are refused with a clear error for now.
//!
//! A fixed disk is its data followed by a [`footer`]; a dynamic disk is a footer
//! copy, a [`dynamic_header`], the block allocation table, blocks (each a sector
//! bitmap and its data) in the order they were first written, and the footer.
//! [`image::VhdImage`] reads and writes either kind through a [`Backing`] (a file, or
//! memory for tests and the fuzz target); [`convert`] moves raw images in and out.
//!
//! What this module does not own: where the file lives (the VM's directory on a
//! volume) and how the guest reaches it (the virtio-blk device).

pub mod backing;
pub mod convert;
pub mod dynamic_header;
pub mod exercise;
pub mod footer;
pub mod image;

pub use backing::{Backing, MemBacking};
pub use footer::DiskType;
pub use image::VhdImage;

/// Bytes in a disk sector: every offset and length of a VHD read or write is a
/// multiple of it.
pub const SECTOR: u64 = 512;

/// Why a VHD could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum VhdError {
    #[error("not a VHD: no footer (cookie 'conectix') at the end of the file")]
    NotVhd,
    #[error("the VHD is truncated: {0}")]
    Truncated(String),
    #[error(
        "the VHD's {what} checksum is wrong (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("the VHD is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported VHD: {0}")]
    Unsupported(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the VHD is open read-only")]
    ReadOnly,
    #[error("VHD I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The VHD checksum over `b`: the ones' complement of the sum of its bytes, the four
/// at `checksum_at` (the checksum field itself) left out.
fn ones_complement_sum(b: &[u8], checksum_at: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(x as u32));
    !sum
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
