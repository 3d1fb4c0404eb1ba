//! POSIX byte-range locks between processes on different nodes, through the lock
//! manager of real `csvfs node` daemons sharing a tgtd LUN: the test's clients speak
//! to each node's control socket as that node's processes (the FUSE side, fcntl on the
//! cluster mount, comes with the multi-node volume). Checked: conflicts (F_SETLK
//! refused, F_GETLK names the holder), F_SETLKW waiting until the holder unlocks,
//! release when the holder's connection closes (its last close), and release when the
//! holder's node dies (kill -9), once that node is fenced.

use std::time::{Duration, Instant};

use blockdev::BlockDevice;
use blockdev::iscsi::{IscsiDevice, IscsiUrl};
use csvfs_tests::Scratch;
use csvfs_tests::cluster::Cluster;
use lockmgr::control::{HeldLock, LockAnswer, LockRequest};

const LIMIT: Duration = Duration::from_secs(30);
const VOL: &str = "Volume1";

fn write_lock(start: u64, end: u64, wait: bool) -> LockRequest {
    LockRequest::Lock {
        write: true,
        start,
        end,
        wait,
    }
}

#[test]
fn byte_range_locks_conflict_wait_and_go_with_their_holder() {
    let s = Scratch::new();
    let (t, mut c) = Cluster::on_tgtd(&s, 3, VOL, 256 << 20);
    let (coord, _) = c.wait_for_coordinator(&[0, 1, 2], 0, LIMIT);
    let followers: Vec<usize> = (0..3).filter(|&i| i != coord).collect();
    c.wait_for_followers(&followers, coord, LIMIT);
    let (a, b) = (coord, followers[0]);
    let node_id = |i: usize| i as u8 + 1;

    // Conflicts: a process on the coordinator's node holds [0, 100) of file 7.
    let mut pa = c.nodes[a].client();
    let mut pb = c.nodes[b].client();
    assert_eq!(
        pa.lock(VOL, 7, 1, write_lock(0, 100, false), LIMIT)
            .unwrap(),
        LockAnswer::Done
    );
    assert_eq!(
        pb.lock(VOL, 7, 2, write_lock(50, 60, false), LIMIT)
            .unwrap(),
        LockAnswer::Busy
    );
    let test = LockRequest::Test {
        write: false,
        start: 90,
        end: 200,
    };
    assert_eq!(
        pb.lock(VOL, 7, 2, test, LIMIT).unwrap(),
        LockAnswer::Blocker(HeldLock {
            node: node_id(a),
            owner: 1,
            write: true,
            start: 0,
            end: 100
        })
    );
    // A read lock beside it is fine.
    assert_eq!(
        pb.lock(
            VOL,
            7,
            2,
            LockRequest::Lock {
                write: false,
                start: 100,
                end: 200,
                wait: false
            },
            LIMIT
        )
        .unwrap(),
        LockAnswer::Done
    );

    // F_SETLKW waits until the holder unlocks.
    let waiter = std::thread::spawn(move || {
        let r = pb.lock(VOL, 7, 2, write_lock(50, 60, true), LIMIT);
        (r, Instant::now(), pb)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiter.is_finished(), "F_SETLKW did not wait");
    let unlocked = Instant::now();
    assert_eq!(
        pa.lock(VOL, 7, 1, LockRequest::Unlock { start: 0, end: 100 }, LIMIT)
            .unwrap(),
        LockAnswer::Done
    );
    let (r, granted, pb) = waiter.join().unwrap();
    assert_eq!(r.unwrap(), LockAnswer::Done);
    println!(
        "F_SETLKW on node {} granted {:.1} ms after the unlock on node {}",
        node_id(b),
        (granted - unlocked).as_secs_f64() * 1000.0,
        node_id(a)
    );
    assert_eq!(
        pa.lock(VOL, 7, 1, write_lock(55, 56, false), LIMIT)
            .unwrap(),
        LockAnswer::Busy
    );

    // The holder's last close releases its locks: pb's connection goes.
    drop(pb);
    let deadline = Instant::now() + LIMIT;
    loop {
        match pa
            .lock(VOL, 7, 1, write_lock(0, 1000, false), LIMIT)
            .unwrap()
        {
            LockAnswer::Done => break,
            other => assert!(
                Instant::now() < deadline,
                "the closed holder's locks stay: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // The holder's node dies: its locks go once it is fenced.
    let holder = followers[1];
    let mut ph = c.nodes[holder].client();
    assert_eq!(
        ph.lock(VOL, 9, 5, write_lock(0, u64::MAX, false), LIMIT)
            .unwrap(),
        LockAnswer::Done
    );
    let mut pw = c.nodes[a].client();
    assert_eq!(
        pw.lock(VOL, 9, 6, write_lock(10, 20, false), LIMIT)
            .unwrap(),
        LockAnswer::Busy
    );
    let holder_key = c.volume_status(holder).unwrap().key;
    let killed = Instant::now();
    c.nodes[holder].kill9();
    assert_eq!(
        pw.lock(VOL, 9, 6, write_lock(10, 20, true), LIMIT).unwrap(),
        LockAnswer::Done,
        "{}",
        c.describe()
    );
    println!(
        "kill -9 of node {}: its lock went to node {} after {:.2} s (fencing)",
        node_id(holder),
        node_id(a),
        killed.elapsed().as_secs_f64()
    );
    assert!(killed.elapsed() < LIMIT);
    // Fenced before the lock moved: its key is gone from the LUN.
    let url = IscsiUrl::parse(&format!(
        "{}?initiator=iqn.2026-11.io.csvfs.test:observer",
        t.url()
    ))
    .unwrap();
    let keys = IscsiDevice::open_url(url)
        .unwrap()
        .read_keys()
        .unwrap()
        .keys;
    assert!(
        !keys.contains(&holder_key),
        "the lock moved while {holder_key:#x} is registered: {keys:x?}"
    );
}
