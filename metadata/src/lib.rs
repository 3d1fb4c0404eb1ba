//! The csvfs on-disk format and metadata store.
//!
//! Owns: the superblock and the regions of a LUN ([`superblock`], [`layout`]), the
//! metadata store (redb on the metadata region through [`region_backend`]), inodes,
//! directories, extents with an unwritten flag, free space, xattrs, the group commit
//! that is the store's single writer, and the checks of fsck. Knows nothing of FUSE,
//! QUIC or iSCSI: it reads and writes a [`blockdev::BlockDevice`].

pub mod alloc;
pub mod commit;
pub mod error;
pub mod extent;
pub mod filemap;
pub mod free_hold;
pub mod fsck;
pub mod inode;
pub mod layout;
pub mod namespace;
pub mod query;
pub mod region_backend;
pub mod requests;
pub mod store;
pub mod superblock;
pub mod tables;
pub mod volume;

pub use commit::{JobKind, Origin};
pub use error::{MetaError, MetaResult};
pub use extent::{Extent, Segment};
pub use inode::{FileKind, Inode, ROOT_INO, Timestamp};
pub use namespace::{AttrChange, Ctx, NewNode, Unlinked};
pub use query::{DirEntry, Snapshot};
pub use superblock::Superblock;
pub use volume::{FormatOptions, OpenOptions, Usage, Volume};

#[cfg(test)]
pub(crate) mod test_support {
    /// A throwaway redb database on a temporary file.
    pub fn temp_db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("x.redb")).expect("create redb");
        (dir, db)
    }
}
