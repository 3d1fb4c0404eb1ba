//! The external POSIX suites on a single-node mount: pjdfstest and fsx.
//!
//! fsx runs 3 seeds concurrently on one mount, `CSVFS_FSX_OPS` operations each
//! (20,000 in CI; tools/longcheck runs 200,000).

use std::os::unix::fs::PermissionsExt;

use csvfs_tests::*;

#[test]
fn pjdfstest_passes() {
    require_root_and_fuse();
    let s = Scratch::new();
    s.mkfs("2G", &[]);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    let dir = m.path("pjd");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (summary, text) = run_pjdfstest(&dir);
    println!("pjdfstest: {summary}");
    assert!(
        summary.starts_with("Summary: 0 failed"),
        "pjdfstest failed:\n{text}"
    );
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
    let start = std::time::Instant::now();
    let runs: Vec<_> = (1..=3u64)
        .map(|seed| {
            let file = m.path(&format!("fsx.{seed}"));
            std::thread::spawn(move || (seed, run_fsx(&file, seed, ops)))
        })
        .collect();
    for r in runs {
        let (seed, (ok, text)) = r.join().unwrap();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        assert!(
            ok,
            "fsx seed {seed} failed:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        println!("fsx seed {seed}: {ops} operations A-OK");
    }
    println!("fsx: 3 seeds x {ops} operations in {:?}", start.elapsed());
    m.unmount();
    assert_fsck_clean(&s.image());
}
