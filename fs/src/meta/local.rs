//! Carries out a [`MetaCall`] on the store of an open volume: what a single-node mount
//! does for itself, and what a coordinator does for itself and for the other nodes,
//! all in the same group commit.

use metadata::{JobKind, MetaError, MetaResult, Volume};

use super::call::{MetaCall, MetaReply};

/// Runs `call` on `vol`. With `durable` a change is durable before this returns (a
/// coordinator answering another node: what it acknowledges must survive its crash).
///
/// A durable query first makes durable what is not yet: another node must never see
/// a change that a failover could lose.
pub fn execute(vol: &Volume, call: MetaCall, durable: bool) -> MetaResult<MetaReply> {
    if !call.changes() {
        if durable && vol.has_unsynced() {
            vol.sync()?;
        }
        return query(vol, call);
    }
    let kind = JobKind {
        frees_space: call.frees_space(),
        durable,
    };
    match call {
        MetaCall::Sync => vol.sync().map(|()| MetaReply::Done),
        MetaCall::Create { parent, name, node } => vol
            .write(kind, move |c| c.create(parent, &name, &node))
            .map(|(ino, inode)| MetaReply::Entry(ino, inode)),
        MetaCall::Link { ino, parent, name } => vol
            .write(kind, move |c| c.link(ino, parent, &name))
            .map(MetaReply::Inode),
        MetaCall::Unlink { parent, name } => vol
            .write(kind, move |c| c.unlink(parent, &name))
            .map(|u| MetaReply::Unlinked(Some(u))),
        MetaCall::Rmdir { parent, name } => vol
            .write(kind, move |c| c.rmdir(parent, &name))
            .map(|u| MetaReply::Unlinked(Some(u))),
        MetaCall::Rename {
            parent,
            name,
            new_parent,
            new_name,
            noreplace,
            exchange,
        } => vol
            .write(kind, move |c| {
                c.rename(parent, &name, new_parent, &new_name, noreplace, exchange)
            })
            .map(MetaReply::Unlinked),
        MetaCall::SetAttr { ino, change } => vol
            .write(kind, move |c| c.set_attr(ino, &change))
            .map(MetaReply::Inode),
        MetaCall::TouchTimes { times } => vol
            .write(kind, move |c| {
                for &(ino, t) in &times {
                    c.touch_times(ino, t)?;
                }
                Ok(())
            })
            .map(|()| MetaReply::Done),
        MetaCall::SetXattr {
            ino,
            name,
            value,
            create,
            replace,
        } => vol
            .write(kind, move |c| {
                c.set_xattr(ino, &name, &value, create, replace)
            })
            .map(|()| MetaReply::Done),
        MetaCall::RemoveXattr { ino, name } => vol
            .write(kind, move |c| c.remove_xattr(ino, &name))
            .map(|()| MetaReply::Done),
        MetaCall::DeleteInode { ino } => vol
            .write(kind, move |c| c.delete_inode(ino))
            .map(|()| MetaReply::Done),
        MetaCall::AllocateRange { ino, from, to } => vol
            .write(kind, move |c| c.allocate_range(ino, from, to))
            .map(MetaReply::Segments),
        MetaCall::CommitWrite { ino, from, to, end } => vol
            .write(kind, move |c| c.commit_write(ino, from, to, end))
            .map(MetaReply::Inode),
        MetaCall::Truncate { ino, size } => vol
            .write(kind, move |c| c.truncate(ino, size))
            .map(MetaReply::Inode),
        MetaCall::Punch { ino, from, to } => vol
            .write(kind, move |c| c.punch(ino, from, to))
            .map(MetaReply::Inode),
        MetaCall::Preallocate {
            ino,
            from,
            to,
            zero,
            new_size,
        } => vol
            .write(kind, move |c| c.preallocate(ino, from, to, zero, new_size))
            .map(MetaReply::Inode),
        _ => Err(MetaError::Store("a query reached the writer".into())),
    }
}

/// Answers a call that only reads, from one snapshot.
fn query(vol: &Volume, call: MetaCall) -> MetaResult<MetaReply> {
    if let MetaCall::Usage = call {
        return vol.usage().map(MetaReply::Usage);
    }
    let snap = vol.snapshot()?;
    Ok(match call {
        MetaCall::Inode { ino } => MetaReply::Inode(snap.inode(ino)?),
        MetaCall::Lookup { parent, name } => {
            let (ino, inode) = snap.lookup(parent, &name)?;
            MetaReply::Entry(ino, inode)
        }
        MetaCall::ReadDir { dir, after, max } => {
            MetaReply::Entries(snap.read_dir(dir, after, max.min(1024) as usize)?)
        }
        MetaCall::ReadLink { ino } => MetaReply::Bytes(snap.read_link(ino)?),
        MetaCall::Xattr { ino, name } => MetaReply::Bytes(snap.xattr(ino, &name)?),
        MetaCall::XattrNames { ino } => MetaReply::Names(snap.xattr_names(ino)?),
        MetaCall::Layout { ino, from, to } => {
            MetaReply::Layout(snap.inode(ino)?, snap.extents(ino, from, to)?)
        }
        _ => return Err(MetaError::Store("a change reached the reader".into())),
    })
}
