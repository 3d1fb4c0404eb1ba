//! A csvfs volume on an iSCSI LUN served by tgtd, reached through the built-in
//! initiator: mkfs, mount, pjdfstest and fsx on the mount, fsck, and the data intact
//! across unmount and mount.
//!
//! fsx runs `CSVFS_FSX_OPS` operations per seed (20,000 in CI; tools/longcheck runs
//! 200,000).

use std::path::Path;

use blockdev::FileDevice;
use csvfs_tests::tgtd::{Tgtd, TgtdOptions};
use csvfs_tests::*;

/// A 2 GiB LUN on tgtd, formatted.
fn formatted_lun(s: &Scratch) -> Tgtd {
    require_root_and_fuse();
    let img = s.path("lun.img");
    FileDevice::create_image(&img, 2 << 30).unwrap();
    let t = Tgtd::start(&img, TgtdOptions::default());
    let out = run_ok(&bin("mkfs.csvfs"), &["-L", "IscsiVol", &t.url()]);
    assert!(out.contains("iscsi://"), "{out}");
    t
}

#[test]
fn pjdfstest_passes_on_an_iscsi_lun() {
    let s = Scratch::new();
    let t = formatted_lun(&s);
    let url = t.url();
    let lun = Path::new(&url);
    let m = Mount::new(lun, &s.mountpoint("mnt"), "").unwrap();
    // The LUN is the mount's source name, without credentials.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        mounts.lines().any(|l| l.starts_with(&format!("{url} "))),
        "{mounts}"
    );
    assert_pjdfstest_passes(&m);
    m.unmount();
    assert_fsck_clean(lun);
}

#[test]
fn fsx_three_seeds_all_ok_on_an_iscsi_lun() {
    let ops = env_number("CSVFS_FSX_OPS", 20_000);
    let s = Scratch::new();
    let t = formatted_lun(&s);
    let url = t.url();
    let lun = Path::new(&url);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(lun, &mp, "").unwrap();
    assert_fsx_three_seeds(&m, ops);
    let before: Vec<Vec<u8>> = (1..=3)
        .map(|seed| std::fs::read(m.path(&format!("fsx.{seed}"))).unwrap())
        .collect();
    m.unmount();
    assert_fsck_clean(lun);
    // Data intact across unmount and mount.
    let m = Mount::new(lun, &mp, "").unwrap();
    for (i, b) in before.iter().enumerate() {
        let after = std::fs::read(m.path(&format!("fsx.{}", i + 1))).unwrap();
        assert!(
            after == *b,
            "fsx.{} changed across unmount and mount",
            i + 1
        );
    }
}
