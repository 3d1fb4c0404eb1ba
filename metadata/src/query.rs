//! Reading the store: lookups, attributes, directory listings, xattrs, extent maps.
//! The helpers are generic over redb's readable tables so that write operations use
//! them too.

use redb::{ReadTransaction, ReadableTable};

use crate::error::{MetaError, MetaResult};
use crate::extent::{Extent, extents_in};
use crate::inode::{FileKind, Inode};
use crate::tables::{DIR_COOKIES, DIRENTS, EXTENTS, INODES, SYMLINKS, XATTRS};

/// Reads one inode.
pub fn read_inode(t: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> MetaResult<Inode> {
    match t.get(ino)? {
        Some(v) => Inode::decode(v.value()).map_err(|e| match e {
            MetaError::Corrupt(m) => MetaError::Corrupt(format!("inode {ino}: {m}")),
            other => other,
        }),
        None => Err(MetaError::NotFound),
    }
}

/// Looks a name up in a directory: (ino, kind, cookie).
pub fn lookup_in(
    t: &impl ReadableTable<(u64, &'static [u8]), (u64, u8, u64)>,
    parent: u64,
    name: &[u8],
) -> MetaResult<Option<(u64, FileKind, u64)>> {
    match t.get((parent, name))? {
        Some(v) => {
            let (ino, kind, cookie) = v.value();
            let kind = FileKind::from_code(kind).ok_or_else(|| {
                MetaError::Corrupt(format!("directory {parent} entry has kind {kind}"))
            })?;
            Ok(Some((ino, kind, cookie)))
        }
        None => Ok(None),
    }
}

/// True when a directory has no entries.
pub fn dir_is_empty(
    t: &impl ReadableTable<(u64, &'static [u8]), (u64, u8, u64)>,
    dir: u64,
) -> MetaResult<bool> {
    Ok(t.range((dir, &[][..])..(dir + 1, &[][..]))?
        .next()
        .is_none())
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirEntry {
    /// Cookie to resume after this entry.
    pub cookie: u64,
    /// The inode.
    pub ino: u64,
    /// Its kind.
    pub kind: FileKind,
    /// The name.
    pub name: Vec<u8>,
}

/// A consistent read-only view of the store.
pub struct Snapshot {
    txn: ReadTransaction,
}

impl Snapshot {
    pub(crate) fn new(txn: ReadTransaction) -> Snapshot {
        Snapshot { txn }
    }

    /// The underlying transaction, for fsck.
    pub fn txn(&self) -> &ReadTransaction {
        &self.txn
    }

    /// Reads an inode.
    pub fn inode(&self, ino: u64) -> MetaResult<Inode> {
        read_inode(&self.txn.open_table(INODES)?, ino)
    }

    /// Looks a name up: (ino, inode).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> MetaResult<(u64, Inode)> {
        let dir = self.inode(parent)?;
        if !dir.is_dir() {
            return Err(MetaError::NotDir);
        }
        if name.len() > crate::namespace::NAME_MAX {
            return Err(MetaError::NameTooLong);
        }
        let (ino, ..) =
            lookup_in(&self.txn.open_table(DIRENTS)?, parent, name)?.ok_or(MetaError::NotFound)?;
        Ok((ino, self.inode(ino)?))
    }

    /// Up to `max` entries of a directory with cookies above `after`.
    pub fn read_dir(&self, dir: u64, after: u64, max: usize) -> MetaResult<Vec<DirEntry>> {
        let cookies = self.txn.open_table(DIR_COOKIES)?;
        let dirents = self.txn.open_table(DIRENTS)?;
        let mut out = Vec::new();
        for e in cookies.range((dir, after.saturating_add(1))..(dir + 1, 0))? {
            if out.len() >= max {
                break;
            }
            let (k, name) = e?;
            let name = name.value().to_vec();
            let (ino, kind, _) = lookup_in(&dirents, dir, &name)?.ok_or_else(|| {
                MetaError::Corrupt(format!("directory {dir} cookie without entry"))
            })?;
            out.push(DirEntry {
                cookie: k.value().1,
                ino,
                kind,
                name,
            });
        }
        Ok(out)
    }

    /// A symlink's target.
    pub fn read_link(&self, ino: u64) -> MetaResult<Vec<u8>> {
        match self.txn.open_table(SYMLINKS)?.get(ino)? {
            Some(v) => Ok(v.value().to_vec()),
            None => Err(MetaError::Invalid("not a symlink")),
        }
    }

    /// One xattr.
    pub fn xattr(&self, ino: u64, name: &[u8]) -> MetaResult<Vec<u8>> {
        self.inode(ino)?;
        match self.txn.open_table(XATTRS)?.get((ino, name))? {
            Some(v) => Ok(v.value().to_vec()),
            None => Err(MetaError::NoData),
        }
    }

    /// The names of an inode's xattrs.
    pub fn xattr_names(&self, ino: u64) -> MetaResult<Vec<Vec<u8>>> {
        self.inode(ino)?;
        let t = self.txn.open_table(XATTRS)?;
        let mut out = Vec::new();
        for e in t.range((ino, &[][..])..(ino + 1, &[][..]))? {
            out.push(e?.0.value().1.to_vec());
        }
        Ok(out)
    }

    /// The extents of `ino` overlapping logical blocks `[from, to)`.
    pub fn extents(&self, ino: u64, from: u64, to: u64) -> MetaResult<Vec<Extent>> {
        extents_in(&self.txn.open_table(EXTENTS)?, ino, from, to)
    }
}
