//! Operations on the name space: create, link, unlink, rename, attributes, xattrs.
//!
//! Each runs inside one write transaction of the committer and checks everything it
//! can fail on before it changes anything.

use redb::{ReadableTable, WriteTransaction};

use crate::alloc::{add_counter, free_later};
use crate::error::{MetaError, MetaResult};
use crate::extent::remove_range;
use crate::inode::{FileKind, Inode, ROOT_INO, Timestamp};
use crate::query::{dir_is_empty, lookup_in, read_inode};
use crate::tables::{
    COUNTERS, DIR_COOKIES, DIRENTS, EXTENTS, INODES, ORPHANS, SYMLINKS, XATTRS, counter,
};

/// The longest file name.
pub const NAME_MAX: usize = 255;
/// The most links an inode may have.
pub const LINK_MAX: u32 = 65_000;
/// The longest xattr value.
pub const XATTR_VALUE_MAX: usize = 65_536;
/// The longest symlink target.
pub const SYMLINK_MAX: usize = 4095;

/// Checks a name for a directory entry.
pub fn check_name(name: &[u8]) -> MetaResult<()> {
    if name.len() > NAME_MAX {
        return Err(MetaError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(MetaError::Invalid("bad file name"));
    }
    Ok(())
}

/// A write transaction and the time its changes are stamped with.
pub struct Ctx<'a> {
    /// The transaction.
    pub txn: &'a WriteTransaction,
    /// "Now" for every timestamp this operation sets.
    pub now: Timestamp,
}

/// What a new inode is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewNode {
    /// Type and permission bits (umask already applied).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group (the parent's instead when the parent is set-group-ID).
    pub gid: u32,
    /// Device number for device files.
    pub rdev: u64,
    /// Target, for symlinks.
    pub symlink: Option<Vec<u8>>,
}

/// An inode whose last link went away in an operation; the caller deletes it once no
/// one has it open (see [`Ctx::delete_inode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unlinked {
    /// The inode.
    pub ino: u64,
    /// True when its link count reached zero.
    pub orphaned: bool,
}

impl Ctx<'_> {
    /// Reads an inode.
    pub fn inode(&self, ino: u64) -> MetaResult<Inode> {
        read_inode(&self.txn.open_table(INODES)?, ino)
    }

    /// Writes an inode.
    pub fn put(&self, ino: u64, inode: &Inode) -> MetaResult<()> {
        self.txn
            .open_table(INODES)?
            .insert(ino, inode.encode().as_slice())?;
        Ok(())
    }

    fn dir(&self, ino: u64) -> MetaResult<Inode> {
        let d = self.inode(ino)?;
        if !d.is_dir() {
            return Err(MetaError::NotDir);
        }
        if d.nlink == 0 {
            return Err(MetaError::NotFound);
        }
        Ok(d)
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> MetaResult<Option<(u64, FileKind, u64)>> {
        lookup_in(&self.txn.open_table(DIRENTS)?, parent, name)
    }

    fn add_entry(
        &self,
        parent: u64,
        dir: &mut Inode,
        name: &[u8],
        ino: u64,
        kind: FileKind,
    ) -> MetaResult<()> {
        let cookie = dir.next_cookie;
        dir.next_cookie += 1;
        self.txn
            .open_table(DIRENTS)?
            .insert((parent, name), (ino, kind.code(), cookie))?;
        self.txn
            .open_table(DIR_COOKIES)?
            .insert((parent, cookie), name)?;
        Ok(())
    }

    fn remove_entry(&self, parent: u64, name: &[u8], cookie: u64) -> MetaResult<()> {
        self.txn.open_table(DIRENTS)?.remove((parent, name))?;
        self.txn.open_table(DIR_COOKIES)?.remove((parent, cookie))?;
        Ok(())
    }

    fn touch_dir(&self, dir: &mut Inode) {
        dir.mtime = self.now;
        dir.ctime = self.now;
    }

    /// Creates a file, directory, symlink or special file.
    pub fn create(&self, parent: u64, name: &[u8], node: &NewNode) -> MetaResult<(u64, Inode)> {
        self.create_as(parent, name, node, None)
    }

    /// [`create`](Self::create) with the inode number `pinned` when given (a create
    /// replayed to a new coordinator gets the number its first answer gave; see
    /// `csvfs::cluster::unconfirmed`), which must be free.
    pub fn create_as(
        &self,
        parent: u64,
        name: &[u8],
        node: &NewNode,
        pinned: Option<u64>,
    ) -> MetaResult<(u64, Inode)> {
        check_name(name)?;
        let kind =
            FileKind::from_mode(node.mode).ok_or(MetaError::Invalid("mode has no file type"))?;
        if let Some(t) = &node.symlink
            && (t.is_empty() || t.len() > SYMLINK_MAX)
        {
            return Err(MetaError::Invalid("bad symlink target length"));
        }
        let mut dir = self.dir(parent)?;
        if self.lookup(parent, name)?.is_some() {
            return Err(MetaError::Exists);
        }
        if kind == FileKind::Dir && dir.nlink >= LINK_MAX {
            return Err(MetaError::TooManyLinks);
        }
        let ino = {
            let mut c = self.txn.open_table(COUNTERS)?;
            let next = c
                .get(counter::NEXT_INO)?
                .map(|v| v.value())
                .unwrap_or(ROOT_INO + 1);
            let ino = pinned.unwrap_or(next);
            if ino <= ROOT_INO || self.txn.open_table(INODES)?.get(ino)?.is_some() {
                return Err(MetaError::Corrupt(format!(
                    "inode number {ino} asked for a replayed create is not free"
                )));
            }
            c.insert(counter::NEXT_INO, next.max(ino + 1))?;
            ino
        };
        let mut mode = node.mode;
        let mut gid = node.gid;
        if dir.mode & libc::S_ISGID != 0 {
            gid = dir.gid;
            if kind == FileKind::Dir {
                mode |= libc::S_ISGID;
            }
        }
        let mut inode = Inode::new(mode, node.uid, gid, self.now);
        inode.rdev = node.rdev;
        inode.generation = ino;
        if kind == FileKind::Dir {
            inode.nlink = 2;
            inode.parent = parent;
            dir.nlink += 1;
        }
        if let Some(t) = &node.symlink {
            inode.size = t.len() as u64;
            self.txn.open_table(SYMLINKS)?.insert(ino, t.as_slice())?;
        }
        self.add_entry(parent, &mut dir, name, ino, kind)?;
        self.touch_dir(&mut dir);
        self.put(parent, &dir)?;
        self.put(ino, &inode)?;
        add_counter(self.txn, counter::INODES, 1)?;
        Ok((ino, inode))
    }

    /// Adds a hard link to `ino`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> MetaResult<Inode> {
        check_name(name)?;
        let mut inode = self.inode(ino)?;
        if inode.is_dir() {
            return Err(MetaError::IsDir);
        }
        if inode.nlink >= LINK_MAX {
            return Err(MetaError::TooManyLinks);
        }
        let mut dir = self.dir(parent)?;
        if self.lookup(parent, name)?.is_some() {
            return Err(MetaError::Exists);
        }
        if inode.nlink == 0 {
            return Err(MetaError::NotFound);
        }
        self.add_entry(parent, &mut dir, name, ino, inode.kind())?;
        self.touch_dir(&mut dir);
        self.put(parent, &dir)?;
        inode.nlink += 1;
        inode.ctime = self.now;
        self.put(ino, &inode)?;
        Ok(inode)
    }

    /// Drops one link of `ino` (a directory loses both of its own).
    fn drop_link(&self, ino: u64, inode: &mut Inode) -> MetaResult<Unlinked> {
        inode.nlink = if inode.is_dir() {
            0
        } else {
            inode.nlink.saturating_sub(1)
        };
        inode.ctime = self.now;
        self.put(ino, inode)?;
        let orphaned = inode.nlink == 0;
        if orphaned {
            self.txn.open_table(ORPHANS)?.insert(ino, ())?;
        }
        Ok(Unlinked { ino, orphaned })
    }

    /// Removes a non-directory entry.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> MetaResult<Unlinked> {
        let mut dir = self.dir(parent)?;
        let (ino, kind, cookie) = self.lookup(parent, name)?.ok_or(MetaError::NotFound)?;
        if kind == FileKind::Dir {
            return Err(MetaError::IsDir);
        }
        let mut inode = self.inode(ino)?;
        self.remove_entry(parent, name, cookie)?;
        self.touch_dir(&mut dir);
        self.put(parent, &dir)?;
        self.drop_link(ino, &mut inode)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> MetaResult<Unlinked> {
        let mut dir = self.dir(parent)?;
        let (ino, kind, cookie) = self.lookup(parent, name)?.ok_or(MetaError::NotFound)?;
        if kind != FileKind::Dir {
            return Err(MetaError::NotDir);
        }
        if !dir_is_empty(&self.txn.open_table(DIRENTS)?, ino)? {
            return Err(MetaError::NotEmpty);
        }
        let mut inode = self.inode(ino)?;
        self.remove_entry(parent, name, cookie)?;
        dir.nlink -= 1;
        self.touch_dir(&mut dir);
        self.put(parent, &dir)?;
        self.drop_link(ino, &mut inode)
    }

    /// True when `ancestor` is `ino` or one of its ancestors.
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> MetaResult<bool> {
        for _ in 0..1_000_000 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            ino = self.inode(ino)?.parent;
        }
        Err(MetaError::Corrupt("directory parent chain loops".into()))
    }

    /// Renames, with `noreplace` (RENAME_NOREPLACE) or `exchange` (RENAME_EXCHANGE).
    /// Returns the inode the rename replaced, if any.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        noreplace: bool,
        exchange: bool,
    ) -> MetaResult<Option<Unlinked>> {
        check_name(new_name)?;
        let (src, src_kind, src_cookie) = self.lookup(parent, name)?.ok_or(MetaError::NotFound)?;
        self.dir(new_parent)?;
        let dst = self.lookup(new_parent, new_name)?;
        if exchange {
            let (dst_ino, dst_kind, dst_cookie) = dst.ok_or(MetaError::NotFound)?;
            return self
                .exchange(
                    (parent, name, src, src_kind, src_cookie),
                    (new_parent, new_name, dst_ino, dst_kind, dst_cookie),
                )
                .map(|()| None);
        }
        if let Some((dst_ino, ..)) = dst {
            if noreplace {
                return Err(MetaError::Exists);
            }
            if dst_ino == src {
                return Ok(None);
            }
        }
        if src_kind == FileKind::Dir && new_parent != parent && self.is_ancestor(src, new_parent)? {
            return Err(MetaError::Invalid("cannot move a directory into itself"));
        }
        let mut replaced = None;
        if let Some((dst_ino, dst_kind, dst_cookie)) = dst {
            match (src_kind == FileKind::Dir, dst_kind == FileKind::Dir) {
                (true, false) => return Err(MetaError::NotDir),
                (false, true) => return Err(MetaError::IsDir),
                (true, true) if !dir_is_empty(&self.txn.open_table(DIRENTS)?, dst_ino)? => {
                    return Err(MetaError::NotEmpty);
                }
                _ => {}
            }
            let mut dst_inode = self.inode(dst_ino)?;
            self.remove_entry(new_parent, new_name, dst_cookie)?;
            if dst_kind == FileKind::Dir {
                let mut np = self.inode(new_parent)?;
                np.nlink -= 1;
                self.put(new_parent, &np)?;
            }
            replaced = Some(self.drop_link(dst_ino, &mut dst_inode)?);
        }
        self.remove_entry(parent, name, src_cookie)?;
        let mut src_inode = self.inode(src)?;
        let mut new_dir = self.inode(new_parent)?;
        self.add_entry(new_parent, &mut new_dir, new_name, src, src_kind)?;
        if src_kind == FileKind::Dir && new_parent != parent {
            new_dir.nlink += 1;
            src_inode.parent = new_parent;
        }
        self.touch_dir(&mut new_dir);
        self.put(new_parent, &new_dir)?;
        if new_parent != parent {
            let mut old_dir = self.inode(parent)?;
            if src_kind == FileKind::Dir {
                old_dir.nlink -= 1;
            }
            self.touch_dir(&mut old_dir);
            self.put(parent, &old_dir)?;
        }
        src_inode.ctime = self.now;
        self.put(src, &src_inode)?;
        Ok(replaced)
    }

    fn exchange(
        &self,
        a: (u64, &[u8], u64, FileKind, u64),
        b: (u64, &[u8], u64, FileKind, u64),
    ) -> MetaResult<()> {
        let (pa, na, ia, ka, ca) = a;
        let (pb, nb, ib, kb, cb) = b;
        if ia == ib {
            return Ok(());
        }
        if pa != pb
            && ((ka == FileKind::Dir && self.is_ancestor(ia, pb)?)
                || (kb == FileKind::Dir && self.is_ancestor(ib, pa)?))
        {
            return Err(MetaError::Invalid("cannot move a directory into itself"));
        }
        let mut dirents = self.txn.open_table(DIRENTS)?;
        dirents.insert((pa, na), (ib, kb.code(), ca))?;
        dirents.insert((pb, nb), (ia, ka.code(), cb))?;
        drop(dirents);
        let mut inode_a = self.inode(ia)?;
        let mut inode_b = self.inode(ib)?;
        if pa != pb {
            if ka == FileKind::Dir {
                inode_a.parent = pb;
            }
            if kb == FileKind::Dir {
                inode_b.parent = pa;
            }
            let delta = i64::from(ka == FileKind::Dir) - i64::from(kb == FileKind::Dir);
            let mut dir_a = self.inode(pa)?;
            let mut dir_b = self.inode(pb)?;
            dir_a.nlink = (i64::from(dir_a.nlink) - delta) as u32;
            dir_b.nlink = (i64::from(dir_b.nlink) + delta) as u32;
            self.touch_dir(&mut dir_a);
            self.touch_dir(&mut dir_b);
            self.put(pa, &dir_a)?;
            self.put(pb, &dir_b)?;
        } else {
            let mut d = self.inode(pa)?;
            self.touch_dir(&mut d);
            self.put(pa, &d)?;
        }
        inode_a.ctime = self.now;
        inode_b.ctime = self.now;
        self.put(ia, &inode_a)?;
        self.put(ib, &inode_b)?;
        Ok(())
    }

    /// Changes attributes other than the size.
    pub fn set_attr(&self, ino: u64, change: &AttrChange) -> MetaResult<Inode> {
        let mut inode = self.inode(ino)?;
        if let Some(mode) = change.mode {
            inode.mode = (inode.mode & libc::S_IFMT) | (mode & !libc::S_IFMT);
        }
        if let Some(uid) = change.uid {
            inode.uid = uid;
        }
        if let Some(gid) = change.gid {
            inode.gid = gid;
        }
        if let Some(t) = change.atime {
            inode.atime = t;
        }
        if let Some(t) = change.mtime {
            inode.mtime = t;
        }
        inode.ctime = change.ctime.unwrap_or(self.now);
        self.put(ino, &inode)?;
        Ok(inode)
    }

    /// Records in-place writes: mtime and ctime become at least `t` (a missing inode,
    /// deleted since, is not an error).
    pub fn touch_times(&self, ino: u64, t: Timestamp) -> MetaResult<()> {
        let mut inode = match self.inode(ino) {
            Ok(i) => i,
            Err(MetaError::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        if inode.mtime < t || inode.ctime < t {
            inode.mtime = inode.mtime.max(t);
            inode.ctime = inode.ctime.max(t);
            self.put(ino, &inode)?;
        }
        Ok(())
    }

    /// Sets an extended attribute; `create` fails if it exists, `replace` if it does not.
    pub fn set_xattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> MetaResult<()> {
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(MetaError::Range);
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(MetaError::NoSpace);
        }
        let mut inode = self.inode(ino)?;
        let mut t = self.txn.open_table(XATTRS)?;
        let exists = t.get((ino, name))?.is_some();
        if create && exists {
            return Err(MetaError::Exists);
        }
        if replace && !exists {
            return Err(MetaError::NoData);
        }
        t.insert((ino, name), value)?;
        drop(t);
        inode.ctime = self.now;
        self.put(ino, &inode)
    }

    /// Removes an extended attribute.
    pub fn remove_xattr(&self, ino: u64, name: &[u8]) -> MetaResult<()> {
        let mut inode = self.inode(ino)?;
        if self.txn.open_table(XATTRS)?.remove((ino, name))?.is_none() {
            return Err(MetaError::NoData);
        }
        inode.ctime = self.now;
        self.put(ino, &inode)
    }

    /// Deletes an inode with no links: its data, xattrs and record.
    pub fn delete_inode(&self, ino: u64) -> MetaResult<()> {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(MetaError::NotFound) => {
                self.txn.open_table(ORPHANS)?.remove(ino)?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if inode.nlink != 0 {
            return Ok(());
        }
        let freed = remove_range(&mut self.txn.open_table(EXTENTS)?, ino, 0, u64::MAX)?;
        for e in freed {
            free_later(self.txn, e.physical, e.len)?;
        }
        {
            let mut x = self.txn.open_table(XATTRS)?;
            let names: Vec<Vec<u8>> = x
                .range((ino, &[][..])..(ino + 1, &[][..]))?
                .map(|e| e.map(|(k, _)| k.value().1.to_vec()))
                .collect::<Result<_, _>>()?;
            for n in names {
                x.remove((ino, n.as_slice()))?;
            }
        }
        self.txn.open_table(SYMLINKS)?.remove(ino)?;
        self.txn.open_table(INODES)?.remove(ino)?;
        self.txn.open_table(ORPHANS)?.remove(ino)?;
        add_counter(self.txn, counter::INODES, -1)?;
        Ok(())
    }

    /// Deletes every orphan (at mount: nobody has them open any more).
    pub fn delete_orphans(&self) -> MetaResult<usize> {
        let orphans: Vec<u64> = self
            .txn
            .open_table(ORPHANS)?
            .iter()?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for &ino in &orphans {
            self.delete_inode(ino)?;
        }
        Ok(orphans.len())
    }
}

/// Attribute changes of a setattr, other than the size.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttrChange {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New access time.
    pub atime: Option<Timestamp>,
    /// New modification time.
    pub mtime: Option<Timestamp>,
    /// New change time (default: now).
    pub ctime: Option<Timestamp>,
}
