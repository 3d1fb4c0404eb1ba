//! The external POSIX suites on a single-node mount: pjdfstest and fsx.
//!
//! fsx runs 3 seeds concurrently on one mount, `CSVFS_FSX_OPS` operations each
//! (20,000 in CI; tools/longcheck runs 200,000).

use csvfs_tests::*;

#[test]
fn pjdfstest_passes() {
    require_root_and_fuse();
    let s = Scratch::new();
    s.mkfs("2G", &[]);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    assert_pjdfstest_passes(&m);
    m.unmount();
    assert_fsck_clean(&s.image());
}

#[test]
fn fsx_three_seeds_all_ok() {
    require_root_and_fuse();
    let ops = env_number("CSVFS_FSX_OPS", 20_000);
    let s = Scratch::new();
    s.mkfs("2G", &[]);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    assert_fsx_three_seeds(&m, ops);
    m.unmount();
    assert_fsck_clean(&s.image());
}
