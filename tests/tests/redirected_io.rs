//! Redirected I/O with real processes: two nodes and the tgtd target, each in a
//! network namespace of its own ([`NetLab`]). While fsx runs on a follower's mount,
//! the follower's storage cable is pulled: its I/O goes on through the coordinator
//! (status BlockRedirected, NoDiskConnectivity) and fsx does not notice; when the
//! cable is back the follower registers again on its own path and returns to Direct
//! while fsx still runs. Every fsx run must finish A-OK.
//!
//! And fencing on the redirected path: a follower without its path is cut off from
//! the coordinator too, long enough to be fenced; when its cluster cable is back, what
//! it sends as its fenced life is refused by the coordinator and it gives that life up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::netns::NetLab;
use csvfs_tests::tgtd::Tgtd;
use csvfs_tests::{Scratch, env_number, run_fsx};

const LIMIT: Duration = Duration::from_secs(30);

/// Two nodes in `lab` with Volume1 mounted; returns the target, the cluster, the
/// coordinator and the other node (the one whose cables the tests pull).
fn two_nodes(lab: &NetLab, s: &Scratch) -> (Tgtd, Cluster, usize, usize) {
    // A short command timeout: a cut path shows within seconds.
    let (t, c) = Cluster::in_netlab(lab, 2, s, "Volume1", "&timeout=2");
    let (coord, _) = c.wait_for_coordinator(&[0, 1], 0, LIMIT);
    let cut = 1 - coord;
    c.wait_for_followers(&[cut], coord, LIMIT);
    c.nodes[cut].wait_mounted("Volume1", LIMIT);
    (t, c, coord, cut)
}

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
    let (_t, c, _, cut) = two_nodes(&lab, &s);
    let mp = c.nodes[cut].mount_point("Volume1");
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

/// Waits until the coordinator `coord` has fenced node id `me` in its life `life` (or
/// later); returns the incarnation up to which it refuses that node.
fn wait_fenced(c: &Cluster, coord: usize, me: u8, life: u32) -> u32 {
    let deadline = Instant::now() + LIMIT;
    loop {
        let v = c.volume_status(coord).unwrap_or_else(|| {
            let pid = c.nodes[coord].pid().unwrap_or(0);
            let state = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("State")).map(String::from));
            let err = lockmgr::control::Client::connect(&lockmgr::control::socket_path(
                &c.nodes[coord].root.join("run/csvfs"),
                &c.nodes[coord].name,
            ))
            .and_then(|mut cl| cl.status())
            .err()
            .map(|e| e.to_string());
            panic!(
                "the coordinator (pid {pid}, {state:?}) does not answer: {err:?}\n{}",
                c.describe()
            )
        });
        if let Some(&(_, upto)) = v.refused.iter().find(|&&(n, upto)| n == me && upto >= life) {
            return upto;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator did not fence node {me}: {v:?}\n{}",
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fenced_node_gets_its_redirected_writes_refused_and_rejoins_once_its_path_is_back() {
    let lab = NetLab::new(2);
    let s = Scratch::new();
    let (_t, c, coord, cut) = two_nodes(&lab, &s);

    // No path to the LUN: the node's I/O (its disk heartbeat, at least) goes through
    // the coordinator.
    lab.storage_link(cut + 1, false);
    wait_state(&c, cut, "BlockRedirected", LIMIT);
    // Cut off from the coordinator too: the coordinator fences it. Back on the cluster
    // network, still without its own path: what it sends as the fenced life is
    // refused, and it gives that life up. It may also learn of its fencing from the
    // lock manager before any redirected I/O of the fenced life reaches the
    // coordinator (then nothing is refused, since nothing was sent): the cut is made
    // again, up to five times, until a refusal is seen.
    let me = cut as u8 + 1;
    let refusals = || {
        std::fs::read_to_string(&c.nodes[coord].log)
            .unwrap_or_default()
            .matches("refused redirected I/O of a fenced node")
            .count()
    };
    let mut seen = false;
    for attempt in 1..=5 {
        let life = c.volume_status(cut).unwrap().incarnation;
        let earlier = refusals();
        lab.cluster_link(cut + 1, false);
        let upto = wait_fenced(&c, coord, me, life);
        println!(
            "attempt {attempt}: {} fenced by the coordinator up to incarnation {upto} (it was in {life})",
            c.nodes[cut].name
        );
        lab.cluster_link(cut + 1, true);
        let deadline = Instant::now() + LIMIT;
        let v = loop {
            let v = c.volume_status(cut);
            if let Some(v) = v.as_ref().filter(|v| v.incarnation > upto) {
                break v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no new life after the fencing: {v:?}\n{}",
                c.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The refusal is logged before the refused node hears of it.
        seen = refusals() > earlier;
        println!(
            "attempt {attempt}: {} is now in incarnation {} ({}); the coordinator {} its fenced life's redirected I/O",
            c.nodes[cut].name,
            v.incarnation,
            v.role,
            if seen { "refused" } else { "received none of" }
        );
        if seen {
            break;
        }
        c.wait_for_followers(&[cut], coord, LIMIT);
        // The coordinator fences a node as it last heard of it: before the next cut it
        // must have heard the new life (heartbeats go every 200 ms).
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        seen,
        "in five fencings, no redirected I/O of a fenced life was refused\n{}",
        c.describe()
    );

    // Its path back: it registers and works directly again.
    lab.storage_link(cut + 1, true);
    wait_state(&c, cut, "Direct", LIMIT);
    c.wait_for_followers(&[cut], coord, LIMIT);
    let mp = c.nodes[cut].mount_point("Volume1");
    std::fs::write(mp.join("after"), b"written after the fencing").unwrap();
    let back = c.nodes[coord].mount_point("Volume1").join("after");
    assert_eq!(std::fs::read(back).unwrap(), b"written after the fencing");
}
