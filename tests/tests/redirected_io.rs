//! Redirected I/O with real processes: two nodes and the tgtd target, each in a
//! network namespace of its own ([`NetLab`]). While fsx runs on a follower's mount,
//! the follower's storage cable is pulled: its I/O goes on through the coordinator
//! (status BlockRedirected, NoDiskConnectivity) and fsx does not notice; when the
//! cable is back the follower registers again on its own path and returns to Direct
//! while fsx still runs. Every fsx run must finish A-OK.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::netns::NetLab;
use csvfs_tests::{Scratch, env_number, run_fsx};

const LIMIT: Duration = Duration::from_secs(30);

/// The path state of node `i` as its status shows it: (state, reason).
fn path_state(c: &Cluster, i: usize) -> Option<(String, Option<String>)> {
    let io = c.volume_status(i)?.io?;
    Some((io.state, io.reason))
}

/// Waits until node `i` is in `state`; returns how long it took. Fails after `limit`.
fn wait_state(c: &Cluster, i: usize, state: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if path_state(c, i).is_some_and(|(s, _)| s == state) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{} did not reach {state} within {limit:?}\n{}",
            c.nodes[i].name,
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_follower_that_loses_its_lun_path_keeps_running_fsx_through_the_coordinator() {
    let ops = env_number("CSVFS_REDIRECT_FSX_OPS", 20_000);
    let lab = NetLab::new(2);
    let s = Scratch::new();
    // A short command timeout: a cut path shows within seconds.
    let (_t, c) = Cluster::in_netlab(&lab, 2, &s, "Volume1", "&timeout=2");
    let (coord, _) = c.wait_for_coordinator(&[0, 1], 0, LIMIT);
    let cut = 1 - coord;
    c.wait_for_followers(&[cut], coord, LIMIT);
    let mp = c.nodes[cut].wait_mounted("Volume1", LIMIT);
    assert_eq!(path_state(&c, cut).unwrap().0, "Direct");
    let before = c.volume_status(cut).unwrap();

    // fsx runs on the follower's mount, one run after another, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let fsx = {
        let stop = stop.clone();
        let dir = mp.clone();
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            let mut seed = 1;
            loop {
                let started = Instant::now();
                let (ok, out) = run_fsx(&dir.join(format!("fsx-{seed}")), seed, ops);
                runs.push((seed, started, Instant::now(), ok, out));
                if !ok || stop.load(Ordering::SeqCst) {
                    return runs;
                }
                seed += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(!fsx.is_finished(), "fsx stopped at once");

    lab.storage_link(cut + 1, false);
    let pulled = Instant::now();
    let redirected = wait_state(&c, cut, "BlockRedirected", LIMIT);
    let (_, reason) = path_state(&c, cut).unwrap();
    assert_eq!(reason.as_deref(), Some("NoDiskConnectivity"));
    println!(
        "storage cable pulled: {} BlockRedirected (NoDiskConnectivity) after {:.2} s",
        c.nodes[cut].name,
        redirected.as_secs_f64()
    );
    // I/O goes on through the coordinator for a while.
    let moved_before = c.volume_status(cut).unwrap().io.unwrap().bytes_redirected;
    std::thread::sleep(Duration::from_secs(5));
    let io = c.volume_status(cut).unwrap().io.unwrap();
    assert!(
        io.bytes_redirected > moved_before,
        "no I/O went through the coordinator while the path was cut: {io:?}\n{}",
        c.describe()
    );

    lab.storage_link(cut + 1, true);
    let back = wait_state(&c, cut, "Direct", LIMIT);
    let returned_at = Instant::now();
    println!(
        "storage cable back: {} Direct again after {:.2} s (benchmark target 10 s)",
        c.nodes[cut].name,
        back.as_secs_f64()
    );
    let after = c.volume_status(cut).unwrap();
    assert!(
        after.incarnation > before.incarnation,
        "the node did not register again on its new connection: {after:?}"
    );
    // Direct I/O again.
    let direct_before = after.io.unwrap().bytes_direct;
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let direct_after = c.volume_status(cut).unwrap().io.unwrap().bytes_direct;
    let runs = fsx.join().unwrap();
    for (seed, started, ended, ok, out) in &runs {
        assert!(ok, "fsx seed {seed} failed:\n{out}\n{}", c.describe());
        println!(
            "fsx seed {seed}: {ops} operations A-OK in {:.1} s",
            (*ended - *started).as_secs_f64()
        );
    }
    assert!(
        runs.iter()
            .any(|(_, started, ended, _, _)| *started < pulled && *ended > pulled),
        "no fsx run was going on when the cable was pulled"
    );
    assert!(
        runs.iter()
            .any(|(_, started, ended, _, _)| *started < returned_at && *ended > returned_at),
        "no fsx run was going on when the node returned to Direct"
    );
    assert!(
        direct_after > direct_before,
        "no direct I/O after the return ({direct_before} → {direct_after} bytes)"
    );
}
