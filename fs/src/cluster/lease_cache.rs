//! A node's side of metadata leases: the directory entries and attributes it keeps
//! while it holds leases on them, and the kernel's attribute cache, which it lets
//! keep attributes for as long.
//!
//! - Entries and attributes live here, in the daemon, and so does the absence of a
//!   name that a lookup did not find (a create looks its name up first), and the
//!   whole set of names of a directory this node made: while it holds the lease on
//!   the directory's attributes, which every other node's change of its entries
//!   recalls, a name not in the set is absent without asking. A lookup under lease
//!   never leaves the node (the kernel still asks, entry timeout 0, and gets its answer from
//!   this cache). Dropping an entry from the kernel would take the directory's lock,
//!   which an operation of this node in that directory may hold while it waits for
//!   the coordinator, which waits for this recall: a cycle; dropping it from here
//!   takes nothing.
//! - The kernel keeps attributes (attribute timeout: what is left of the lease), and
//!   a recall invalidates them with a FUSE notice that takes no lock. The kernel trusts
//!   a file's cached pages only while it trusts its attributes (FUSE_AUTO_INVAL_DATA:
//!   a read with stale attributes fetches them and drops the pages if the file
//!   changed).
//! - An answer is kept for what is left of its lease since the request was sent (the
//!   coordinator counts from later, so this node stops first), and only when no
//!   recall or change of this node to the same keys came while the request was out
//!   ([`ChangeCounters`]): one could have overtaken the answer it makes stale.
//!   Recalls count themselves first, then drop.
//! - Layouts (the extents of a file range) are kept too, under the file's attribute
//!   lease (every change of extents changes the attributes, so it recalls them), but
//!   only for a fifth of the time a layout may be used after asking for it: the data
//!   path counts its own limit from the moment it took the layout from here, and both
//!   together must end before the coordinator's hold of freed blocks, which counts a
//!   layout lease and the drain interval from its answer (`metadata::free_hold`).
//!   Layouts are asked for [`LAYOUT_AHEAD`] blocks at a time, so sequential I/O asks
//!   once per 16 MiB.
//! - A node that may have lost touch with the coordinator (its lock manager lease ran
//!   out, or the coordinator or epoch changed) drops everything: the coordinator no
//!   longer waits for it.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};
use metadata::{Extent, Inode};
use parking_lot::Mutex;

use super::change_counters::{ChangeCounters, Snapshot};
use super::wire::LeaseKey;
use crate::meta::{MetaCall, MetaReply};

/// How many blocks a layout is asked for at least (16 MiB).
pub const LAYOUT_AHEAD: u64 = 4096;

thread_local! {
    /// When the leases of the operation this thread runs end: `None` before its
    /// first call; now, when a call came back without a lease.
    static LEASE_END: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The start of one operation whose answer the kernel may cache.
pub struct Ticket {
    before: Snapshot,
}

/// What this node keeps of one shared volume under leases.
pub struct LeaseCache {
    lease: Duration,
    layout_reuse: Duration,
    changes: ChangeCounters,
    notifier: OnceLock<Notifier>,
    inner: Mutex<Kept>,
}

/// What a name under lease stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Name {
    /// This inode, with these attributes.
    Is(u64, Inode),
    /// Nothing: the directory has no such name.
    Absent,
}

#[derive(Default)]
struct Kept {
    /// The inode of a name, `None` for a name known to be absent.
    entries: HashMap<(u64, Vec<u8>), (Option<u64>, Instant)>,
    attrs: HashMap<u64, (Inode, Instant)>,
    /// A layout per inode: blocks from, to, the extents, until when.
    layouts: HashMap<u64, (u64, u64, Vec<Extent>, Instant)>,
    /// Inodes whose attributes the kernel may hold, and until when.
    kernel: HashMap<u64, Instant>,
    /// Directories whose every name this node knows (it made them, and only it
    /// changed them since), and until when.
    complete: HashMap<u64, (HashSet<Vec<u8>>, Instant)>,
    next_prune: Option<Instant>,
}

impl LeaseCache {
    /// A cache of leases that last `lease` from the request, on a volume whose
    /// layouts may be used for `layout_use` after asking for them.
    pub fn new(lease: Duration, layout_use: Duration) -> LeaseCache {
        LeaseCache {
            lease,
            layout_reuse: layout_use / 5,
            changes: ChangeCounters::default(),
            notifier: OnceLock::new(),
            inner: Mutex::new(Kept::default()),
        }
    }

    /// The mount's channel to its kernel, once mounted.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// The change counters now: take them before a call whose answer may be kept.
    pub fn snapshot(&self) -> Snapshot {
        self.changes.snapshot()
    }

    /// Marks the start of an operation on this thread (before its first call).
    pub fn begin(&self) -> Ticket {
        LEASE_END.set(None);
        Ticket {
            before: self.snapshot(),
        }
    }

    /// Notes that a call of this thread's operation holds leases until `until`.
    pub fn note_lease(until: Instant) {
        LEASE_END.set(Some(LEASE_END.get().map_or(until, |u| u.min(until))));
    }

    /// Notes that a call of this thread's operation got no lease.
    pub fn note_unleased() {
        LEASE_END.set(Some(Instant::now()));
    }

    /// How long the kernel may keep the attributes of `ino` that the operation `t`
    /// began answers with; recorded, so that a recall can reach them.
    pub fn attr_ttl(&self, t: &Ticket, ino: u64) -> Duration {
        let Some(end) = LEASE_END.get() else {
            return Duration::ZERO;
        };
        if !self.changes.unchanged(&t.before, &LeaseKey::Attr(ino)) {
            return Duration::ZERO;
        }
        let ttl = end.saturating_duration_since(Instant::now());
        if !ttl.is_zero() {
            let mut k = self.inner.lock();
            let until = k.kernel.entry(ino).or_insert(end);
            *until = (*until).max(end);
        }
        ttl
    }

    /// A name under lease: what it stands for, and the end of the leases.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<(Name, Instant)> {
        let now = Instant::now();
        let k = self.inner.lock();
        let Some(&(ino, e_until)) = k.entries.get(&(parent, name.to_vec())) else {
            let (names, until) = k.complete.get(&parent)?;
            return (*until > now && !names.contains(name)).then_some((Name::Absent, *until));
        };
        let Some(ino) = ino else {
            return (e_until > now).then_some((Name::Absent, e_until));
        };
        let &(inode, a_until) = k.attrs.get(&ino)?;
        let until = e_until.min(a_until);
        (until > now).then_some((Name::Is(ino, inode), until))
    }

    /// The inode of a name under lease, if it names one.
    pub fn inode_of(&self, parent: u64, name: &[u8]) -> Option<u64> {
        match self.lookup(parent, name)? {
            (Name::Is(ino, _), _) => Some(ino),
            (Name::Absent, _) => None,
        }
    }

    /// Attributes under lease, and the end of the lease.
    pub fn inode(&self, ino: u64) -> Option<(Inode, Instant)> {
        let k = self.inner.lock();
        let &(inode, until) = k.attrs.get(&ino)?;
        (until > Instant::now()).then_some((inode, until))
    }

    /// A layout under lease that covers blocks `[from, to)`, with the attributes, and
    /// the end of its reuse.
    pub fn layout(&self, ino: u64, from: u64, to: u64) -> Option<(Inode, Vec<Extent>, Instant)> {
        let now = Instant::now();
        let k = self.inner.lock();
        let (l_from, l_to, extents, l_until) = k.layouts.get(&ino)?;
        let &(inode, a_until) = k.attrs.get(&ino)?;
        let until = (*l_until).min(a_until);
        if *l_from > from || *l_to < to || until <= now {
            return None;
        }
        let within = extents
            .iter()
            .filter(|e| e.logical < to && e.logical_end() > from)
            .copied()
            .collect();
        Some((inode, within, until))
    }

    /// Keeps the absence of `name` in `parent`, which a lookup sent at `sent` when the
    /// change counters were `before` did not find; returns the end of the lease, or
    /// `None` when a recall or change of the name came meanwhile.
    pub fn keep_absent(
        &self,
        before: &Snapshot,
        sent: Instant,
        parent: u64,
        name: &[u8],
    ) -> Option<Instant> {
        let until = sent + self.lease - self.lease / 10;
        let key = LeaseKey::Entry(parent, name.to_vec());
        let mut k = self.inner.lock();
        if !self.changes.unchanged(before, &key) {
            return None;
        }
        k.entries.insert((parent, name.to_vec()), (None, until));
        Some(until)
    }

    /// Keeps what the answer to `call`, sent at `sent` when the change counters were
    /// `before`, holds under lease, and the attributes `attrs` that came with it;
    /// returns the end of the lease, or `None` when a recall or change of its keys
    /// came meanwhile (nothing kept).
    pub fn keep(
        &self,
        before: &Snapshot,
        sent: Instant,
        call: &MetaCall,
        reply: &MetaReply,
        attrs: &[(u64, Inode)],
    ) -> Option<Instant> {
        let until = sent + self.lease - self.lease / 10;
        let granted = super::leases::granted_by(call, reply);
        let mut k = self.inner.lock();
        if !attrs
            .iter()
            .all(|&(ino, _)| self.changes.unchanged(before, &LeaseKey::Attr(ino)))
        {
            return None;
        }
        let now = Instant::now();
        for &(ino, inode) in attrs {
            k.attrs.insert(ino, (inode, until));
            // A lease renewed before it ran out: nobody else changed the directory.
            if let Some(c) = k.complete.get_mut(&ino)
                && c.1 > now
            {
                c.1 = c.1.max(until);
            }
        }
        if let (MetaCall::Create { node, .. }, MetaReply::Entry(ino, _)) = (call, reply)
            && node.mode & libc::S_IFMT == libc::S_IFDIR
        {
            // A directory this node just made: empty, and nobody else knows it yet.
            k.complete.insert(*ino, (HashSet::new(), until));
        }
        // Under the lock: a recall counts itself before it takes the lock to drop.
        if !granted
            .iter()
            .all(|key| self.changes.unchanged(before, key))
        {
            return None;
        }
        let inode = match reply {
            MetaReply::Entry(_, i) | MetaReply::Inode(i) | MetaReply::Layout(i, _) => *i,
            _ => return Some(until),
        };
        if let (MetaCall::Layout { ino, from, to }, MetaReply::Layout(_, extents)) = (call, reply) {
            let reuse = until.min(sent + self.layout_reuse);
            k.layouts.insert(*ino, (*from, *to, extents.clone(), reuse));
        }
        for key in granted {
            match key {
                LeaseKey::Attr(ino) => {
                    k.attrs.insert(ino, (inode, until));
                }
                LeaseKey::Entry(parent, name) => {
                    let ino = match reply {
                        MetaReply::Entry(ino, _) => *ino,
                        _ => match call {
                            MetaCall::Link { ino, .. } => *ino,
                            _ => continue,
                        },
                    };
                    k.entries.insert((parent, name), (Some(ino), until));
                }
            }
        }
        if k.next_prune.is_none_or(|p| now >= p) {
            k.entries.retain(|_, (_, u)| *u > now);
            k.attrs.retain(|_, (_, u)| *u > now);
            k.complete.retain(|_, (_, u)| *u > now);
            k.layouts.retain(|_, (_, _, _, u)| *u > now);
            k.kernel.retain(|_, u| *u > now);
            k.next_prune = Some(now + self.lease);
        }
        Some(until)
    }

    /// Drops `keys`, which `call`, a change of this node, made stale; `before` (taken
    /// before the change was sent) follows where nothing else changed meanwhile, so
    /// that the change's own answer may still be kept. The name sets of the
    /// directories it changed are updated instead of dropped: this node's lease on
    /// them stays.
    pub fn changed_here(&self, before: &mut Snapshot, keys: &[LeaseKey], call: &MetaCall) {
        for key in keys {
            self.changes.bump_own(before, key);
        }
        {
            let mut k = self.inner.lock();
            let mut names = |dir: u64, name: &[u8], present: bool| {
                if let Some((set, _)) = k.complete.get_mut(&dir) {
                    if present {
                        set.insert(name.to_vec());
                    } else {
                        set.remove(name);
                    }
                }
            };
            match call {
                MetaCall::Create { parent, name, .. } | MetaCall::Link { parent, name, .. } => {
                    names(*parent, name, true)
                }
                MetaCall::Unlink { parent, name, .. } | MetaCall::Rmdir { parent, name } => {
                    names(*parent, name, false)
                }
                MetaCall::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    exchange: false,
                    ..
                } => {
                    names(*parent, name, false);
                    names(*new_parent, new_name, true);
                }
                _ => {}
            }
        }
        self.forget(keys, &super::leases::parents_of(call));
    }

    /// Drops `keys`: from here, and attributes from the kernel.
    pub fn drop_keys(&self, keys: &[LeaseKey]) {
        for key in keys {
            self.changes.bump(key);
        }
        self.forget(keys, &[]);
    }

    /// Drops `keys`, and the name sets of the directories among them but `spare`.
    fn forget(&self, keys: &[LeaseKey], spare: &[u64]) {
        let mut in_kernel = Vec::new();
        {
            let mut k = self.inner.lock();
            for key in keys {
                match key {
                    LeaseKey::Attr(ino) => {
                        k.attrs.remove(ino);
                        k.layouts.remove(ino);
                        if !spare.contains(ino) {
                            k.complete.remove(ino);
                        }
                        if k.kernel.remove(ino).is_some() {
                            in_kernel.push(*ino);
                        }
                    }
                    LeaseKey::Entry(parent, name) => {
                        k.entries.remove(&(*parent, name.clone()));
                    }
                }
            }
        }
        self.invalidate(&in_kernel);
    }

    /// Drops everything kept.
    pub fn drop_all(&self) {
        let in_kernel = self.forget_all();
        self.invalidate(&in_kernel);
    }

    /// Drops everything kept here at once; returns the inodes whose attributes the
    /// kernel holds, to [`invalidate`](Self::invalidate) (one notice each: thousands
    /// take a while).
    pub fn forget_all(&self) -> Vec<u64> {
        self.changes.bump_all();
        let mut k = self.inner.lock();
        k.entries.clear();
        k.attrs.clear();
        k.layouts.clear();
        k.complete.clear();
        k.kernel.drain().map(|(ino, _)| ino).collect()
    }

    /// Tells the kernel to stop trusting the attributes of `inos` (offset -1: the
    /// notice takes no lock and leaves the pages to FUSE_AUTO_INVAL_DATA).
    pub fn invalidate(&self, inos: &[u64]) {
        let Some(n) = self.notifier.get() else {
            return;
        };
        for &ino in inos {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0)
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                tracing::debug!(ino, error = %e, "kernel attribute invalidation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(parent: u64, name: &[u8]) -> MetaCall {
        MetaCall::Lookup {
            parent,
            name: name.to_vec(),
        }
    }

    #[test]
    fn a_kept_answer_serves_lookups_until_dropped() {
        let c = LeaseCache::new(Duration::from_secs(10), Duration::from_secs(10));
        let inode = Inode {
            size: 5,
            ..Inode::default()
        };
        let g = c.snapshot();
        let until = c
            .keep(
                &g,
                Instant::now(),
                &lookup(1, b"a"),
                &MetaReply::Entry(7, inode),
                &[],
            )
            .expect("kept");
        assert!(until > Instant::now() + Duration::from_secs(8));
        assert_eq!(c.lookup(1, b"a").map(|(n, _)| n), Some(Name::Is(7, inode)));
        assert_eq!(c.inode(7).map(|(n, _)| n.size), Some(5));
        c.drop_keys(&[LeaseKey::Attr(7)]);
        assert!(c.lookup(1, b"a").is_none(), "the entry without attributes");
        assert!(c.inode(7).is_none());
    }

    #[test]
    fn an_answer_overtaken_by_a_recall_is_not_kept() {
        let c = LeaseCache::new(Duration::from_secs(10), Duration::from_secs(10));
        let g = c.snapshot();
        c.drop_keys(&[LeaseKey::Entry(1, b"a".to_vec())]);
        let kept = c.keep(
            &g,
            Instant::now(),
            &lookup(1, b"a"),
            &MetaReply::Entry(7, Inode::default()),
            &[],
        );
        assert!(kept.is_none());
        assert!(c.lookup(1, b"a").is_none());
    }

    #[test]
    fn the_kernel_caches_for_what_is_left_of_the_operations_leases() {
        let c = LeaseCache::new(Duration::from_secs(10), Duration::from_secs(10));
        let t = c.begin();
        assert_eq!(c.attr_ttl(&t, 7), Duration::ZERO, "no call, no lease");
        LeaseCache::note_lease(Instant::now() + Duration::from_secs(5));
        LeaseCache::note_lease(Instant::now() + Duration::from_secs(3));
        let ttl = c.attr_ttl(&t, 7);
        assert!(
            ttl <= Duration::from_secs(3) && ttl > Duration::from_secs(2),
            "{ttl:?}"
        );
        LeaseCache::note_unleased();
        assert_eq!(c.attr_ttl(&t, 7), Duration::ZERO);
        let t = c.begin();
        LeaseCache::note_lease(Instant::now() + Duration::from_secs(5));
        c.drop_all();
        assert_eq!(c.attr_ttl(&t, 7), Duration::ZERO, "a recall came meanwhile");
    }

    #[test]
    fn a_layout_is_reused_briefly_and_goes_with_the_attributes() {
        let c = LeaseCache::new(Duration::from_secs(10), Duration::from_millis(500));
        let e = |logical, len| Extent {
            logical,
            physical: 1000 + logical,
            len,
            unwritten: false,
        };
        let call = MetaCall::Layout {
            ino: 7,
            from: 0,
            to: LAYOUT_AHEAD,
        };
        let reply = MetaReply::Layout(Inode::default(), vec![e(0, 10), e(300, 10)]);
        c.keep(&c.snapshot(), Instant::now(), &call, &reply, &[])
            .expect("kept");
        let (_, within, until) = c.layout(7, 0, 256).expect("covered");
        assert_eq!(within, vec![e(0, 10)]);
        assert!(until <= Instant::now() + Duration::from_millis(100));
        assert!(c.layout(7, 0, LAYOUT_AHEAD + 1).is_none(), "not covered");
        c.drop_keys(&[LeaseKey::Attr(7)]);
        assert!(c.layout(7, 0, 256).is_none(), "recalled");
        c.keep(&c.snapshot(), Instant::now(), &call, &reply, &[])
            .expect("kept");
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.layout(7, 0, 256).is_none(), "past its reuse");
    }

    fn create(parent: u64, name: &[u8], mode: u32) -> MetaCall {
        MetaCall::Create {
            parent,
            name: name.to_vec(),
            node: metadata::NewNode {
                mode,
                uid: 0,
                gid: 0,
                rdev: 0,
                symlink: None,
            },
        }
    }

    /// This node's own change `call`, answered `reply` with `attrs`: what it keeps.
    fn change_here(
        c: &LeaseCache,
        call: MetaCall,
        reply: MetaReply,
        attrs: &[(u64, Inode)],
    ) -> Option<Instant> {
        let mut before = c.snapshot();
        let keys = super::super::leases::changed_by(&call, &reply, &[]);
        c.changed_here(&mut before, &keys, &call);
        c.keep(&before, Instant::now(), &call, &reply, attrs)
    }

    #[test]
    fn an_absent_name_is_kept_until_a_change_names_it() {
        let c = LeaseCache::new(Duration::from_secs(10), Duration::from_secs(10));
        let g = c.snapshot();
        c.keep_absent(&g, Instant::now(), 1, b"new").expect("kept");
        assert_eq!(c.lookup(1, b"new").map(|(n, _)| n), Some(Name::Absent));
        assert_eq!(c.inode_of(1, b"new"), None);
        // This node creates it: the absence goes, the answer is kept, with the
        // directory's attributes after the create.
        let dir = Inode {
            size: 3,
            ..Inode::default()
        };
        let reply = MetaReply::Entry(9, Inode::default());
        change_here(&c, create(1, b"new", 0o100644), reply, &[(1, dir)]).expect("kept");
        assert_eq!(c.inode_of(1, b"new"), Some(9));
        assert_eq!(c.inode(1).map(|(i, _)| i.size), Some(3));
        // An absence overtaken by a recall of the name is not kept.
        let g = c.snapshot();
        c.drop_keys(&[LeaseKey::Entry(1, b"other".to_vec())]);
        assert!(c.keep_absent(&g, Instant::now(), 1, b"other").is_none());
    }

    #[test]
    fn a_directory_made_here_knows_its_names_until_recalled() {
        let c = LeaseCache::new(Duration::from_secs(10), Duration::from_secs(10));
        let entry = |ino| MetaReply::Entry(ino, Inode::default());
        let mkdir = create(1, b"d", libc::S_IFDIR | 0o755);
        change_here(&c, mkdir, entry(5), &[(1, Inode::default())]).expect("kept");
        assert_eq!(c.lookup(5, b"x").map(|(n, _)| n), Some(Name::Absent));
        let file = create(5, b"x", libc::S_IFREG | 0o644);
        change_here(&c, file, entry(6), &[(5, Inode::default())]).expect("kept");
        assert_eq!(c.inode_of(5, b"x"), Some(6));
        assert_eq!(c.lookup(5, b"y").map(|(n, _)| n), Some(Name::Absent));
        // The entry of x goes (its attributes were recalled): x is not absent for all
        // that, it is unknown.
        c.drop_keys(&[LeaseKey::Attr(6)]);
        assert!(c.lookup(5, b"x").is_none());
        assert_eq!(c.lookup(5, b"y").map(|(n, _)| n), Some(Name::Absent));
        // Another node changes the directory: its attributes are recalled, and with
        // them what this node knew of its names.
        c.drop_keys(&[LeaseKey::Attr(5)]);
        assert!(c.lookup(5, b"y").is_none());
    }
}
