//! fsck finds injected corruption and says what and where; `--repair` fixes the cases
//! that are safe.

use std::path::Path;
use std::sync::Arc;

use blockdev::{BlockDevice, FileDevice};
use csvfs_tests::*;
use metadata::tables::{DIR_COOKIES, DIRENTS, EXTENTS, FREE, FREE_BY_LEN};
use metadata::{FileKind, JobKind, OpenOptions, ROOT_INO, Volume};
use redb::ReadableTable;

/// A volume with a few files, unmounted.
fn populated() -> Scratch {
    let s = Scratch::new();
    s.mkfs("128M", &[]);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    std::fs::write(m.path("needle-file-name-for-fsck"), vec![1u8; 100_000]).unwrap();
    std::fs::write(m.path("other"), vec![2u8; 50_000]).unwrap();
    m.unmount();
    assert_fsck_clean(&s.image());
    s
}

/// Runs `f` on the volume's store directly, in one durable transaction.
fn tamper(img: &Path, f: impl Fn(&redb::WriteTransaction) + Send + Sync + 'static) {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(img, false).unwrap());
    let vol = Volume::open(dev, &OpenOptions::default()).unwrap();
    vol.write(JobKind::DURABLE, move |c| {
        f(c.txn);
        Ok(())
    })
    .unwrap();
    vol.close().unwrap();
}

fn ino_of(img: &Path, name: &str) -> u64 {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(img, true).unwrap());
    let vol = Volume::open(
        dev,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    vol.snapshot()
        .unwrap()
        .lookup(ROOT_INO, name.as_bytes())
        .unwrap()
        .0
}

fn expect_found(img: &Path, needles: &[&str]) -> String {
    let (code, text) = fsck(img, false);
    assert_eq!(code, 4, "fsck must report problems:\n{text}");
    for n in needles {
        assert!(text.contains(n), "fsck output lacks {n:?}:\n{text}");
    }
    text
}

#[test]
fn directory_entry_naming_a_free_inode() {
    require_root_and_fuse();
    let s = populated();
    tamper(&s.image(), |txn| {
        txn.open_table(DIRENTS)
            .unwrap()
            .insert(
                (ROOT_INO, &b"ghost"[..]),
                (9999, FileKind::File.code(), 9999),
            )
            .unwrap();
        txn.open_table(DIR_COOKIES)
            .unwrap()
            .insert((ROOT_INO, 9999), &b"ghost"[..])
            .unwrap();
    });
    expect_found(
        &s.image(),
        &[
            "directory 1 entry \"ghost\"",
            "inode 9999, which does not exist",
        ],
    );
    let (code, text) = fsck(&s.image(), true);
    assert_eq!(code, 1, "repaired:\n{text}");
    assert_fsck_clean(&s.image());
}

#[test]
fn overlapping_extents() {
    require_root_and_fuse();
    let s = populated();
    let a = ino_of(&s.image(), "needle-file-name-for-fsck");
    let b = ino_of(&s.image(), "other");
    tamper(&s.image(), move |txn| {
        let mut t = txn.open_table(EXTENTS).unwrap();
        let (pa, _, _) = t.get((a, 0)).unwrap().unwrap().value();
        let (_, lb, fb) = t.get((b, 0)).unwrap().unwrap().value();
        t.insert((b, 0), (pa + 2, lb, fb)).unwrap();
    });
    let text = expect_found(
        &s.image(),
        &["overlap", &format!("inode {b} extent at file block 0")],
    );
    println!("{text}");
}

#[test]
fn leaked_extent() {
    require_root_and_fuse();
    let s = populated();
    tamper(&s.image(), |txn| {
        let (start, len) = {
            let t = txn.open_table(FREE).unwrap();
            let (k, v) = t.iter().unwrap().next().unwrap().unwrap();
            (k.value(), v.value())
        };
        txn.open_table(FREE).unwrap().remove(start).unwrap();
        txn.open_table(FREE_BY_LEN)
            .unwrap()
            .remove((len, start))
            .unwrap();
        txn.open_table(FREE)
            .unwrap()
            .insert(start + 8, len - 8)
            .unwrap();
        txn.open_table(FREE_BY_LEN)
            .unwrap()
            .insert((len - 8, start + 8), ())
            .unwrap();
    });
    expect_found(&s.image(), &["leaked: neither used nor free"]);
    let (code, text) = fsck(&s.image(), true);
    assert_eq!(code, 1, "repaired:\n{text}");
    assert_fsck_clean(&s.image());
}

#[test]
fn flipped_bits_in_a_metadata_page() {
    require_root_and_fuse();
    let s = populated();
    let img = s.image();
    let mut bytes = std::fs::read(&img).unwrap();
    let needle = b"needle-file-name-for-fsck";
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty(), "the name is stored somewhere");
    // Flip bits inside the stored name (the slack at the end of a page is not covered
    // by redb's checksums, so a flip there changes nothing).
    for at in &hits {
        bytes[at + 3] ^= 0x5a;
    }
    std::fs::write(&img, &bytes).unwrap();
    let text = expect_found(&img, &["metadata store"]);
    assert!(
        text.contains("checksum") || text.contains("cannot be opened") || text.contains("damaged"),
        "{text}"
    );
    // The mount refuses or copes, but never panics.
    let mp = s.mountpoint("mnt");
    let out = run(
        &bin("csvfs"),
        &["mount", img.to_str().unwrap(), mp.to_str().unwrap()],
    );
    if out.status.success() {
        let _ = run(Path::new("umount"), &[mp.to_str().unwrap()]);
        wait_lun_free(&img, std::time::Duration::from_secs(20));
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
    }
}
