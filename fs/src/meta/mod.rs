//! The metadata of a mount, reached through one handle whoever keeps it: the volume's
//! own store on a single node or on the coordinator, or the coordinator over QUIC on
//! the other nodes of a cluster.

pub mod call;
pub mod local;

use std::sync::Arc;

use metadata::{
    AttrChange, DirEntry, Extent, Inode, MetaError, MetaResult, NewNode, Segment, Timestamp,
    Unlinked, Usage, Volume,
};

pub use call::{MetaCall, MetaReply};

/// Something that carries out metadata operations.
pub trait MetaService: Send + Sync {
    /// Runs one operation.
    fn call(&self, call: MetaCall) -> MetaResult<MetaReply>;
    /// Makes everything durable and lets go of the store (unmount).
    fn close(&self) -> MetaResult<()>;
}

/// A single node's own store.
pub struct LocalMeta(pub Arc<Volume>);

impl MetaService for LocalMeta {
    fn call(&self, call: MetaCall) -> MetaResult<MetaReply> {
        local::execute(&self.0, call)
    }
    fn close(&self) -> MetaResult<()> {
        self.0.close()
    }
}

/// The metadata handle of a mount, with one typed method per operation.
#[derive(Clone)]
pub struct Meta(Arc<dyn MetaService>);

fn unexpected(reply: MetaReply) -> MetaError {
    MetaError::Store(format!("unexpected answer {reply:?}"))
}

impl Meta {
    /// A handle over `service`.
    pub fn new(service: Arc<dyn MetaService>) -> Meta {
        Meta(service)
    }

    /// A handle over a single node's volume.
    pub fn local(vol: Arc<Volume>) -> Meta {
        Meta(Arc::new(LocalMeta(vol)))
    }

    /// Runs any operation.
    pub fn call(&self, call: MetaCall) -> MetaResult<MetaReply> {
        self.0.call(call)
    }

    /// See [`MetaService::close`].
    pub fn close(&self) -> MetaResult<()> {
        self.0.close()
    }

    fn inode_of(&self, call: MetaCall) -> MetaResult<Inode> {
        match self.call(call)? {
            MetaReply::Inode(i) => Ok(i),
            r => Err(unexpected(r)),
        }
    }

    fn entry_of(&self, call: MetaCall) -> MetaResult<(u64, Inode)> {
        match self.call(call)? {
            MetaReply::Entry(ino, i) => Ok((ino, i)),
            r => Err(unexpected(r)),
        }
    }

    fn done(&self, call: MetaCall) -> MetaResult<()> {
        match self.call(call)? {
            MetaReply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn bytes_of(&self, call: MetaCall) -> MetaResult<Vec<u8>> {
        match self.call(call)? {
            MetaReply::Bytes(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    fn unlinked_of(&self, call: MetaCall) -> MetaResult<Option<Unlinked>> {
        match self.call(call)? {
            MetaReply::Unlinked(u) => Ok(u),
            r => Err(unexpected(r)),
        }
    }

    /// An inode's attributes.
    pub fn inode(&self, ino: u64) -> MetaResult<Inode> {
        self.inode_of(MetaCall::Inode { ino })
    }

    /// A name in a directory.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> MetaResult<(u64, Inode)> {
        self.entry_of(MetaCall::Lookup {
            parent,
            name: name.to_vec(),
        })
    }

    /// Up to `max` entries of `dir` after cookie `after`.
    pub fn read_dir(&self, dir: u64, after: u64, max: u32) -> MetaResult<Vec<DirEntry>> {
        match self.call(MetaCall::ReadDir { dir, after, max })? {
            MetaReply::Entries(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }

    /// A symlink's target.
    pub fn read_link(&self, ino: u64) -> MetaResult<Vec<u8>> {
        self.bytes_of(MetaCall::ReadLink { ino })
    }

    /// One extended attribute.
    pub fn xattr(&self, ino: u64, name: &[u8]) -> MetaResult<Vec<u8>> {
        self.bytes_of(MetaCall::Xattr {
            ino,
            name: name.to_vec(),
        })
    }

    /// The names of the extended attributes.
    pub fn xattr_names(&self, ino: u64) -> MetaResult<Vec<Vec<u8>>> {
        match self.call(MetaCall::XattrNames { ino })? {
            MetaReply::Names(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }

    /// The inode and its extents over blocks `[from, to)`, as of one moment.
    pub fn layout(&self, ino: u64, from: u64, to: u64) -> MetaResult<(Inode, Vec<Extent>)> {
        match self.call(MetaCall::Layout { ino, from, to })? {
            MetaReply::Layout(i, e) => Ok((i, e)),
            r => Err(unexpected(r)),
        }
    }

    /// Space figures.
    pub fn usage(&self) -> MetaResult<Usage> {
        match self.call(MetaCall::Usage)? {
            MetaReply::Usage(u) => Ok(u),
            r => Err(unexpected(r)),
        }
    }

    /// Makes every change so far durable.
    pub fn sync(&self) -> MetaResult<()> {
        self.done(MetaCall::Sync)
    }

    /// Creates a node named `name` in `parent`.
    pub fn create(&self, parent: u64, name: &[u8], node: NewNode) -> MetaResult<(u64, Inode)> {
        self.entry_of(MetaCall::Create {
            parent,
            name: name.to_vec(),
            node,
        })
    }

    /// A new name for `ino`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> MetaResult<Inode> {
        self.inode_of(MetaCall::Link {
            ino,
            parent,
            name: name.to_vec(),
        })
    }

    /// Removes a name of a non-directory; when it was the last link of inode
    /// `delete`, that inode goes too (see [`MetaCall::Unlink`]).
    pub fn unlink(
        &self,
        parent: u64,
        name: &[u8],
        delete: Option<u64>,
    ) -> MetaResult<Option<Unlinked>> {
        self.unlinked_of(MetaCall::Unlink {
            parent,
            name: name.to_vec(),
            delete,
        })
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> MetaResult<Option<Unlinked>> {
        self.unlinked_of(MetaCall::Rmdir {
            parent,
            name: name.to_vec(),
        })
    }

    /// rename(2); returns what the rename replaced.
    pub fn rename(
        &self,
        (parent, name): (u64, &[u8]),
        (new_parent, new_name): (u64, &[u8]),
        noreplace: bool,
        exchange: bool,
    ) -> MetaResult<Option<Unlinked>> {
        self.unlinked_of(MetaCall::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            noreplace,
            exchange,
        })
    }

    /// setattr other than the size.
    pub fn set_attr(&self, ino: u64, change: AttrChange) -> MetaResult<Inode> {
        self.inode_of(MetaCall::SetAttr { ino, change })
    }

    /// Sets deferred modification times.
    pub fn touch_times(&self, times: Vec<(u64, Timestamp)>) -> MetaResult<()> {
        self.done(MetaCall::TouchTimes { times })
    }

    /// setxattr(2).
    pub fn set_xattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> MetaResult<()> {
        self.done(MetaCall::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            create,
            replace,
        })
    }

    /// removexattr(2).
    pub fn remove_xattr(&self, ino: u64, name: &[u8]) -> MetaResult<()> {
        self.done(MetaCall::RemoveXattr {
            ino,
            name: name.to_vec(),
        })
    }

    /// Deletes an inode whose last link is gone.
    pub fn delete_inode(&self, ino: u64) -> MetaResult<()> {
        self.done(MetaCall::DeleteInode { ino })
    }

    /// Maps the holes of blocks `[from, to)` to unwritten blocks; returns the map.
    pub fn allocate_range(&self, ino: u64, from: u64, to: u64) -> MetaResult<Vec<Segment>> {
        match self.call(MetaCall::AllocateRange { ino, from, to })? {
            MetaReply::Segments(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    /// Marks blocks `[from, to)` written and the size at least `end`.
    pub fn commit_write(&self, ino: u64, from: u64, to: u64, end: u64) -> MetaResult<Inode> {
        self.inode_of(MetaCall::CommitWrite { ino, from, to, end })
    }

    /// Sets the size.
    pub fn truncate(&self, ino: u64, size: u64) -> MetaResult<Inode> {
        self.inode_of(MetaCall::Truncate { ino, size })
    }

    /// Unmaps whole blocks `[from, to)`.
    pub fn punch(&self, ino: u64, from: u64, to: u64) -> MetaResult<Inode> {
        self.inode_of(MetaCall::Punch { ino, from, to })
    }

    /// Unwritten blocks over `[from, to)` and the size at least `new_size`.
    pub fn preallocate(
        &self,
        ino: u64,
        (from, to): (u64, u64),
        zero: bool,
        new_size: Option<u64>,
    ) -> MetaResult<Inode> {
        self.inode_of(MetaCall::Preallocate {
            ino,
            from,
            to,
            zero,
            new_size,
        })
    }
}
