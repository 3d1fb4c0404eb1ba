//! Benchmark of redirected I/O with real processes: two `csvfs node` daemons on
//! 127.0.0.1 sharing a tgtd LUN. On the follower's mount, alternating ROUNDS times
//! between direct I/O and file system redirected mode (`csvctl volume redirect`:
//! every byte through the coordinator over QUIC, the same path as block redirected):
//!
//! - 1 MiB sequential writes of SIZE_MB (O_DIRECT, then fsync);
//! - 1 MiB sequential reads of the same file (O_DIRECT: the page cache does not answer);
//! - 4 KiB random reads, RANDOM of them (O_DIRECT).
//!
//! Prints medians and the ratio redirected / direct (targets: at least 70% for the
//! sequential rows, 40% for random reads) as a Markdown table for docs/benchmarks.md.
//!
//! Then path failover: two nodes and tgtd in network namespaces, the follower writing
//! and reading a file in a loop; its storage cable is pulled until it is
//! BlockRedirected and plugged back, ROUNDS times: the medians of the time to
//! BlockRedirected (LUN URL timeout=2) and from the cable back to Direct (target 10 s).
//! Run it with tools/bench-redirect. ROUNDS (default 5), SIZE_MB (default 256),
//! RANDOM (default 4000).

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use blockdev::AlignedBuf;
use csvfs_tests::cluster::Cluster;
use csvfs_tests::netns::NetLab;
use csvfs_tests::{Scratch, env_number, median};

const LIMIT: Duration = Duration::from_secs(30);
const LABEL: &str = "Volume1";
const MIB: usize = 1 << 20;

fn open_direct(path: &Path, write: bool) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap()
}

/// MB/s of writing `mb` MiB to `path` in 1 MiB O_DIRECT writes, fsync included.
fn write_rate(path: &Path, mb: usize) -> f64 {
    let f = open_direct(path, true);
    let mut buf = AlignedBuf::zeroed(MIB);
    buf.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 253) as u8);
    let start = Instant::now();
    for i in 0..mb {
        f.write_all_at(&buf, (i * MIB) as u64).unwrap();
    }
    f.sync_all().unwrap();
    (mb * MIB) as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// MB/s of reading `mb` MiB of `path` in 1 MiB O_DIRECT reads.
fn read_rate(path: &Path, mb: usize) -> f64 {
    let f = open_direct(path, false);
    let mut buf = AlignedBuf::zeroed(MIB);
    let start = Instant::now();
    for i in 0..mb {
        f.read_exact_at(&mut buf, (i * MIB) as u64).unwrap();
    }
    (mb * MIB) as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// 4 KiB O_DIRECT reads per second at `count` pseudo-random places of `mb` MiB.
fn random_rate(path: &Path, mb: usize, count: usize, seed: u64) -> f64 {
    let f = open_direct(path, false);
    let mut buf = AlignedBuf::zeroed(4096);
    let blocks = (mb * MIB / 4096) as u64;
    let mut x = seed | 1;
    let start = Instant::now();
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.read_exact_at(&mut buf, (x % blocks) * 4096).unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// Waits until node `i` shows path state `state`; returns when.
fn wait_state(c: &Cluster, i: usize, state: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if c.volume_status(i)
            .and_then(|v| v.io)
            .is_some_and(|io| io.state == state)
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no {state}\n{}", c.describe());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Medians of (pulled → BlockRedirected, plugged → Direct), in seconds.
fn path_failover(rounds: usize) -> (f64, f64) {
    let lab = NetLab::new(2);
    let s = Scratch::new();
    let (_t, c) = Cluster::in_netlab(&lab, 2, &s, LABEL, "&timeout=2");
    let (coord, _) = c.wait_for_coordinator(&[0, 1], 0, LIMIT);
    let cut = 1 - coord;
    c.wait_for_followers(&[cut], coord, LIMIT);
    let mp = c.nodes[cut].wait_mounted(LABEL, LIMIT);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let data = vec![5u8; 64 << 10];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::fs::write(mp.join("load"), &data).unwrap();
                std::fs::File::open(mp.join("load"))
                    .unwrap()
                    .sync_all()
                    .unwrap();
                assert_eq!(std::fs::read(mp.join("load")).unwrap(), data);
            }
        })
    };
    let (mut to_redirected, mut to_direct) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        wait_state(&c, cut, "Direct");
        std::thread::sleep(Duration::from_secs(1));
        lab.storage_link(cut + 1, false);
        let pulled = Instant::now();
        to_redirected.push((wait_state(&c, cut, "BlockRedirected") - pulled).as_secs_f64());
        std::thread::sleep(Duration::from_secs(1));
        lab.storage_link(cut + 1, true);
        let plugged = Instant::now();
        to_direct.push((wait_state(&c, cut, "Direct") - plugged).as_secs_f64());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.join().expect("the load ran without an error");
    (median(to_redirected), median(to_direct))
}

fn main() {
    let rounds = env_number("ROUNDS", 5) as usize;
    let mb = env_number("SIZE_MB", 256) as usize;
    let random = env_number("RANDOM", 4000) as usize;
    let s = Scratch::new();
    let (_t, c) = Cluster::on_tgtd(&s, 2, LABEL, ((mb + 512) as u64) << 20);
    let (coord, _) = c.wait_for_coordinator(&[0, 1], 0, LIMIT);
    c.wait_for_followers(&[0, 1], coord, LIMIT);
    let follower = 1 - coord;
    let mp = c.nodes[follower].wait_mounted(LABEL, LIMIT);
    let file = mp.join("bench");
    write_rate(&file, mb);

    // [direct, redirected] samples of write, read, random read.
    let mut samples = [
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
    ];
    for round in 0..rounds {
        for (m, on) in [(0, false), (1, true)] {
            c.set_redirect(on);
            let io = c.volume_status(follower).unwrap().io.unwrap();
            let want = if on { "FileSystemRedirected" } else { "Direct" };
            assert_eq!(io.state, want, "the follower is not {want}");
            samples[0][m].push(write_rate(&file, mb));
            samples[1][m].push(read_rate(&file, mb));
            samples[2][m].push(random_rate(&file, mb, random, round as u64 + 1));
        }
    }
    c.set_redirect(false);
    println!(
        "\nRedirected I/O on a follower ({rounds} rounds alternating, {mb} MiB file, {random} random reads; medians)\n"
    );
    println!("| I/O on the follower | direct | redirected | redirected / direct | target |");
    println!("|---|---|---|---|---|");
    let rows = [
        ("1 MiB sequential write (MB/s)", 0.7),
        ("1 MiB sequential read (MB/s)", 0.7),
        ("4 KiB random read (reads/s)", 0.4),
    ];
    for (i, (name, target)) in rows.iter().enumerate() {
        let d = median(samples[i][0].clone());
        let r = median(samples[i][1].clone());
        println!(
            "| {name} | {d:.0} | {r:.0} | {:.2} | ≥ {target:.2} |",
            r / d
        );
    }
    drop(c);
    let (down, up) = path_failover(rounds);
    println!("\nPath failover on a follower under load ({rounds} rounds; medians)\n");
    println!("| step | seconds | target |");
    println!("|---|---|---|");
    println!("| storage cable pulled → BlockRedirected (LUN timeout=2 s) | {down:.2} | |");
    println!("| storage cable back → Direct | {up:.2} | ≤ 10 |");
}
