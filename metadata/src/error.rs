//! The one error type of the metadata layer, with the errno each case means to a caller.

use blockdev::BlockError;

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// No such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// The name is taken.
    #[error("file exists")]
    Exists,
    /// A directory that had to be empty is not.
    #[error("directory not empty")]
    NotEmpty,
    /// A directory was expected.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was expected.
    #[error("is a directory")]
    IsDir,
    /// A name longer than 255 bytes.
    #[error("file name too long")]
    NameTooLong,
    /// An argument the operation cannot accept.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The data region is full.
    #[error("no space left on the volume")]
    NoSpace,
    /// The metadata region is full (redb could not grow its file).
    #[error("no space left in the volume's metadata region")]
    MetadataFull,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoData,
    /// A buffer too small for the answer.
    #[error("result does not fit the buffer")]
    Range,
    /// Too many links to one inode.
    #[error("too many links")]
    TooManyLinks,
    /// The operation is not supported.
    #[error("operation not supported")]
    NotSupported,
    /// The volume is mounted read-only.
    #[error("read-only volume")]
    ReadOnly,
    /// mkfs found a volume on the LUN and was not told to overwrite it.
    #[error("{lun} already holds csvfs volume {label:?} ({uuid}); use --force to overwrite it")]
    AlreadyFormatted {
        /// The LUN.
        lun: String,
        /// The volume's label.
        label: String,
        /// The volume's UUID.
        uuid: String,
    },
    /// On-disk data failed a check: a bad magic, version or checksum.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The LUN failed an I/O.
    #[error("LUN I/O failed")]
    Block(#[from] BlockError),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(String),
    /// The store refused to go on after an earlier I/O failure (such as a full region);
    /// it must be reopened.
    #[error("metadata store must be reopened after an earlier I/O error")]
    StoreLatched,
    /// A layout of a shared volume grew too old to be used for I/O on the LUN before
    /// the I/O started (its blocks may have been freed and reused since); the data
    /// path asks for a fresh one and tries again.
    #[error("a file's layout went stale {0} times in a row before its I/O could start")]
    StaleLayout(u32),
    /// A failure reported by the coordinator that served the operation, as its errno
    /// and its message (see [`MetaError::from_remote`]).
    #[error("{message}")]
    Remote {
        /// The errno.
        errno: i32,
        /// What the coordinator said.
        message: String,
    },
}

impl MetaError {
    /// The errno a POSIX caller should see.
    pub fn errno(&self) -> i32 {
        use MetaError::*;
        match self {
            NotFound => libc::ENOENT,
            Exists | AlreadyFormatted { .. } => libc::EEXIST,
            NotEmpty => libc::ENOTEMPTY,
            NotDir => libc::ENOTDIR,
            IsDir => libc::EISDIR,
            NameTooLong => libc::ENAMETOOLONG,
            Invalid(_) => libc::EINVAL,
            NoSpace | MetadataFull => libc::ENOSPC,
            NoData => libc::ENODATA,
            Range => libc::ERANGE,
            TooManyLinks => libc::EMLINK,
            NotSupported => libc::EOPNOTSUPP,
            ReadOnly => libc::EROFS,
            Corrupt(_) | Store(_) | StoreLatched | StaleLayout(_) => libc::EIO,
            Block(e) => e.errno(),
            Remote { errno, .. } => *errno,
        }
    }

    /// The error a coordinator reported as `errno` and `message`: the plain cases
    /// become themselves again (callers match on `NoSpace`, `NotFound`, ...), the rest
    /// keep the coordinator's words.
    pub fn from_remote(errno: i32, message: String) -> MetaError {
        use MetaError::*;
        match errno {
            libc::ENOENT => NotFound,
            libc::EEXIST => Exists,
            libc::ENOTEMPTY => NotEmpty,
            libc::ENOTDIR => NotDir,
            libc::EISDIR => IsDir,
            libc::ENAMETOOLONG => NameTooLong,
            libc::ENOSPC if message.contains("metadata") => MetadataFull,
            libc::ENOSPC => NoSpace,
            libc::ENODATA => NoData,
            libc::ERANGE => Range,
            libc::EMLINK => TooManyLinks,
            libc::EOPNOTSUPP => NotSupported,
            libc::EROFS => ReadOnly,
            _ => Remote { errno, message },
        }
    }

    /// True when the metadata store failed to grow (or refuses to go on after that)
    /// and must be reopened.
    pub fn is_metadata_full(&self) -> bool {
        matches!(self, MetaError::MetadataFull | MetaError::StoreLatched)
    }
}

fn from_redb(e: redb::Error) -> MetaError {
    match e {
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            MetaError::MetadataFull
        }
        redb::Error::Corrupted(msg) => MetaError::Corrupt(msg),
        redb::Error::PreviousIo => MetaError::StoreLatched,
        other => MetaError::Store(other.to_string()),
    }
}

macro_rules! from_redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> MetaError {
                from_redb(e.into())
            }
        }
    )*};
}

from_redb_errors!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// Result of a metadata operation.
pub type MetaResult<T> = Result<T, MetaError>;
