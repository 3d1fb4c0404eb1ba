//! A node that holds a layout of a file that another node truncates cannot write into
//! the freed blocks once they belong to another file (issue 5; DESIGN.md, Data path).
//!
//! Two data paths share one store, as the coordinator and a node reading layouts from
//! it do: node A gets the layout of file F and stalls before its write (its metadata
//! answer is slow to come back); meanwhile node B truncates F, creates G and fills it.
//! With the layout hold of a shared volume, G never gets F's old blocks while A's
//! layout may be in use, and A's write, found stale, asks again and lands in F. The
//! same scene on a volume opened without the hold shows the hazard: G gets F's blocks
//! and A's late write overwrites G.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blockdev::{BlockDevice, FileDevice};
use csvfs::data::DataPath;
use csvfs::meta::{LocalMeta, Meta, MetaCall, MetaReply, MetaService};
use metadata::{Extent, FormatOptions, MetaResult, NewNode, OpenOptions, ROOT_INO, Volume};

/// How long a layout may be used, as a shared volume's lease.
const USE: Duration = Duration::from_millis(1000);
/// How long freed blocks are held after a layout: the lease and the drain interval.
const LIFE: Duration = Duration::from_millis(1300);
/// How long node A stalls after its layout comes back.
const STALL: Duration = Duration::from_millis(1500);

/// Node A's way to the store: its next layout answer comes back after [`STALL`].
struct SlowLayouts {
    inner: LocalMeta,
    stall_next: AtomicBool,
}

impl MetaService for SlowLayouts {
    fn call(&self, call: MetaCall) -> MetaResult<MetaReply> {
        let layout = matches!(call, MetaCall::Layout { .. });
        let reply = self.inner.call(call);
        if layout && self.stall_next.swap(false, Ordering::SeqCst) {
            std::thread::sleep(STALL);
        }
        reply
    }
    fn close(&self) -> MetaResult<()> {
        Ok(())
    }
}

fn file() -> NewNode {
    NewNode {
        mode: libc::S_IFREG | 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        symlink: None,
    }
}

fn blocks(extents: &[Extent]) -> Vec<(u64, u64)> {
    extents
        .iter()
        .map(|e| (e.physical, e.physical + e.len))
        .collect()
}

fn overlaps(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    a.iter()
        .any(|&(s, e)| b.iter().any(|&(s2, e2)| s < e2 && s2 < e))
}

/// What the scene ends with.
struct Outcome {
    /// G was given some of F's freed blocks while A's layout was out.
    g_got_f_blocks: bool,
    /// G reads back as written.
    g_intact: bool,
    /// A's write succeeded and F holds it.
    f_has_a_write: bool,
}

fn scene(dir: &Path, hold: bool) -> Outcome {
    let image = dir.join(if hold { "held.img" } else { "unheld.img" });
    let (dev, vol) = new_volume(&image, 256, hold.then_some(LIFE));
    let slow = Arc::new(SlowLayouts {
        inner: LocalMeta(vol.clone()),
        stall_next: AtomicBool::new(false),
    });
    let mut a = DataPath::new(Meta::new(slow.clone()), dev.clone(), false);
    let mut b = DataPath::new(Meta::local(vol.clone()), dev.clone(), false);
    if hold {
        a.set_layout_use(USE);
        b.set_layout_use(USE);
    }
    let meta = Meta::local(vol.clone());

    let (f, _) = meta.create(ROOT_INO, b"f", file()).expect("create f");
    b.write(f, 0, &vec![b'F'; 1 << 20]).expect("write f");
    meta.sync().expect("sync");
    let (_, f_extents) = meta.layout(f, 0, 256).expect("layout of f");
    let f_blocks = blocks(&f_extents);

    // A gets F's layout and stalls; B truncates F and fills a new file G.
    slow.stall_next.store(true, Ordering::SeqCst);
    let a_write = std::thread::spawn(move || a.write(f, 0, &vec![b'A'; 64 << 10]));
    std::thread::sleep(Duration::from_millis(200));
    b.truncate(f, 0).expect("truncate f");
    meta.sync().expect("sync the truncate");
    let (g, _) = meta.create(ROOT_INO, b"g", file()).expect("create g");
    b.write(g, 0, &vec![b'G'; 1 << 20]).expect("write g");
    meta.sync().expect("sync g");
    let (_, g_extents) = meta.layout(g, 0, 256).expect("layout of g");
    let g_got_f_blocks = overlaps(&blocks(&g_extents), &f_blocks);

    // Without the hold, A's commit after its late write may fail (F no longer has
    // those blocks); what matters is where its bytes went.
    let a_wrote = a_write.join().expect("node A's writer").is_ok();
    let g_data = b.read(g, 0, 1 << 20).expect("read g");
    let f_data = b.read(f, 0, 64 << 10).expect("read f");
    Outcome {
        g_got_f_blocks,
        g_intact: g_data.bytes().iter().all(|&x| x == b'G'),
        f_has_a_write: a_wrote
            && f_data.bytes().len() == 64 << 10
            && f_data.bytes().iter().all(|&x| x == b'A'),
    }
}

#[test]
fn a_stalled_layout_cannot_write_into_blocks_freed_and_given_to_another_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let held = scene(dir.path(), true);
    assert!(
        !held.g_got_f_blocks,
        "G was given F's freed blocks while node A's layout of F was out"
    );
    assert!(held.g_intact, "G was overwritten");
    assert!(held.f_has_a_write, "node A's write did not land in F");
}

#[test]
fn without_the_hold_the_late_write_lands_in_the_other_file() {
    // The hazard the hold is for, shown on a volume opened without it (a single
    // node's volume, where the inode's data lock serialises I/O and truncate).
    let dir = tempfile::tempdir().expect("temp dir");
    let unheld = scene(dir.path(), false);
    assert!(
        unheld.g_got_f_blocks,
        "the allocator did not reuse F's freed blocks for G: the scene shows nothing"
    );
    assert!(
        !unheld.g_intact,
        "G came through intact although A wrote into its blocks"
    );
}

/// A volume formatted on a new image of `mib` MiB at `image`, open with `layout_life`.
fn new_volume(
    image: &Path,
    mib: u64,
    layout_life: Option<Duration>,
) -> (Arc<dyn BlockDevice>, Arc<Volume>) {
    FileDevice::create_image(image, mib << 20).expect("image");
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(image, false).expect("open"));
    Volume::format(
        dev.clone(),
        &FormatOptions {
            label: "Volume1".into(),
            metadata_bytes: None,
            force: false,
        },
    )
    .expect("format");
    let opts = OpenOptions {
        keep_orphans: true,
        durable_interval: Duration::from_millis(20),
        layout_life,
        ..OpenOptions::default()
    };
    let vol = Arc::new(Volume::open(dev.clone(), &opts).expect("open volume"));
    (dev, vol)
}

/// A shared volume's store on a new image of `mib` MiB, and a data path over it.
fn shared_volume(dir: &Path, mib: u64) -> (Arc<Volume>, Meta, DataPath) {
    let (dev, vol) = new_volume(&dir.join("shared.img"), mib, Some(LIFE));
    let meta = Meta::local(vol.clone());
    let mut data = DataPath::new(meta.clone(), dev, false);
    data.set_layout_use(USE);
    (vol, meta, data)
}

#[test]
fn held_blocks_come_back_once_layouts_have_run_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (vol, meta, data) = shared_volume(dir.path(), 256);
    let free0 = meta.usage().expect("usage").free_blocks;
    let (f, _) = meta.create(ROOT_INO, b"f", file()).expect("create");
    data.write(f, 0, &vec![1; 4 << 20]).expect("write");
    data.truncate(f, 0).expect("truncate");
    meta.sync().expect("sync");
    assert!(vol.held_frees() > 0, "the freed blocks are held");
    // The committer releases them on its own once the layouts have run out.
    std::thread::sleep(LIFE + Duration::from_millis(500));
    assert_eq!(vol.held_frees(), 0, "nothing held past the layouts' life");
    // Free space counts pending runs as free all along (statfs), and ends where it
    // began.
    assert_eq!(meta.usage().expect("usage").free_blocks, free0);
}

#[test]
fn a_full_volume_waits_for_its_held_blocks_instead_of_failing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (vol, meta, data) = shared_volume(dir.path(), 128);
    let free = meta.usage().expect("usage").free_blocks;
    // Most of the data region in one file, freed, and at once the same again.
    let size = (free - 64) * 4096;
    let chunk = vec![7u8; 1 << 20];
    let fill = |ino: u64| {
        let mut at = 0;
        while at < size {
            let n = (size - at).min(chunk.len() as u64);
            data.write(ino, at, &chunk[..n as usize])?;
            at += n;
        }
        Ok::<(), metadata::MetaError>(())
    };
    let (f, _) = meta.create(ROOT_INO, b"f", file()).expect("create f");
    fill(f).expect("fill f");
    data.truncate(f, 0).expect("truncate f");
    meta.sync().expect("sync");
    assert!(vol.held_frees() > 0, "F's blocks are held");
    let (g, _) = meta.create(ROOT_INO, b"g", file()).expect("create g");
    fill(g).expect("G fits once F's blocks come back, without ENOSPC");
}
