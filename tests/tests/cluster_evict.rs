//! `csvctl node evict`: a follower is fenced and put out of the cluster while the
//! other nodes go on. The evicted daemon learns it and stops (its mount answers EIO
//! with the reason in its log), the coordinator refuses it from then on (its keys are
//! preempted, its redirected I/O refused), and it stays out. Evicting the coordinator's
//! node, or a node the configuration does not know, is refused with the reason.

use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::{Scratch, require_root_and_fuse};

const LABEL: &str = "Volume1";
const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn an_evicted_node_is_fenced_refused_and_stops_while_the_others_go_on() {
    require_root_and_fuse();
    let s = Scratch::new();
    let (_t, c) = Cluster::on_tgtd(&s, 3, LABEL, 256 << 20);
    let all = [0, 1, 2];
    let (coord, _) = c.wait_for_coordinator(&all, 0, LIMIT);
    c.wait_for_followers(&all, coord, LIMIT);
    let mounts: Vec<_> = c
        .nodes
        .iter()
        .map(|n| n.wait_mounted(LABEL, LIMIT))
        .collect();
    let (victim, other) = ((coord + 1) % 3, (coord + 2) % 3);
    std::fs::write(
        mounts[victim].join("before"),
        b"written before the eviction",
    )
    .unwrap();

    let (ok, text) = c.csvctl(&["node", "evict", &c.nodes[coord].name]);
    assert!(!ok && text.contains("coordinates the volume"), "{text}");
    let (ok, text) = c.csvctl(&["node", "evict", "nosuchnode"]);
    assert!(!ok && text.contains("has no node"), "{text}");

    let start = Instant::now();
    let (ok, text) = c.csvctl(&["node", "evict", &c.nodes[victim].name]);
    assert!(ok, "csvctl node evict: {text}\n{}", c.describe());
    print!("{text}");
    assert!(
        text.contains(&format!("{LABEL}: {} evicted", c.nodes[victim].name)),
        "{text}"
    );

    // The evicted daemon learns it and stops.
    let deadline = Instant::now() + LIMIT;
    while c.volume_status(victim).is_none_or(|v| v.role != "evicted") {
        assert!(
            Instant::now() < deadline,
            "the evicted node did not stop:\n{}",
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{} learnt of its eviction {:?} after the request",
        c.nodes[victim].name,
        start.elapsed()
    );
    let e = std::fs::write(mounts[victim].join("after"), b"x").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EIO),
        "a write on the evicted node: {e}"
    );

    // The coordinator fenced its key (its redirected I/O is refused).
    let evicted_on = |i: usize| c.volume_status(i).map(|v| v.evicted).unwrap_or_default();
    let deadline = Instant::now() + LIMIT;
    loop {
        let st = c.volume_status(coord).expect("coordinator status");
        if let [evicted] = st.evicted[..]
            && st.refused.iter().any(|&(n, _)| n == evicted)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator did not fence the evicted node:\n{}",
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        evicted_on(coord),
        evicted_on(other),
        "the other follower knows of the eviction too"
    );

    // The others go on.
    assert_eq!(
        std::fs::read(mounts[other].join("before")).unwrap(),
        b"written before the eviction"
    );
    std::fs::write(mounts[other].join("after"), b"written after").unwrap();
    assert_eq!(
        std::fs::read(mounts[coord].join("after")).unwrap(),
        b"written after"
    );

    // And it stays out: longer than a fencing interval later, still evicted.
    std::thread::sleep(Duration::from_secs(4));
    let st = c
        .volume_status(victim)
        .expect("the evicted daemon still answers csvctl");
    assert_eq!(st.role, "evicted", "{}", c.describe());
    let st = c.volume_status(coord).unwrap();
    assert_eq!(st.evicted.len(), 1, "{}", c.describe());
}
