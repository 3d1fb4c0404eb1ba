//! The metadata operations of a mount as values: what the FUSE front end and the data
//! path ask of the metadata store, and what they get back. One node (the coordinator)
//! carries them out on its store; the others send them to it over QUIC
//! ([`crate::cluster`]), so every operation has one meaning whoever runs it.

use metadata::{AttrChange, DirEntry, Extent, Inode, NewNode, Segment, Timestamp, Unlinked, Usage};
use serde::{Deserialize, Serialize};

/// One metadata operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCall {
    /// An inode's attributes.
    Inode { ino: u64 },
    /// A name in a directory.
    Lookup { parent: u64, name: Vec<u8> },
    /// Up to `max` entries of a directory after cookie `after`.
    ReadDir { dir: u64, after: u64, max: u32 },
    /// A symlink's target.
    ReadLink { ino: u64 },
    /// One extended attribute.
    Xattr { ino: u64, name: Vec<u8> },
    /// The names of the extended attributes.
    XattrNames { ino: u64 },
    /// The inode and its extents over logical blocks `[from, to)`, from one snapshot.
    Layout { ino: u64, from: u64, to: u64 },
    /// Space and inode figures.
    Usage,
    /// Makes every change so far durable.
    Sync,
    /// Creates a file, directory, symlink or special file.
    Create {
        parent: u64,
        name: Vec<u8>,
        node: NewNode,
    },
    /// A new name for an inode.
    Link {
        ino: u64,
        parent: u64,
        name: Vec<u8>,
    },
    /// Removes a name of a non-directory; when it was the last link of inode `delete`,
    /// that inode goes too, in the same change (the caller does not have it open).
    Unlink {
        parent: u64,
        name: Vec<u8>,
        delete: Option<u64>,
    },
    /// Removes an empty directory.
    Rmdir { parent: u64, name: Vec<u8> },
    /// rename(2) with its flags.
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        noreplace: bool,
        exchange: bool,
    },
    /// setattr other than the size.
    SetAttr { ino: u64, change: AttrChange },
    /// Sets the modification and change times of inodes (deferred by in-place writes).
    TouchTimes { times: Vec<(u64, Timestamp)> },
    /// setxattr(2).
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        create: bool,
        replace: bool,
    },
    /// removexattr(2).
    RemoveXattr { ino: u64, name: Vec<u8> },
    /// Deletes an inode whose last link is gone.
    DeleteInode { ino: u64 },
    /// Maps the holes of logical blocks `[from, to)` to unwritten blocks.
    AllocateRange { ino: u64, from: u64, to: u64 },
    /// Marks blocks `[from, to)` written and the size at least `end`.
    CommitWrite {
        ino: u64,
        from: u64,
        to: u64,
        end: u64,
    },
    /// Sets the size.
    Truncate { ino: u64, size: u64 },
    /// Unmaps whole blocks `[from, to)`.
    Punch { ino: u64, from: u64, to: u64 },
    /// fallocate: unwritten blocks over `[from, to)` (`zero`: also over written ones),
    /// and the size at least `new_size`.
    Preallocate {
        ino: u64,
        from: u64,
        to: u64,
        zero: bool,
        new_size: Option<u64>,
    },
}

/// What an operation returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaReply {
    /// Nothing but success.
    Done,
    /// An inode.
    Inode(Inode),
    /// An inode and its number.
    Entry(u64, Inode),
    /// Directory entries.
    Entries(Vec<DirEntry>),
    /// Bytes: a symlink target or an attribute value.
    Bytes(Vec<u8>),
    /// Attribute names.
    Names(Vec<Vec<u8>>),
    /// An inode and extents.
    Layout(Inode, Vec<Extent>),
    /// The map of a range after allocation.
    Segments(Vec<Segment>),
    /// Space figures.
    Usage(Usage),
    /// What an unlink, rmdir or rename took away.
    Unlinked(Option<Unlinked>),
}

impl MetaCall {
    /// True when the operation changes the store.
    pub fn changes(&self) -> bool {
        !matches!(
            self,
            MetaCall::Inode { .. }
                | MetaCall::Lookup { .. }
                | MetaCall::ReadDir { .. }
                | MetaCall::ReadLink { .. }
                | MetaCall::Xattr { .. }
                | MetaCall::XattrNames { .. }
                | MetaCall::Layout { .. }
                | MetaCall::Usage
        )
    }

    /// True when the answer names blocks that the caller then reads or writes on the
    /// LUN directly (a layout, freshly allocated blocks).
    pub fn hands_out_layout(&self) -> bool {
        matches!(
            self,
            MetaCall::Layout { .. } | MetaCall::AllocateRange { .. }
        )
    }

    /// True when the operation removes things, so that it may use the metadata
    /// region's reserve (a full volume can always be emptied).
    pub fn frees_space(&self) -> bool {
        matches!(
            self,
            MetaCall::Unlink { .. }
                | MetaCall::Rmdir { .. }
                | MetaCall::Rename { .. }
                | MetaCall::RemoveXattr { .. }
                | MetaCall::DeleteInode { .. }
                | MetaCall::Truncate { .. }
                | MetaCall::Punch { .. }
        )
    }
}
