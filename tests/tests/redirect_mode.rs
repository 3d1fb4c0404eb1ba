//! File system redirected mode: `csvctl volume redirect Volume1 --on` sends every
//! node's I/O through the coordinator; pjdfstest passes on a node that does not
//! coordinate while it is on, with its bytes going through the coordinator; `--off`
//! returns every node to Direct.

use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::{Scratch, require_root_and_fuse, run_pjdfstest_in_new_dir};

const LABEL: &str = "Volume1";

/// Waits until every node shows `state` (and `reason`).
fn wait_all(c: &Cluster, state: &str, reason: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states: Vec<_> = (0..c.nodes.len())
            .map(|i| {
                c.volume_status(i)
                    .and_then(|v| v.io)
                    .map(|io| (io.state, io.reason))
            })
            .collect();
        if states.iter().all(|s| {
            s.as_ref()
                .is_some_and(|(st, r)| st == state && r.as_deref() == reason)
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every node is {state} ({reason:?}): {states:?}\n{}",
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pjdfstest_passes_on_a_follower_in_file_system_redirected_mode_and_off_returns_to_direct() {
    require_root_and_fuse();
    let s = Scratch::new();
    let (_t, c) = Cluster::on_tgtd(&s, 2, LABEL, 512 << 20);
    let (coord, _) = c.wait_for_coordinator(&[0, 1], 0, Duration::from_secs(30));
    c.wait_for_followers(&[0, 1], coord, Duration::from_secs(10));
    let follower = 1 - coord;
    let mp = c.nodes[follower].wait_mounted(LABEL, Duration::from_secs(20));
    wait_all(&c, "Direct", None);

    let said = c.set_redirect(true);
    println!("{said}");
    assert!(said.contains("n1: FileSystemRedirected") && said.contains("n2: FileSystemRedirected"));
    wait_all(&c, "FileSystemRedirected", Some("UserRequest"));

    let before = c.volume_status(follower).unwrap().io.unwrap();
    let (summary, text) = run_pjdfstest_in_new_dir(&mp.join("pjd"));
    let after = c.volume_status(follower).unwrap().io.unwrap();
    println!(
        "pjdfstest on {} (FileSystemRedirected): {summary}; {} bytes through the coordinator, {} direct",
        c.nodes[follower].name,
        after.bytes_redirected - before.bytes_redirected,
        after.bytes_direct - before.bytes_direct
    );
    assert!(
        summary.starts_with("Summary: 0 failed"),
        "pjdfstest failed in redirected mode:\n{text}\n{}",
        c.describe()
    );
    assert!(
        after.bytes_redirected > before.bytes_redirected,
        "no I/O went through the coordinator: {before:?} → {after:?}"
    );
    assert_eq!(
        after.bytes_direct, before.bytes_direct,
        "the follower used its own path in redirected mode"
    );

    let said = c.set_redirect(false);
    println!("{said}");
    wait_all(&c, "Direct", None);
    // And direct I/O again on the follower.
    let before = c.volume_status(follower).unwrap().io.unwrap();
    std::fs::write(mp.join("after-off"), vec![7u8; 1 << 20]).unwrap();
    let f = std::fs::File::open(mp.join("after-off")).unwrap();
    f.sync_all().unwrap();
    let after = c.volume_status(follower).unwrap().io.unwrap();
    assert!(
        after.bytes_direct > before.bytes_direct,
        "no direct I/O after --off: {before:?} → {after:?}"
    );
}
