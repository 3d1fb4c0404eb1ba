//! Changes acknowledged early survive the coordinator's death: a follower creates,
//! renames and unlinks files on four threads (no fsync) while the coordinator's
//! daemon is killed with -9. The coordinator answered those changes before they were
//! durable; the follower replays the ones the dead coordinator had not made durable to
//! the new one, before anybody else is served. Afterwards every node lists exactly
//! the names whose operations returned success, no operation failed, the follower's
//! log shows the replay, and fsck is clean.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::{Scratch, assert_fsck_clean, require_root_and_fuse};

const LABEL: &str = "Volume1";
const LIMIT: Duration = Duration::from_secs(30);
const THREADS: usize = 4;

/// Creates files in `dir` until `stop`: every third is renamed, every fifth created
/// one is unlinked again. Returns the names that must exist, or the first error.
fn churn(dir: PathBuf, stop: Arc<AtomicBool>) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("f{i}");
        let path = dir.join(&name);
        std::fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        names.insert(name.clone());
        if i.is_multiple_of(3) {
            let to = format!("r{i}");
            std::fs::rename(&path, dir.join(&to))
                .map_err(|e| format!("rename {}: {e}", path.display()))?;
            names.remove(&name);
            names.insert(to);
        } else if i.is_multiple_of(5) {
            std::fs::remove_file(&path).map_err(|e| format!("unlink {}: {e}", path.display()))?;
            names.remove(&name);
        }
        i += 1;
    }
    Ok(names)
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The number of changes a node's log says it replayed, the milliseconds it took,
/// and its warnings about them.
fn replays_in(log: &Path) -> (u64, u64, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut replayed, mut ms) = (0, 0);
    let mut trouble = Vec::new();
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for line in text.lines() {
        if line.contains("replayed the changes the previous coordinator had acknowledged") {
            replayed += field(line, "changes=");
            ms += field(line, "ms=");
        }
        if line.contains("could not be replayed") || line.contains("came out differently") {
            trouble.push(line.to_string());
        }
    }
    (replayed, ms, trouble)
}

#[test]
fn changes_acknowledged_early_are_replayed_after_kill_9_of_the_coordinator() {
    require_root_and_fuse();
    let s = Scratch::new();
    let (t, mut c) = Cluster::on_tgtd(&s, 3, LABEL, 512 << 20);
    let all = [0, 1, 2];
    let (coord, first) = c.wait_for_coordinator(&all, 0, LIMIT);
    c.wait_for_followers(&all, coord, Duration::from_secs(10));
    let runner = (coord + 1) % 3;
    let watcher = (coord + 2) % 3;
    let mounts: Vec<PathBuf> = c
        .nodes
        .iter()
        .map(|n| n.wait_mounted(LABEL, Duration::from_secs(20)))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|k| {
            let dir = mounts[runner].join(format!("churn{k}"));
            std::fs::create_dir(&dir).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || churn(dir, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    c.nodes[coord].kill9();
    let rest = [runner, watcher];
    let (new, after) = c.wait_for_coordinator(&rest, first.epoch, LIMIT);
    println!(
        "kill -9 of {}: {} serves epoch {} after {:.2} s",
        c.nodes[coord].name,
        c.nodes[new].name,
        after.epoch,
        killed.elapsed().as_secs_f64()
    );
    // Some work on the new coordinator too, then stop.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut expected = Vec::new();
    for (k, w) in workers.into_iter().enumerate() {
        match w.join().unwrap() {
            Ok(names) => expected.push(names),
            Err(e) => panic!(
                "thread {k} on {} got an error across the failover: {e}\n{}",
                c.nodes[runner].name,
                c.describe()
            ),
        }
    }
    let total: usize = expected.iter().map(|n| n.len()).sum();

    for n in rest {
        for (k, names) in expected.iter().enumerate() {
            let seen = listing(&mounts[n].join(format!("churn{k}")));
            let missing: Vec<_> = names.difference(&seen).take(10).collect();
            let extra: Vec<_> = seen.difference(names).take(10).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{} lists churn{k} with {} names, {} expected; missing {missing:?}, extra {extra:?}",
                c.nodes[n].name,
                seen.len(),
                names.len()
            );
        }
    }
    let (replayed, ms, trouble) = replays_in(&c.nodes[runner].log);
    println!(
        "{}: {total} names as expected on {} and {}; {replayed} changes replayed to the new coordinator in {ms} ms",
        c.nodes[runner].name, c.nodes[runner].name, c.nodes[watcher].name
    );
    assert!(
        trouble.is_empty(),
        "replay trouble:\n{}",
        trouble.join("\n")
    );
    assert!(
        replayed > 0,
        "the follower had no unconfirmed changes to replay at the kill: the test did not exercise the replay"
    );
    let io = c
        .volume_status(runner)
        .and_then(|v| v.io)
        .expect("the follower's volume status");
    assert_eq!(
        (io.replayed, io.replay_diverged),
        (replayed, 0),
        "csvctl volume status counts the replay as the log does"
    );

    for n in &mut c.nodes {
        n.stop();
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_fsck_clean(Path::new(&t.url_as("fsck")));
}
