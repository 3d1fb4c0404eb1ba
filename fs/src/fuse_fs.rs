//! The FUSE front end of a single-node mount: kernel requests mapped onto the metadata
//! store and the data path.
//!
//! fuser runs several worker threads, each reading its own cloned /dev/fuse descriptor,
//! so a slow request (an fsync, a large write) never holds up the others. Permission
//! checks are the kernel's (`default_permissions`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use blockdev::BlockDevice;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use metadata::{AttrChange, FileKind, Inode, MetaError, NewNode, Timestamp, Unlinked};

use crate::cluster::lease_cache::{LeaseCache, Ticket};
use crate::data::{DataCounters, DataPath};
use crate::inodes::InodeTable;
use crate::locks::{MountLocks, RangeLocks};
use crate::meta::Meta;

/// How long the kernel may cache attributes and entries when one node owns the
/// volume: nothing changes behind its back.
const OWNED_TTL: Duration = Duration::from_secs(1);

/// The largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;

/// A mounted volume, as the kernel sees it.
pub struct CsvFs {
    meta: Meta,
    writeback: bool,
    /// How long the kernel may cache attributes and entries (without leases).
    fixed_ttl: Duration,
    /// On a shared volume, what the node keeps under metadata leases: the kernel
    /// then keeps attributes for as long as their lease, and no entries.
    leases: Option<Arc<LeaseCache>>,
    data: DataPath,
    inodes: Arc<InodeTable>,
    /// Cluster-wide locks; `None`: the kernel keeps locks itself (one node).
    locks: Option<MountLocks>,
}

fn errno(e: &MetaError) -> Errno {
    if e.errno() == libc::EIO {
        tracing::error!(error = %e, "I/O error");
    }
    Errno::from_i32(e.errno())
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

/// The kernel's view of an inode.
pub fn file_attr(ino: u64, i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: i.size,
        blocks: i.blocks * 8,
        atime: i.atime.into(),
        mtime: i.mtime.into(),
        ctime: i.ctime.into(),
        crtime: i.crtime.into(),
        kind: file_type(i.kind()),
        perm: (i.mode & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn time_of(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::Now => Timestamp::now(),
        TimeOrNow::SpecificTime(s) => Timestamp::from(s),
    }
}

/// Answers a request that returns nothing but success or an errno.
fn reply_empty(reply: ReplyEmpty, result: Result<(), MetaError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers getxattr / listxattr: the size when asked with 0, ERANGE when the caller's
/// buffer is too small, else the bytes.
fn reply_xattr(reply: ReplyXattr, size: u32, bytes: Result<Vec<u8>, MetaError>) {
    match bytes {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

fn open_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

impl CsvFs {
    /// A front end over a volume on `dev` whose metadata `meta` keeps; `writeback`
    /// asks the kernel to cache writes.
    ///
    /// With `shared` other nodes change the volume too: the kernel caches no
    /// attributes or entries (every stat asks), drops a file's cached pages when its
    /// size or time changed (FUSE_AUTO_INVAL_DATA, checked at every read), writes go
    /// straight through, and every write sets the file's times at once, since the
    /// other nodes see a change by its time.
    pub fn new(meta: Meta, dev: Arc<dyn BlockDevice>, writeback: bool, shared: bool) -> CsvFs {
        let data = DataPath::new(meta.clone(), dev, !shared);
        CsvFs {
            meta,
            writeback: writeback && !shared,
            fixed_ttl: if shared { Duration::ZERO } else { OWNED_TTL },
            leases: None,
            data,
            inodes: Arc::new(InodeTable::default()),
            locks: None,
        }
    }

    /// On a shared volume: use a layout for I/O on the LUN only within `limit` of
    /// asking for it (see [`DataPath::set_layout_use`]).
    pub fn with_layout_use(mut self, limit: Duration) -> CsvFs {
        self.data.set_layout_use(limit);
        self
    }

    /// On a shared volume: let the kernel keep attributes under the metadata leases
    /// of `leases` (see [`crate::cluster::lease_cache`]).
    pub fn with_lease_cache(mut self, leases: Arc<LeaseCache>) -> CsvFs {
        self.leases = Some(leases);
        self
    }

    /// Marks the start of an operation whose answer the kernel may cache.
    fn begin(&self) -> Option<Ticket> {
        self.leases.as_ref().map(|l| l.begin())
    }

    /// How long the kernel may keep the attributes of `ino` that the operation `t`
    /// began answers with.
    fn attr_ttl(&self, t: &Option<Ticket>, ino: u64) -> Duration {
        match (&self.leases, t) {
            (Some(l), Some(t)) => l.attr_ttl(t, ino),
            _ => self.fixed_ttl,
        }
    }

    /// How long the kernel may keep an entry: under leases, not at all (the node
    /// answers lookups from what it keeps; see [`crate::cluster::lease_cache`]).
    fn entry_ttl(&self) -> Duration {
        match self.leases {
            Some(_) => Duration::ZERO,
            None => self.fixed_ttl,
        }
    }

    /// The bytes this mount moved on the LUN.
    pub fn data_counters(&self) -> Arc<DataCounters> {
        self.data.counters.clone()
    }

    /// Keeps POSIX locks and flock in `service` (cluster-wide) instead of the kernel.
    pub fn with_locks(mut self, service: Arc<dyn RangeLocks>) -> CsvFs {
        self.locks = Some(MountLocks::new(service));
        self
    }

    /// The kernel's view of an inode, with deferred times shown.
    fn attr(&self, ino: u64, inode: &Inode) -> FileAttr {
        let mut i = *inode;
        self.data.times.overlay(ino, &mut i);
        file_attr(ino, &i)
    }

    fn entry(&self, reply: ReplyEntry, t: &Option<Ticket>, ino: u64, inode: &Inode) {
        self.inodes.looked_up(ino);
        reply.entry_with_ttls(
            &self.attr_ttl(t, ino),
            &self.entry_ttl(),
            &self.attr(ino, inode),
            Generation(inode.generation),
        );
    }

    /// Deletes `ino` if its last link is gone and the kernel no longer holds it.
    fn reap(&self, ino: u64) {
        if !self.inodes.unreferenced(ino) {
            return;
        }
        match self.meta.inode(ino) {
            Ok(i) if i.nlink == 0 => {}
            _ => return,
        }
        let state = self.inodes.get(ino);
        let _g = state.data.write();
        self.data.times.discard(ino);
        if let Err(e) = self.meta.delete_inode(ino) {
            tracing::error!(ino, error = %e, "cannot delete an unlinked inode; it stays an orphan until the next mount");
        }
    }

    fn after_unlink(&self, u: Option<Unlinked>) {
        if let Some(u) = u
            && u.orphaned
        {
            self.reap(u.ino);
        }
    }

    /// Writes `data`, or, when the volume cannot hold all of it, as much of its start as
    /// fits (a short write, as POSIX asks); ENOSPC only when not one block fits.
    fn write_what_fits(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(Inode, usize), MetaError> {
        let mut len = data.len();
        loop {
            match self.data.write(ino, offset, &data[..len]) {
                Ok(inode) => return Ok((inode, len)),
                Err(MetaError::NoSpace) if len > 4096 => {
                    // Halve, ending on a block boundary of the file.
                    let end = (offset + len as u64 / 2) / 4096 * 4096;
                    len = if end > offset {
                        (end - offset) as usize
                    } else {
                        len.min(4096 - (offset % 4096) as usize)
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates an inode named `name` in `parent`, owned by the caller.
    fn create_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        symlink: Option<Vec<u8>>,
    ) -> Result<(u64, Inode), Errno> {
        let node = NewNode {
            mode,
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            symlink,
        };
        self.meta
            .create(parent.0, name.as_bytes(), node)
            .map_err(|e| errno(&e))
    }

    fn reply_entry(
        &self,
        reply: ReplyEntry,
        t: &Option<Ticket>,
        created: Result<(u64, Inode), Errno>,
    ) {
        match created {
            Ok((ino, inode)) => self.entry(reply, t, ino, &inode),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for CsvFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let mut wanted = InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        if self.writeback {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        if self.locks.is_some() {
            wanted |= InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS;
        }
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.data.flush_all_times() {
            tracing::error!(error = %e, "cannot commit deferred file times");
        }
        if let Err(e) = self.meta.close() {
            tracing::error!(error = %e, "final durable commit failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t = self.begin();
        match self.meta.lookup(parent.0, name.as_bytes()) {
            Ok((ino, inode)) => self.entry(reply, &t, ino, &inode),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if self.inodes.forget(ino.0, nlookup) {
            self.reap(ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let t = self.begin();
        match self.meta.inode(ino.0) {
            Ok(i) => reply.attr(&self.attr_ttl(&t, ino.0), &self.attr(ino.0, &i)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = ino.0;
        let t = self.begin();
        // Under the data lock: writes defer their times, and an explicit time must
        // win over a deferred one.
        let state = self.inodes.get(ino);
        let _g = state.data.write();
        if mtime.is_some() {
            self.data.times.discard(ino);
        }
        let result = (|| {
            let mut inode = None;
            if let Some(size) = size {
                inode = Some(self.data.truncate(ino, size)?);
            }
            let change = AttrChange {
                mode,
                uid,
                gid,
                atime: atime.map(time_of),
                mtime: mtime.map(time_of),
                ctime: ctime.map(Timestamp::from),
            };
            if mode.is_some()
                || uid.is_some()
                || gid.is_some()
                || atime.is_some()
                || mtime.is_some()
                || inode.is_none()
            {
                inode = Some(self.meta.set_attr(ino, change)?);
            }
            Ok::<_, MetaError>(inode.expect("set above"))
        })();
        match result {
            Ok(i) => reply.attr(&self.attr_ttl(&t, ino), &self.attr(ino, &i)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.meta.read_link(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let t = self.begin();
        let created = self.create_node(
            req,
            parent,
            name,
            mode & !(umask & 0o777),
            u64::from(rdev),
            None,
        );
        self.reply_entry(reply, &t, created);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = libc::S_IFDIR | (mode & 0o7777 & !umask);
        let t = self.begin();
        let created = self.create_node(req, parent, name, mode, 0, None);
        self.reply_entry(reply, &t, created);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // A last link of a file this node does not have open: its inode goes with the
        // name, in the same change, before the answer, as a local file system's would.
        // (The inode is named: if the name meant another by the time the change runs,
        // that one stays, and goes when the kernel forgets it.)
        let delete = self
            .meta
            .lookup(parent.0, name.as_bytes())
            .ok()
            .map(|(ino, _)| ino)
            .filter(|&ino| !self.inodes.is_open(ino));
        match self.meta.unlink(parent.0, name.as_bytes(), delete) {
            Ok(u) => {
                let deleted = u.filter(|u| u.orphaned && delete == Some(u.ino));
                if let Some(u) = deleted {
                    self.inodes.deleted(u.ino);
                }
                reply.ok();
                if deleted.is_none() {
                    self.after_unlink(u);
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.meta.rmdir(parent.0, name.as_bytes()) {
            Ok(u) => {
                reply.ok();
                self.after_unlink(u);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        let t = self.begin();
        let created = self.create_node(
            req,
            parent,
            link_name,
            libc::S_IFLNK | 0o777,
            0,
            Some(target),
        );
        self.reply_entry(reply, &t, created);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_WHITEOUT)
            || flags.contains(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_NOREPLACE)
        {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        match self.meta.rename(
            (parent.0, name.as_bytes()),
            (newparent.0, newname.as_bytes()),
            noreplace,
            exchange,
        ) {
            Ok(replaced) => {
                reply.ok();
                self.after_unlink(replaced);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let t = self.begin();
        match self.meta.link(ino.0, newparent.0, newname.as_bytes()) {
            Ok(inode) => self.entry(reply, &t, ino.0, &inode),
            Err(MetaError::IsDir) => reply.error(Errno::EPERM),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.meta.inode(ino.0) {
            Ok(_) => {
                self.inodes.opened(ino.0);
                reply.opened(FileHandle(0), open_flags(flags.0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.inodes.get(ino.0);
        let _g = state.data.read();
        match self.data.read(ino.0, offset, size) {
            Ok(buf) => reply.data(buf.bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let state = self.inodes.get(ino.0);
        let _g = state.data.write();
        match self.write_what_fits(ino.0, offset, data) {
            Ok((inode, written)) => {
                if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
                    && inode.mode & 0o6000 != 0
                {
                    let change = AttrChange {
                        mode: Some(inode.mode & !0o6000),
                        ..AttrChange::default()
                    };
                    if let Err(e) = self.meta.set_attr(ino.0, change) {
                        return reply.error(errno(&e));
                    }
                }
                reply.written(written as u32)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match &self.locks {
            Some(l) => l.release_owner(ino.0, lock_owner.0, Some(reply)),
            None => reply.ok(),
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        match &self.locks {
            Some(l) => l.get(ino.0, lock_owner.0, (start, end), typ, reply),
            None => reply.error(Errno::ENOSYS),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        match &self.locks {
            Some(l) => l.set(ino.0, lock_owner.0, (start, end), typ, sleep, reply),
            None => reply.error(Errno::ENOSYS),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let (Some(l), Some(owner)) = (&self.locks, lock_owner) {
            l.release_owner(ino.0, owner.0, None);
        }
        if let Err(e) = self.data.flush_times(ino.0) {
            tracing::warn!(ino = ino.0, error = %e, "cannot commit deferred file times");
        }
        reply.ok();
        if self.inodes.closed(ino.0) {
            self.reap(ino.0);
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.data.flush_times(ino.0).and_then(|()| self.meta.sync()),
        )
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.meta.inode(ino.0) {
            Ok(i) if i.is_dir() => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| {
            let dir = self.meta.inode(ino.0)?;
            if offset < 1 && reply.add(ino, 1, FileType::Directory, ".") {
                return Ok(());
            }
            if offset < 2 && reply.add(INodeNo(dir.parent.max(1)), 2, FileType::Directory, "..") {
                return Ok(());
            }
            let mut after = offset.max(2);
            loop {
                let batch = self.meta.read_dir(ino.0, after, 128)?;
                if batch.is_empty() {
                    return Ok(());
                }
                for e in batch {
                    if reply.add(
                        INodeNo(e.ino),
                        e.cookie,
                        file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        return Ok(());
                    }
                    after = e.cookie;
                }
            }
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.meta.sync())
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.meta.usage() {
            Ok(u) => {
                let files = u.inode_capacity.max(u.inodes);
                reply.statfs(
                    u.data_blocks,
                    u.free_blocks,
                    u.free_blocks,
                    files,
                    files - u.inodes,
                    4096,
                    255,
                    4096,
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (create, replace) = (
            flags & libc::XATTR_CREATE != 0,
            flags & libc::XATTR_REPLACE != 0,
        );
        reply_empty(
            reply,
            self.meta
                .set_xattr(ino.0, name.as_bytes(), value, create, replace),
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let value = self.meta.xattr(ino.0, name.as_bytes());
        reply_xattr(reply, size, value);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let list = self.meta.xattr_names(ino.0).map(|names| {
            let mut list = Vec::new();
            for n in names {
                list.extend_from_slice(&n);
                list.push(0);
            }
            list
        });
        reply_xattr(reply, size, list);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.meta.remove_xattr(ino.0, name.as_bytes()))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = (mode & libc::S_IFMT) | (mode & 0o7777 & !umask);
        let mode = if mode & libc::S_IFMT == 0 {
            mode | libc::S_IFREG
        } else {
            mode
        };
        match self.create_node(req, parent, name, mode, 0, None) {
            Ok((ino, inode)) => {
                self.inodes.looked_up(ino);
                self.inodes.opened(ino);
                // One timeout for both: the entry's.
                reply.created(
                    &self.entry_ttl(),
                    &self.attr(ino, &inode),
                    Generation(inode.generation),
                    FileHandle(0),
                    open_flags(flags),
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let state = self.inodes.get(ino.0);
        let _g = state.data.write();
        reply_empty(
            reply,
            self.data.fallocate(ino.0, offset, length, mode).map(drop),
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        const CHUNK: u64 = 1 << 20;
        let len = len.min(u64::from(u32::MAX) & !(CHUNK - 1));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK) as u32;
            let chunk = {
                let state = self.inodes.get(ino_in.0);
                let _g = state.data.read();
                match self.data.read(ino_in.0, offset_in + done, n) {
                    Ok(b) => b,
                    Err(e) => return reply.error(errno(&e)),
                }
            };
            if chunk.bytes().is_empty() {
                break;
            }
            let state = self.inodes.get(ino_out.0);
            let _g = state.data.write();
            if let Err(e) = self.data.write(ino_out.0, offset_out + done, chunk.bytes()) {
                return reply.error(errno(&e));
            }
            done += chunk.bytes().len() as u64;
            if chunk.bytes().len() < n as usize {
                break;
            }
        }
        reply.written(done as u32)
    }
}
