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
    /// Another csvfs process on this host holds the LUN (a mount, mkfs or fsck).
    #[error(
        "{lun} is in use by another csvfs process on this host (a mount, mkfs or fsck); unmount it or let it finish first"
    )]
    InUse {
        /// The LUN's name.
        lun: String,
    },
    /// RESERVATION CONFLICT: this node is not allowed to do this on the LUN; for a
    /// write, it has been fenced.
    #[error(
        "{op} on {lun} refused with RESERVATION CONFLICT: this node is fenced or not registered"
    )]
    Fenced {
        /// What was refused: "write", "read", "reserve", ...
        op: &'static str,
        /// The LUN's name.
        lun: String,
    },
    /// The path to the target was re-established (or the target reported a reset or a
    /// reservation change) after this node registered a key: the registration may be
    /// gone, so writes wait for a new registration.
    #[error("write to {lun} held back: {reason}; register a new key before writing")]
    PossiblyFenced {
        /// The LUN's name.
        lun: String,
        /// What happened.
        reason: String,
    },
    /// The backend does not do this.
    #[error("{lun} does not support {what}")]
    Unsupported {
        /// The LUN's name.
        lun: String,
        /// What was asked for.
        what: &'static str,
    },
    /// The target refused a request as invalid (ILLEGAL REQUEST and the like).
    #[error("{op} on {lun} refused by the target: {detail}")]
    Refused {
        /// What was refused.
        op: &'static str,
        /// The LUN's name.
        lun: String,
        /// The target's reason (decoded sense data).
        detail: String,
    },
    /// The target answered with something that breaks the protocol.
    #[error("{lun}: protocol error from the target: {detail}")]
    Protocol {
        /// The LUN's name.
        lun: String,
        /// What was wrong.
        detail: String,
    },
}

impl BlockError {
    /// The errno a file system operation that met this error should return.
    pub fn errno(&self) -> i32 {
        match self {
            BlockError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            BlockError::Unaligned { .. } | BlockError::OutOfRange { .. } => libc::EINVAL,
            BlockError::BadLun(..) => libc::ENODEV,
            BlockError::Fenced { .. } | BlockError::PossiblyFenced { .. } => libc::EIO,
            BlockError::InUse { .. } => libc::EBUSY,
            BlockError::Unsupported { .. } => libc::EOPNOTSUPP,
            BlockError::Refused { .. } | BlockError::Protocol { .. } => libc::EIO,
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
