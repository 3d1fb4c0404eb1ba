//! Carries out a [`MetaCall`] on the store of an open volume: what a single-node mount
//! does for itself, and what a coordinator does for itself and for the other nodes,
//! all in the same group commit.

use std::sync::atomic::{AtomicU64, Ordering};

use metadata::{Ctx, JobKind, MetaError, MetaResult, Origin, Volume};

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
        call => vol.write(kind_of(&call, false), move |c| apply(c, &call, None)),
    }
}

/// How a coordinator carries out another node's change.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForNode {
    /// Commit durably before answering, even a change that could be acknowledged
    /// early.
    pub durable: bool,
    /// Answer only from the record of an applied change: a replay that came too late
    /// must not apply a change on top of what others changed since.
    pub recorded_only: bool,
    /// A replayed create: the inode number its first answer gave.
    pub pinned_ino: Option<u64>,
}

/// Where a change acknowledged before it was durable stands: its place in the order
/// in which this process applied other nodes' changes, and the count of durable
/// commits after which it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Early {
    /// The order of application.
    pub seq: u64,
    /// Durable once the volume's count of durable commits exceeds this.
    pub durable_after: u64,
}

/// The order in which this process applied other nodes' changes.
static APPLIED: AtomicU64 = AtomicU64::new(0);

/// Runs request `id` of another node `node` on `vol`, as its coordinator. What the
/// answer lets `node` see is durable, unless it is `node`'s own change: a namespace
/// change of `node` is acknowledged early (with [`Early`]), and `node` keeps it and
/// replays it after a failover (see `crate::cluster::unconfirmed`; the committer
/// flushes whenever a change of another origin would sit beside it). A change's
/// answer is recorded with it, and a retry or replay of an applied change gets that
/// answer instead of applying it again.
pub fn execute_for(
    vol: &Volume,
    node: u8,
    id: u64,
    call: MetaCall,
    how: ForNode,
) -> MetaResult<(MetaReply, Option<Early>)> {
    if call.hands_out_layout() {
        vol.layout_given();
    }
    let origin = Origin::Node(node);
    match call {
        MetaCall::Sync => vol.sync().map(|()| (MetaReply::Done, None)),
        call if !call.changes() => {
            let reply = query(vol, call)?;
            // Checked after the snapshot was taken: anything it saw that is not
            // durable is pending by now.
            if vol.has_unsynced_beyond(origin) {
                vol.sync()?;
            }
            Ok((reply, None))
        }
        call => {
            let early = acknowledged_early(&call) && !how.durable;
            let kind = JobKind {
                durable: !early,
                origin,
                ..kind_of(&call, false)
            };
            let (reply, seq) = vol.write(kind, move |c| {
                let seq = APPLIED.fetch_add(1, Ordering::Relaxed);
                if let Some(bytes) = c.answered(node, id)? {
                    let reply = postcard::from_bytes(&bytes).map_err(|e| {
                        MetaError::Corrupt(format!(
                            "recorded answer to request {id} of node {node}: {e}"
                        ))
                    })?;
                    return Ok((reply, seq));
                }
                if how.recorded_only {
                    return Err(MetaError::Remote {
                        errno: libc::EIO,
                        message: format!(
                            "request {id} of node {node}: a replay after the new coordinator began serving, of a change it does not have; not applied"
                        ),
                    });
                }
                let reply = apply(c, &call, how.pinned_ino)?;
                let bytes = postcard::to_stdvec(&reply)
                    .map_err(|e| MetaError::Store(format!("encoding an answer: {e}")))?;
                c.record_answer(node, id, &bytes)?;
                Ok((reply, seq))
            })?;
            let early = early.then(|| Early {
                seq,
                durable_after: vol.commit_stats().durable_commits,
            });
            Ok((reply, early))
        }
    }
}

/// True for the changes a coordinator may acknowledge before they are durable: those
/// of the namespace and of attributes, which the asking node can replay on the state
/// they were first applied to with the same outcome (inode numbers come from a counter
/// in the store). Changes of file blocks are durable before their answer: the node
/// writes data into the blocks they name.
fn acknowledged_early(call: &MetaCall) -> bool {
    matches!(
        call,
        MetaCall::Create { .. }
            | MetaCall::Link { .. }
            | MetaCall::Unlink { .. }
            | MetaCall::Rmdir { .. }
            | MetaCall::Rename { .. }
            | MetaCall::SetAttr { .. }
            | MetaCall::TouchTimes { .. }
            | MetaCall::SetXattr { .. }
            | MetaCall::RemoveXattr { .. }
            | MetaCall::DeleteInode { .. }
    )
}

fn kind_of(call: &MetaCall, durable: bool) -> JobKind {
    JobKind {
        frees_space: call.frees_space(),
        durable,
        ..JobKind::default()
    }
}

/// Applies a change inside a write transaction; a create gets inode number `pinned`
/// when given.
fn apply(c: &Ctx<'_>, call: &MetaCall, pinned: Option<u64>) -> MetaResult<MetaReply> {
    Ok(match call {
        MetaCall::Create { parent, name, node } => {
            let (ino, inode) = c.create_as(*parent, name, node, pinned)?;
            MetaReply::Entry(ino, inode)
        }
        MetaCall::Link { ino, parent, name } => MetaReply::Inode(c.link(*ino, *parent, name)?),
        MetaCall::Unlink {
            parent,
            name,
            delete,
        } => {
            let u = c.unlink(*parent, name)?;
            if u.orphaned && *delete == Some(u.ino) {
                c.delete_inode(u.ino)?;
            }
            MetaReply::Unlinked(Some(u))
        }
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
