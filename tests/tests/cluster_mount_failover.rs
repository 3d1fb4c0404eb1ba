//! Failover under load: kill -9 of the coordinator's daemon while fsx runs on another
//! node's mount. File operations pause and resume on the new coordinator: fsx finishes
//! A-OK with no error returned to it; fsck of the LUN is clean afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::{
    Scratch, assert_fsck_clean, env_number, last_lines, require_root_and_fuse, run_fsx,
};

const LABEL: &str = "Volume1";

/// The test's limit for kill -9 to the first answered operation; the benchmark tracks
/// the 5 s target.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn kill_9_of_the_coordinator_while_fsx_runs_on_another_node() {
    require_root_and_fuse();
    let s = Scratch::new();
    let (t, mut c) = Cluster::on_tgtd(&s, 3, LABEL, 512 << 20);
    let all = [0, 1, 2];
    let (coord, first) = c.wait_for_coordinator(&all, 0, FAILOVER_LIMIT);
    c.wait_for_followers(&all, coord, Duration::from_secs(10));
    let runner = (coord + 1) % 3;
    let mp = c.nodes[runner].wait_mounted(LABEL, Duration::from_secs(20));
    for n in &c.nodes {
        n.wait_mounted(LABEL, Duration::from_secs(20));
    }

    let ops = env_number("CSVFS_FSX_OPS", 20_000);
    let file = mp.join("fsx.failover");
    let fsx = std::thread::spawn(move || run_fsx(&file, 7, ops));
    // Let fsx get going, then kill the coordinator.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !fsx.is_finished(),
        "fsx ended before the kill: make it longer"
    );
    let killed = Instant::now();
    c.nodes[coord].kill9();
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != coord).collect();
    let (new, after) = c.wait_for_coordinator(&rest, first.epoch, FAILOVER_LIMIT);
    let serving = killed.elapsed();
    // The first operation answered after the kill, on the runner's mount.
    std::fs::metadata(mp.join("fsx.failover")).expect("a stat after the failover");
    let answered = killed.elapsed();
    println!(
        "kill -9 of {}: {} serves epoch {} after {:.2} s; first answered stat on {} after {:.2} s",
        c.nodes[coord].name,
        c.nodes[new].name,
        after.epoch,
        serving.as_secs_f64(),
        c.nodes[runner].name,
        answered.as_secs_f64()
    );
    assert!(answered < FAILOVER_LIMIT, "failover took {answered:?}");

    let (ok, text) = fsx.join().unwrap();
    assert!(
        ok,
        "fsx on {} failed across the failover:\n{}\n{}",
        c.nodes[runner].name,
        last_lines(&text, 40),
        c.describe()
    );
    println!(
        "fsx on {}: {ops} operations A-OK across the failover",
        c.nodes[runner].name
    );

    // The killed node comes back: it rejoins, mounts again and reads what the others
    // wrote while it was away.
    c.restart(coord);
    let back = c.nodes[coord].wait_mounted(LABEL, FAILOVER_LIMIT);
    let there = std::fs::read(mp.join("fsx.failover")).unwrap();
    let here = std::fs::read(back.join("fsx.failover")).unwrap();
    assert!(
        here == there,
        "the restarted {} reads another fsx file",
        c.nodes[coord].name
    );
    println!(
        "{} restarted, mounted again, reads the fsx file ({} bytes) as {} does",
        c.nodes[coord].name,
        here.len(),
        c.nodes[runner].name
    );

    for n in &mut c.nodes {
        n.stop();
    }
    // fsck refuses a volume whose heartbeat slots still advance: wait them out.
    std::thread::sleep(Duration::from_secs(3));
    assert_fsck_clean(Path::new(&t.url_as("fsck")));
}
