//! Benchmark of the shared volume with real processes: three `csvfs node` daemons on
//! 127.0.0.1 sharing a tgtd LUN, each mounting it.
//!
//! - 1 MiB sequential reads (O_DIRECT, so the page cache does not answer) of one file,
//!   on the coordinator's mount and on a follower's, alternating, ROUNDS each: file
//!   data goes to the LUN directly from every node, so the two should match;
//! - creating, stating and unlinking COUNT files, one thread and 8 threads, on the
//!   coordinator's mount and on a follower's (whose metadata goes to the coordinator),
//!   each thread in a directory of its own;
//! - failover: kill -9 of the coordinator's daemon to the first answered stat on a
//!   follower's mount (the target is under 5 s); the killed node is restarted between
//!   rounds.
//!
//! Run it with tools/bench-cluster (it builds the binaries first). ROUNDS (default 5),
//! COUNT (default 10,000), READ_MB (default 256), META_ROUNDS (turns of the metadata
//! rates on each node, default 3; medians).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blockdev::AlignedBuf;
use csvfs_tests::cluster::Cluster;
use csvfs_tests::median;
use csvfs_tests::{Scratch, env_number};

const LIMIT: Duration = Duration::from_secs(30);
const LABEL: &str = "Volume1";

/// MB/s of reading `path` with 1 MiB O_DIRECT reads.
fn read_rate(path: &Path) -> f64 {
    use std::io::Read;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let mut buf = AlignedBuf::zeroed(1 << 20);
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// Files per second of `op` over COUNT names split among `threads`, each thread in
/// its own directory (the kernel serialises creates and unlinks in one directory).
fn rate(dir: &Path, count: u64, threads: u64, op: fn(&Path)) -> f64 {
    let start = Instant::now();
    let per = count / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let dir = dir.join(format!("t{t}"));
            std::thread::spawn(move || {
                for i in 0..per {
                    op(&dir.join(format!("f{i}")));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (per * threads) as f64 / start.elapsed().as_secs_f64()
}

fn create(p: &Path) {
    std::fs::File::create(p).unwrap();
}
fn stat(p: &Path) {
    std::fs::metadata(p).unwrap();
}
fn unlink(p: &Path) {
    std::fs::remove_file(p).unwrap();
}

/// Create, stat and unlink rates in a fresh directory of `mount`, each with the calls
/// to the coordinator per file that `calls` (the node's counter) saw.
fn metadata_rates(
    mount: &Path,
    tag: &str,
    count: u64,
    threads: u64,
    calls: &dyn Fn() -> u64,
) -> [(f64, f64); 3] {
    let dir = mount.join(format!("meta-{tag}-{threads}"));
    for t in 0..threads {
        std::fs::create_dir_all(dir.join(format!("t{t}"))).unwrap();
    }
    let measured = |op: fn(&Path)| {
        let before = calls();
        let r = rate(&dir, count, threads, op);
        (r, (calls() - before) as f64 / count as f64)
    };
    let r = [measured(create), measured(stat), measured(unlink)];
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

fn main() {
    let rounds = env_number("ROUNDS", 5) as usize;
    let count = env_number("COUNT", 10_000);
    let read_mb = env_number("READ_MB", 256);
    let meta_rounds = env_number("META_ROUNDS", 3) as usize;
    let s = Scratch::new();
    let (_t, mut c) = Cluster::on_tgtd(&s, 3, LABEL, (read_mb + 512) << 20);
    let (coord, mut status) = c.wait_for_coordinator(&[0, 1, 2], 0, LIMIT);
    c.wait_for_followers(&[0, 1, 2], coord, LIMIT);
    let mounts: Vec<PathBuf> = c
        .nodes
        .iter()
        .map(|n| n.wait_mounted(LABEL, LIMIT))
        .collect();
    let follower = (coord + 1) % 3;

    // Sequential reads.
    let data: Vec<u8> = (0..1u64 << 20).map(|i| (i * 31 % 251) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mounts[coord].join("big")).unwrap();
        for _ in 0..read_mb {
            f.write_all(&data).unwrap();
        }
        f.sync_all().unwrap();
    }
    let (mut on_coord, mut on_follower) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        on_coord.push(read_rate(&mounts[coord].join("big")));
        on_follower.push(read_rate(&mounts[follower].join("big")));
    }
    let (rc, rf) = (median(on_coord), median(on_follower));

    // Metadata.
    let mut meta = Vec::new();
    for threads in [1, 8] {
        let calls = |n: usize| {
            c.volume_status(n)
                .and_then(|v| v.io)
                .map_or(0, |io| io.metadata_calls)
        };
        // Coordinator and follower take turns, META_ROUNDS each: the machine is
        // noisy, medians compare.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in 0..meta_rounds {
            a.push(metadata_rates(
                &mounts[coord],
                &format!("coordinator-{r}"),
                count,
                threads,
                &|| calls(coord),
            ));
            b.push(metadata_rates(
                &mounts[follower],
                &format!("follower-{r}"),
                count,
                threads,
                &|| calls(follower),
            ));
        }
        meta.push((threads, a, b));
    }

    // Failover to the first answered operation on a follower's mount.
    let mut failover_s = Vec::new();
    let mut current = coord;
    for _ in 0..rounds {
        let rest: Vec<usize> = (0..3).filter(|&i| i != current).collect();
        let watcher = rest[0];
        let probe = mounts[watcher].join("big");
        let killed = Instant::now();
        c.nodes[current].kill9();
        let (new, next) = c.wait_for_coordinator(&rest, status.epoch, LIMIT);
        std::fs::metadata(&probe).unwrap();
        failover_s.push(killed.elapsed().as_secs_f64());
        c.restart(current);
        c.wait_for_followers(&[current], new, LIMIT);
        c.nodes[current].wait_mounted(LABEL, LIMIT);
        std::thread::sleep(Duration::from_secs(1));
        current = new;
        status = next;
    }

    println!(
        "| measure | coordinator | follower | follower / coordinator | follower's calls to the coordinator per file | runs |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| 1 MiB sequential read, O_DIRECT, {read_mb} MiB | {rc:.0} MB/s | {rf:.0} MB/s | {:.2} | | {rounds} |",
        rf / rc
    );
    for (threads, a, b) in meta {
        for (k, what) in ["create", "stat", "unlink"].iter().enumerate() {
            let rates = |v: &[[(f64, f64); 3]]| v.iter().map(|r| r[k].0).collect::<Vec<_>>();
            let (ra, rb) = (median(rates(&a)), median(rates(&b)));
            let calls = median(b.iter().map(|r| r[k].1).collect());
            println!(
                "| {what} {count} files, {threads} thread{} | {ra:.0}/s | {rb:.0}/s | {:.2} | {calls:.2} | {meta_rounds} |",
                if threads > 1 { "s" } else { "" },
                rb / ra,
            );
        }
    }
    println!(
        "| kill -9 of the coordinator to the first answered stat on a follower | {:.2} s median (all: {}) | | | | {rounds} |",
        median(failover_s.clone()),
        failover_s
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
