//! A network partition with real processes: three nodes and the tgtd target, each in
//! a network namespace of its own, wired with a cluster network and a storage
//! network ([`NetLab`]). A follower holding an exclusive lease has its cluster cable
//! pulled, so it cannot reach its peers but still reaches the LUN.
//!
//! It must not take over (the coordinator's disk heartbeat still moves); it stops
//! relying on its lease on its own clock; the coordinator fences it (PREEMPT of its
//! key) and only then grants the lease to another node; when the cable is back the
//! cut-off node rejoins with a new incarnation.

use std::time::{Duration, Instant};

use blockdev::BlockDevice;
use blockdev::iscsi::{IscsiDevice, IscsiUrl};
use csvfs_tests::Scratch;
use csvfs_tests::cluster::Cluster;
use csvfs_tests::netns::NetLab;
use lockmgr::control::{Request, Response};

const LIMIT: Duration = Duration::from_secs(30);

fn acquire(c: &Cluster, node: usize, resource: &str) -> lockmgr::control::Client {
    let mut client = c.nodes[node].client();
    let r = client.request(&Request::Acquire {
        volume: "Volume1".into(),
        resource: resource.into(),
        exclusive: true,
        timeout_ms: LIMIT.as_millis() as u64,
    });
    assert!(
        matches!(r, Ok(Response::Granted { .. })),
        "{} did not get {resource}: {r:?}\n{}",
        c.nodes[node].name,
        c.describe()
    );
    client
}

#[test]
fn a_node_cut_off_from_its_peers_loses_its_lease_only_once_fenced_and_rejoins() {
    let lab = NetLab::new(3);
    let s = Scratch::new();
    let (t, c) = Cluster::in_netlab(&lab, 3, &s, "Volume1", "");
    let (coord, first) = c.wait_for_coordinator(&[0, 1, 2], 0, LIMIT);
    let others: Vec<usize> = (0..3).filter(|&i| i != coord).collect();
    let (cut, other) = (others[0], others[1]);
    c.wait_for_followers(&others, coord, LIMIT);

    let _held = acquire(&c, cut, "vm-disk");
    let before = c.volume_status(cut).unwrap();
    assert_eq!(before.leases, 1);
    println!(
        "{} holds the lease (incarnation {}, key {:#x}); {} coordinates epoch {}",
        c.nodes[cut].name, before.incarnation, before.key, c.nodes[coord].name, first.epoch
    );

    // An observer session on the storage network, to read the registrations.
    let url = IscsiUrl::parse(&format!(
        "{}?initiator=iqn.2026-11.io.csvfs.test:observer",
        t.url()
    ))
    .unwrap();
    let observer: IscsiDevice =
        NetLab::within(&lab.target(), move || IscsiDevice::open_url(url).unwrap());

    lab.cluster_link(cut + 1, false);
    let pulled = Instant::now();
    // Another node wants the lease: it waits for the cut-off node to be fenced.
    let waiter = {
        let mut client = c.nodes[other].client();
        std::thread::spawn(move || {
            let r = client.request(&Request::Acquire {
                volume: "Volume1".into(),
                resource: "vm-disk".into(),
                exclusive: true,
                timeout_ms: LIMIT.as_millis() as u64,
            });
            (r, Instant::now(), client)
        })
    };
    // Watch the cut-off node: it gives up relying on its lease on its own clock.
    let mut gave_up = None;
    while !waiter.is_finished() {
        if gave_up.is_none() && c.volume_status(cut).is_some_and(|v| v.leases == 0) {
            gave_up = Some(pulled.elapsed());
        }
        let v = c.volume_status(cut).unwrap();
        assert!(
            !v.serving && v.role != "taking over",
            "the cut-off node tried to take over: {v:?}\n{}",
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (r, granted_at, _client) = waiter.join().unwrap();
    assert!(
        matches!(r, Ok(Response::Granted { epoch }) if epoch == first.epoch),
        "{r:?}\n{}",
        c.describe()
    );
    let keys = observer.read_keys().unwrap().keys;
    assert!(
        !keys.contains(&before.key),
        "the lease moved while the holder's key {:#x} is still registered: {keys:x?}",
        before.key
    );
    let gave_up = gave_up.expect("the cut-off node stopped relying on its lease");
    let moved = granted_at - pulled;
    println!(
        "cable pulled: the holder stopped relying on its lease after {:.2} s, the lease moved (holder fenced) after {:.2} s",
        gave_up.as_secs_f64(),
        moved.as_secs_f64()
    );
    assert!(gave_up < moved);
    assert_eq!(
        c.wait_for_coordinator(&[coord], 0, LIMIT).1.epoch,
        first.epoch,
        "the coordinator kept its role"
    );

    // The cable back: the node rejoins with a new incarnation and follows.
    lab.cluster_link(cut + 1, true);
    let healed = Instant::now();
    let deadline = healed + LIMIT;
    loop {
        let v = c.volume_status(cut).unwrap();
        if v.incarnation > before.incarnation && v.coordinator == Some(coord as u8 + 1) {
            println!(
                "cable back: {} follows again in incarnation {} after {:.2} s",
                c.nodes[cut].name,
                v.incarnation,
                healed.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not rejoin: {v:?}\n{}",
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let keys = observer.read_keys().unwrap().keys;
    let now = c.volume_status(cut).unwrap();
    assert!(keys.contains(&now.key), "{keys:x?} lacks {:#x}", now.key);
    // And it is served again: a lease through the coordinator.
    acquire(&c, cut, "after-heal");
}
