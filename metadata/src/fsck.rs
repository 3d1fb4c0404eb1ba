//! The checks of fsck.csvfs, and the repairs that are safe.
//!
//! fsck never trusts the store blindly: it opens it on a copy-on-write overlay of the
//! LUN with redb's full integrity check (every page checksum), so that a check alone
//! writes nothing; then it walks every table and cross-checks link counts, orphans,
//! extents (inside the data region, not overlapping) and free space (exactly the
//! complement of what files and pending frees use).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use blockdev::{BlockDevice, OverlayDevice};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::alloc::free_now;
use crate::error::{MetaError, MetaResult};
use crate::inode::{FileKind, Inode, ROOT_INO};
use crate::region_backend::RegionBackend;
use crate::superblock::Superblock;
use crate::tables::{
    COUNTERS, DIR_COOKIES, DIRENTS, EXTENT_UNWRITTEN, EXTENTS, FREE, FREE_BY_LEN, INODES, ORPHANS,
    PENDING_FREE, SYMLINKS, XATTRS, counter,
};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a structure and its key ("inode 17", "blocks 100..108").
    pub place: String,
    /// What is wrong.
    pub what: String,
    /// Whether `--repair` fixes it.
    pub repairable: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}{}",
            self.place,
            self.what,
            if self.repairable { " (repairable)" } else { "" }
        )
    }
}

/// What fsck found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// Everything found.
    pub problems: Vec<Problem>,
    /// Repairs made (with `repair`).
    pub repaired: Vec<String>,
    /// Inodes checked.
    pub inodes: u64,
    /// Extents checked.
    pub extents: u64,
    /// Orphans (deleted at the next mount).
    pub orphans: u64,
}

impl Report {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
    fn add(&mut self, place: impl Into<String>, what: impl Into<String>, repairable: bool) {
        self.problems.push(Problem {
            place: place.into(),
            what: what.into(),
            repairable,
        });
    }
}

#[derive(Default)]
struct Fixes {
    counters: Vec<(&'static str, u64)>,
    inode_blocks: Vec<(u64, u64)>,
    nlinks: Vec<(u64, u32)>,
    new_orphans: Vec<u64>,
    dangling_entries: Vec<(u64, Vec<u8>, u64)>,
    leaked: Vec<(u64, u64)>,
    rebuild_by_len: bool,
    rewrite_backup_superblock: bool,
}

/// Checks the volume on `dev`; with `repair`, fixes what is safe to fix.
pub fn check(dev: Arc<dyn BlockDevice>, repair: bool) -> MetaResult<Report> {
    let mut report = Report::default();
    let mut fixes = Fixes::default();
    let (sb, primary_bad) = Superblock::read(&*dev)
        .map_err(|e| MetaError::Corrupt(format!("{} is not a csvfs volume ({e})", dev.name())))?;
    if primary_bad {
        report.add(
            "superblock (block 0)",
            "primary copy is damaged; the backup is good",
            true,
        );
        fixes.rewrite_backup_superblock = true;
    } else {
        let mut buf = blockdev::AlignedBuf::zeroed(4096);
        dev.read_at(&mut buf, (sb.total_blocks - 1) * 4096)?;
        if Superblock::decode(&buf).ok().as_ref() != Some(&sb) {
            report.add(
                format!("superblock copy (block {})", sb.total_blocks - 1),
                "backup copy is missing or differs",
                true,
            );
            fixes.rewrite_backup_superblock = true;
        }
    }
    let store_place = format!(
        "metadata store (LUN bytes {}..{})",
        sb.metadata.byte_offset(),
        sb.metadata.byte_offset() + sb.metadata.byte_len()
    );
    let target: Arc<dyn BlockDevice> = if repair {
        dev.clone()
    } else {
        Arc::new(OverlayDevice::new(dev.clone()))
    };
    let backend = RegionBackend::open(target, sb.metadata, false)?;
    // A damaged store can make redb panic while it opens; fsck reports that instead.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        redb::Builder::new().create_with_backend(backend)
    }));
    let mut db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => {
            report.add(&store_place, format!("cannot be opened: {e}"), false);
            return Ok(report);
        }
        Err(_) => {
            report.add(&store_place, "is damaged beyond what redb can open", false);
            return Ok(report);
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity())) {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => report.add(
            &store_place,
            "page checksums failed; redb's repair can rebuild it",
            true,
        ),
        Ok(Err(e)) => {
            report.add(
                &store_place,
                format!("page checksums failed and it cannot be repaired: {e}"),
                false,
            );
            return Ok(report);
        }
        Err(_) => {
            report.add(&store_place, "is damaged beyond what redb can check", false);
            return Ok(report);
        }
    }
    walk(&db, &sb, &mut report, &mut fixes)?;
    if repair {
        apply(&db, &dev, &sb, &fixes, &mut report)?;
    }
    Ok(report)
}

fn walk(db: &Database, sb: &Superblock, report: &mut Report, fixes: &mut Fixes) -> MetaResult<()> {
    let txn = db.begin_read()?;
    let mut inodes: BTreeMap<u64, Inode> = BTreeMap::new();
    for e in txn.open_table(INODES)?.iter()? {
        let (k, v) = e?;
        match Inode::decode(v.value()) {
            Ok(i) => {
                inodes.insert(k.value(), i);
            }
            Err(err) => report.add(format!("inode {}", k.value()), err.to_string(), false),
        }
    }
    report.inodes = inodes.len() as u64;
    if !inodes.get(&ROOT_INO).is_some_and(|r| r.is_dir()) {
        report.add(
            "inode 1",
            "the root directory is missing or not a directory",
            false,
        );
    }

    // Directory entries: targets exist, kinds agree, cookies index them one to one.
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut dir_parent: HashMap<u64, u64> = HashMap::new();
    let mut cookie_of: HashMap<(u64, Vec<u8>), u64> = HashMap::new();
    for e in txn.open_table(DIRENTS)?.iter()? {
        let (k, v) = e?;
        let (parent, name) = k.value();
        let (ino, kind, cookie) = v.value();
        let place = format!(
            "directory {parent} entry {:?}",
            String::from_utf8_lossy(name)
        );
        cookie_of.insert((parent, name.to_vec()), cookie);
        if !inodes.get(&parent).is_some_and(|p| p.is_dir()) {
            report.add(&place, "its directory does not exist", true);
            fixes.dangling_entries.push((parent, name.to_vec(), cookie));
            continue;
        }
        let Some(target) = inodes.get(&ino) else {
            report.add(
                &place,
                format!("names inode {ino}, which does not exist (a free inode)"),
                true,
            );
            fixes.dangling_entries.push((parent, name.to_vec(), cookie));
            continue;
        };
        if FileKind::from_code(kind) != Some(target.kind()) {
            report.add(
                &place,
                format!(
                    "kind {kind} disagrees with inode {ino}'s mode {:o}",
                    target.mode
                ),
                false,
            );
        }
        *links.entry(ino).or_default() += 1;
        if target.is_dir() {
            *subdirs.entry(parent).or_default() += 1;
            if let Some(prev) = dir_parent.insert(ino, parent) {
                report.add(
                    format!("inode {ino}"),
                    format!("directory is linked from both {prev} and {parent}"),
                    false,
                );
            }
        }
    }
    let mut cookies = 0usize;
    for e in txn.open_table(DIR_COOKIES)?.iter()? {
        let (k, v) = e?;
        let (parent, cookie) = k.value();
        cookies += 1;
        if cookie_of.get(&(parent, v.value().to_vec())) != Some(&cookie) {
            report.add(
                format!("directory {parent} cookie {cookie}"),
                "does not match a directory entry",
                false,
            );
        }
    }
    if cookies != cookie_of.len() {
        report.add(
            "directory index",
            format!("{} entries but {cookies} cookies", cookie_of.len()),
            false,
        );
    }

    let orphans: Vec<u64> = txn
        .open_table(ORPHANS)?
        .iter()?
        .map(|e| e.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    report.orphans = orphans.len() as u64;
    for &o in &orphans {
        match inodes.get(&o) {
            Some(i) if i.nlink != 0 => report.add(
                format!("inode {o}"),
                "listed as an orphan but has links",
                false,
            ),
            _ => {}
        }
    }
    for (&ino, inode) in &inodes {
        let place = format!("inode {ino}");
        let found = links.get(&ino).copied().unwrap_or(0);
        if ino == ROOT_INO {
            if inode.nlink != 2 + subdirs.get(&ino).copied().unwrap_or(0) {
                report.add(
                    &place,
                    format!("root link count {} is wrong", inode.nlink),
                    true,
                );
                fixes
                    .nlinks
                    .push((ino, 2 + subdirs.get(&ino).copied().unwrap_or(0)));
            }
            continue;
        }
        if found == 0 {
            if inode.nlink != 0 {
                report.add(
                    &place,
                    format!(
                        "unreachable: link count {} but no directory entry",
                        inode.nlink
                    ),
                    true,
                );
                fixes.nlinks.push((ino, 0));
                fixes.new_orphans.push(ino);
            } else if !orphans.contains(&ino) {
                report.add(&place, "has no links and is not on the orphan list", true);
                fixes.new_orphans.push(ino);
            }
            continue;
        }
        let expect = if inode.is_dir() {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            found
        };
        if inode.nlink != expect {
            report.add(
                &place,
                format!("link count {} but {expect} links found", inode.nlink),
                true,
            );
            fixes.nlinks.push((ino, expect));
        }
        if inode.is_dir() && dir_parent.get(&ino) != Some(&inode.parent) {
            report.add(
                &place,
                format!("parent field {} disagrees with its entry", inode.parent),
                false,
            );
        }
    }
    for (table, name) in [(SYMLINKS, "symlink")] {
        for e in txn.open_table(table)?.iter()? {
            let ino = e?.0.value();
            if !inodes.contains_key(&ino) {
                report.add(
                    format!("{name} of inode {ino}"),
                    "belongs to no inode",
                    false,
                );
            }
        }
    }
    for e in txn.open_table(XATTRS)?.iter()? {
        let (k, _) = e?;
        let ino = k.value().0;
        if !inodes.contains_key(&ino) {
            report.add(
                format!("xattr of inode {ino}"),
                "belongs to no inode",
                false,
            );
        }
    }

    // Space: every data block is used by exactly one extent, free, or pending free.
    let data = sb.data;
    let mut runs: Vec<(u64, u64, String)> = Vec::new();
    let mut blocks_of: HashMap<u64, u64> = HashMap::new();
    for e in txn.open_table(EXTENTS)?.iter()? {
        let (k, v) = e?;
        let (ino, logical) = k.value();
        let (physical, len, flags) = v.value();
        report.extents += 1;
        let place = format!("inode {ino} extent at file block {logical}");
        if !inodes.contains_key(&ino) {
            report.add(&place, "belongs to no inode", false);
        }
        if len == 0 || flags & !EXTENT_UNWRITTEN != 0 {
            report.add(
                &place,
                format!("bad length {len} or flags {flags:#x}"),
                false,
            );
        }
        if physical < data.start || physical.saturating_add(len) > data.end() {
            report.add(
                &place,
                format!(
                    "blocks {physical}..{} lie outside the data region",
                    physical.saturating_add(len)
                ),
                false,
            );
            continue;
        }
        *blocks_of.entry(ino).or_default() += len;
        runs.push((physical, len, place));
    }
    for (&ino, inode) in &inodes {
        let have = blocks_of.get(&ino).copied().unwrap_or(0);
        if inode.blocks != have {
            report.add(
                format!("inode {ino}"),
                format!("block count {} but its extents hold {have}", inode.blocks),
                true,
            );
            fixes.inode_blocks.push((ino, have));
        }
    }
    let mut free_total = 0u64;
    let mut free_runs = BTreeMap::new();
    for e in txn.open_table(FREE)?.iter()? {
        let (k, v) = e?;
        free_total += v.value();
        free_runs.insert(k.value(), v.value());
        runs.push((
            k.value(),
            v.value(),
            format!("free extent at block {}", k.value()),
        ));
    }
    for e in txn.open_table(PENDING_FREE)?.iter()? {
        let (k, v) = e?;
        runs.push((
            k.value(),
            v.value(),
            format!("pending free extent at block {}", k.value()),
        ));
    }
    let by_len: BTreeMap<u64, u64> = txn
        .open_table(FREE_BY_LEN)?
        .iter()?
        .map(|e| e.map(|(k, _)| (k.value().1, k.value().0)))
        .collect::<Result<_, _>>()?;
    if by_len != free_runs {
        report.add(
            "free space index",
            "the by-size index disagrees with the free extents",
            true,
        );
        fixes.rebuild_by_len = true;
    }
    runs.sort();
    let mut at = data.start;
    let mut last_place = String::from("start of the data region");
    for (start, len, place) in &runs {
        if *start < at {
            report.add(
                place.clone(),
                format!("blocks {start}..{} overlap {last_place}", start + len),
                false,
            );
        } else if *start > at {
            report.add(
                format!("blocks {at}..{start}"),
                "leaked: neither used nor free",
                true,
            );
            fixes.leaked.push((at, start - at));
        }
        if start + len > at {
            at = start + len;
            last_place = place.clone();
        }
    }
    if at < data.end() {
        report.add(
            format!("blocks {at}..{}", data.end()),
            "leaked: neither used nor free",
            true,
        );
        fixes.leaked.push((at, data.end() - at));
    }
    let counters = txn.open_table(COUNTERS)?;
    let get = |n: &str| -> MetaResult<u64> { Ok(counters.get(n)?.map(|v| v.value()).unwrap_or(0)) };
    if get(counter::FREE_BLOCKS)? != free_total {
        report.add(
            "counter free_blocks",
            format!(
                "says {} but {free_total} blocks are free",
                get(counter::FREE_BLOCKS)?
            ),
            true,
        );
        fixes.counters.push((counter::FREE_BLOCKS, free_total));
    }
    if get(counter::INODES)? != inodes.len() as u64 {
        report.add(
            "counter inodes",
            format!(
                "says {} but there are {}",
                get(counter::INODES)?,
                inodes.len()
            ),
            true,
        );
        fixes.counters.push((counter::INODES, inodes.len() as u64));
    }
    let max_ino = inodes.keys().next_back().copied().unwrap_or(ROOT_INO);
    if get(counter::NEXT_INO)? <= max_ino {
        report.add(
            "counter next_ino",
            format!(
                "{} is not above the highest inode {max_ino}",
                get(counter::NEXT_INO)?
            ),
            true,
        );
        fixes.counters.push((counter::NEXT_INO, max_ino + 1));
    }
    Ok(())
}

fn apply(
    db: &Database,
    dev: &Arc<dyn BlockDevice>,
    sb: &Superblock,
    fixes: &Fixes,
    report: &mut Report,
) -> MetaResult<()> {
    if fixes.rewrite_backup_superblock {
        sb.write(&**dev)?;
        report
            .repaired
            .push("rewrote both superblock copies".into());
    }
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    {
        let mut dirents = txn.open_table(DIRENTS)?;
        let mut cookies = txn.open_table(DIR_COOKIES)?;
        for (parent, name, cookie) in &fixes.dangling_entries {
            dirents.remove((*parent, name.as_slice()))?;
            cookies.remove((*parent, *cookie))?;
            report.repaired.push(format!(
                "removed dangling entry {:?} of directory {parent}",
                String::from_utf8_lossy(name)
            ));
        }
        let mut t = txn.open_table(INODES)?;
        let mut edit = |ino: u64, f: &dyn Fn(&mut Inode)| -> MetaResult<()> {
            let Some(bytes) = t.get(ino)?.map(|v| v.value().to_vec()) else {
                return Ok(());
            };
            let mut i = Inode::decode(&bytes)?;
            f(&mut i);
            t.insert(ino, i.encode().as_slice())?;
            Ok(())
        };
        for &(ino, n) in &fixes.nlinks {
            edit(ino, &|i| i.nlink = n)?;
            report
                .repaired
                .push(format!("set the link count of inode {ino} to {n}"));
        }
        for &(ino, b) in &fixes.inode_blocks {
            edit(ino, &|i| i.blocks = b)?;
            report
                .repaired
                .push(format!("set the block count of inode {ino} to {b}"));
        }
        let mut orphans = txn.open_table(ORPHANS)?;
        for &ino in &fixes.new_orphans {
            orphans.insert(ino, ())?;
            report.repaired.push(format!(
                "put inode {ino} on the orphan list (deleted at the next mount)"
            ));
        }
    }
    if fixes.rebuild_by_len {
        let runs: Vec<(u64, u64)> = txn
            .open_table(FREE)?
            .iter()?
            .map(|e| e.map(|(k, v)| (k.value(), v.value())))
            .collect::<Result<_, _>>()?;
        let mut by_len = txn.open_table(FREE_BY_LEN)?;
        by_len.retain(|_, _| false)?;
        for (s, l) in runs {
            by_len.insert((l, s), ())?;
        }
        report.repaired.push("rebuilt the free space index".into());
    }
    for &(s, l) in &fixes.leaked {
        free_now(&txn, s, l)?;
        report.repaired.push(format!(
            "returned leaked blocks {s}..{} to free space",
            s + l
        ));
    }
    {
        let mut c = txn.open_table(COUNTERS)?;
        for &(name, v) in &fixes.counters {
            // free_now above already moved free_blocks for leaked runs; recompute it.
            if name != counter::FREE_BLOCKS {
                c.insert(name, v)?;
                report.repaired.push(format!("set counter {name} to {v}"));
            }
        }
    }
    if fixes
        .counters
        .iter()
        .any(|(n, _)| *n == counter::FREE_BLOCKS)
        || !fixes.leaked.is_empty()
    {
        let total: u64 = txn
            .open_table(FREE)?
            .iter()?
            .map(|e| e.map(|(_, v)| v.value()))
            .sum::<Result<u64, _>>()?;
        txn.open_table(COUNTERS)?
            .insert(counter::FREE_BLOCKS, total)?;
        report
            .repaired
            .push(format!("set counter free_blocks to {total}"));
    }
    txn.commit()?;
    Ok(())
}
