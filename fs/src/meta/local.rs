//! Carries out a [`MetaCall`] on the store of an open volume: what a single-node mount
//! does for itself, and what a coordinator does for itself and for the other nodes,
//! all in the same group commit.

use metadata::{Ctx, JobKind, MetaError, MetaResult, Volume};

use super::call::{MetaCall, MetaReply};

/// Runs `call` on `vol` for this node (a single-node mount, or the coordinator's own
/// applications): changes commit at once and become durable at the next sync.
pub fn execute(vol: &Volume, call: MetaCall) -> MetaResult<MetaReply> {
    if call.hands_out_layout() {
        vol.layout_given();
    }
    match call {
        MetaCall::Sync => vol.sync().map(|()| MetaReply::Done),
        call if !call.changes() => query(vol, call),
        call => vol.write(kind_of(&call, false), move |c| apply(c, &call)),
    }
}

/// Runs request `id` of another node `node` on `vol`, as its coordinator. The answer
/// is durable before it returns, and so is everything the other node could see
/// (what this node's own applications changed): a failover must never lose what
/// another node was told. A change's answer is recorded with it, and a retry of an
/// applied change gets that answer instead of applying it again.
pub fn execute_for(vol: &Volume, node: u8, id: u64, call: MetaCall) -> MetaResult<MetaReply> {
    if call.hands_out_layout() {
        vol.layout_given();
    }
    match call {
        MetaCall::Sync => vol.sync().map(|()| MetaReply::Done),
        call if !call.changes() => {
            if vol.has_unsynced() {
                vol.sync()?;
            }
            query(vol, call)
        }
        call => vol.write(kind_of(&call, true), move |c| {
            if let Some(bytes) = c.answered(node, id)? {
                return postcard::from_bytes(&bytes).map_err(|e| {
                    MetaError::Corrupt(format!(
                        "recorded answer to request {id} of node {node}: {e}"
                    ))
                });
            }
            let reply = apply(c, &call)?;
            let bytes = postcard::to_stdvec(&reply)
                .map_err(|e| MetaError::Store(format!("encoding an answer: {e}")))?;
            c.record_answer(node, id, &bytes)?;
            Ok(reply)
        }),
    }
}

fn kind_of(call: &MetaCall, durable: bool) -> JobKind {
    JobKind {
        frees_space: call.frees_space(),
        durable,
    }
}

/// Applies a change inside a write transaction.
fn apply(c: &Ctx<'_>, call: &MetaCall) -> MetaResult<MetaReply> {
    Ok(match call {
        MetaCall::Create { parent, name, node } => {
            let (ino, inode) = c.create(*parent, name, node)?;
            MetaReply::Entry(ino, inode)
        }
        MetaCall::Link { ino, parent, name } => MetaReply::Inode(c.link(*ino, *parent, name)?),
        MetaCall::Unlink { parent, name } => MetaReply::Unlinked(Some(c.unlink(*parent, name)?)),
        MetaCall::Rmdir { parent, name } => MetaReply::Unlinked(Some(c.rmdir(*parent, name)?)),
        MetaCall::Rename {
            parent,
            name,
            new_parent,
            new_name,
            noreplace,
            exchange,
        } => MetaReply::Unlinked(c.rename(
            *parent,
            name,
            *new_parent,
            new_name,
            *noreplace,
            *exchange,
        )?),
        MetaCall::SetAttr { ino, change } => MetaReply::Inode(c.set_attr(*ino, change)?),
        MetaCall::TouchTimes { times } => {
            for &(ino, t) in times {
                c.touch_times(ino, t)?;
            }
            MetaReply::Done
        }
        MetaCall::SetXattr {
            ino,
            name,
            value,
            create,
            replace,
        } => {
            c.set_xattr(*ino, name, value, *create, *replace)?;
            MetaReply::Done
        }
        MetaCall::RemoveXattr { ino, name } => {
            c.remove_xattr(*ino, name)?;
            MetaReply::Done
        }
        MetaCall::DeleteInode { ino } => {
            c.delete_inode(*ino)?;
            MetaReply::Done
        }
        MetaCall::AllocateRange { ino, from, to } => {
            MetaReply::Segments(c.allocate_range(*ino, *from, *to)?)
        }
        MetaCall::CommitWrite { ino, from, to, end } => {
            MetaReply::Inode(c.commit_write(*ino, *from, *to, *end)?)
        }
        MetaCall::Truncate { ino, size } => MetaReply::Inode(c.truncate(*ino, *size)?),
        MetaCall::Punch { ino, from, to } => MetaReply::Inode(c.punch(*ino, *from, *to)?),
        MetaCall::Preallocate {
            ino,
            from,
            to,
            zero,
            new_size,
        } => MetaReply::Inode(c.preallocate(*ino, *from, *to, *zero, *new_size)?),
        MetaCall::Sync => return Err(MetaError::Store("a sync reached the writer".into())),
        _ => return Err(MetaError::Store("a query reached the writer".into())),
    })
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
