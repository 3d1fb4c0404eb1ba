//! Errors of the block layer.

use std::io;

/// What can go wrong on a path to a LUN.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The operating system refused an I/O or an open.
    #[error("{op} on {lun} at byte {offset}")]
    Io {
        /// What was being done: "read", "write", "flush", "open".
        op: &'static str,
        /// The LUN's name.
        lun: String,
        /// Byte offset of the I/O (0 for flush and open).
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An offset or a length that is not a multiple of the device's block size.
    #[error(
        "I/O at byte {offset}, length {len}, is not aligned to the {block_size}-byte block size"
    )]
    Unaligned {
        /// Byte offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The device's logical block size.
        block_size: u32,
    },
    /// An I/O that would run past the end of the LUN.
    #[error("I/O at byte {offset}, length {len}, runs past the end of the LUN ({capacity} bytes)")]
    OutOfRange {
        /// Byte offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The LUN's capacity in bytes.
        capacity: u64,
    },
    /// The LUN's address could not be understood.
    #[error("cannot use LUN {0:?}: {1}")]
    BadLun(String, String),
}

impl BlockError {
    /// The errno a file system operation that met this error should return.
    pub fn errno(&self) -> i32 {
        match self {
            BlockError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            BlockError::Unaligned { .. } | BlockError::OutOfRange { .. } => libc::EINVAL,
            BlockError::BadLun(..) => libc::ENODEV,
        }
    }
}

impl From<BlockError> for io::Error {
    fn from(e: BlockError) -> io::Error {
        match e {
            BlockError::Io { source, .. } => source,
            other => io::Error::other(other),
        }
    }
}
