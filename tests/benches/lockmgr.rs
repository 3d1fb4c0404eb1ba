//! Benchmark of the lock manager with real processes: three `csvfs node` daemons on
//! 127.0.0.1 (loopback QUIC) sharing a tgtd LUN.
//!
//! - uncontended acquire + release of an exclusive lease, per second, from the
//!   coordinator's node and from a follower (through the control socket, which adds
//!   a Unix socket round trip and JSON to each acquire);
//! - recall latency: a lease held on one follower, asked for by another: the time
//!   from the request to the grant (recall, release, grant);
//! - failover: kill -9 of the coordinator's daemon to another node serving (the
//!   target is under 5 s); the killed node is restarted between rounds.
//!
//! Run it with tools/bench-lockmgr (it builds the binaries first). ROUNDS (default 5)
//! failovers, OPS (default 2000) acquire + release pairs, RECALLS (default 50).

use std::time::{Duration, Instant};

use csvfs_tests::Scratch;
use csvfs_tests::cluster::Cluster;
use csvfs_tests::env_number;
use csvfs_tests::median;
use lockmgr::control::{Client, Request, Response};

const LIMIT: Duration = Duration::from_secs(30);

fn acquire(client: &mut Client, resource: &str) {
    let r = client.request(&Request::Acquire {
        volume: "Volume1".into(),
        resource: resource.into(),
        exclusive: true,
        timeout_ms: LIMIT.as_millis() as u64,
    });
    assert!(matches!(r, Ok(Response::Granted { .. })), "{r:?}");
}

fn release(client: &mut Client, resource: &str) {
    client
        .request(&Request::Release {
            volume: "Volume1".into(),
            resource: resource.into(),
        })
        .unwrap();
}

fn acquire_release_rate(c: &Cluster, node: usize, ops: u64) -> f64 {
    let mut client = c.nodes[node].client();
    let name = format!("uncontended-{node}");
    let start = Instant::now();
    for _ in 0..ops {
        acquire(&mut client, &name);
        release(&mut client, &name);
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rounds = env_number("ROUNDS", 5) as usize;
    let ops = env_number("OPS", 2000);
    let recalls = env_number("RECALLS", 50) as usize;
    let s = Scratch::new();
    let (_t, mut c) = Cluster::on_tgtd(&s, 3, "Volume1", 256 << 20);
    let (coord, mut status) = c.wait_for_coordinator(&[0, 1, 2], 0, LIMIT);
    // Let every node settle as a follower.
    std::thread::sleep(Duration::from_secs(2));
    let followers: Vec<usize> = (0..3).filter(|&i| i != coord).collect();

    let local = acquire_release_rate(&c, coord, ops);
    let remote = acquire_release_rate(&c, followers[0], ops);

    let mut recall_ms = Vec::new();
    let mut holder = c.nodes[followers[0]].client();
    let mut asker = c.nodes[followers[1]].client();
    acquire(&mut holder, "contended");
    for _ in 0..recalls {
        let start = Instant::now();
        acquire(&mut asker, "contended");
        recall_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        std::mem::swap(&mut holder, &mut asker);
    }
    drop((holder, asker));

    let mut failover_s = Vec::new();
    let mut current = coord;
    for _ in 0..rounds {
        let rest: Vec<usize> = (0..3).filter(|&i| i != current).collect();
        let killed = Instant::now();
        c.nodes[current].kill9();
        let (new, next) = c.wait_for_coordinator(&rest, status.epoch, LIMIT);
        failover_s.push(killed.elapsed().as_secs_f64());
        c.restart(current);
        c.wait_for_followers(&[current], new, LIMIT);
        std::thread::sleep(Duration::from_secs(1));
        current = new;
        status = next;
    }

    println!("| measure | median | runs |");
    println!("|---|---|---|");
    println!(
        "| uncontended acquire + release, on the coordinator's node | {local:.0}/s | {ops} pairs |"
    );
    println!("| uncontended acquire + release, from a follower | {remote:.0}/s | {ops} pairs |");
    println!(
        "| recall latency (held on one follower, asked by another) | {:.1} ms | {recalls} |",
        median(recall_ms)
    );
    println!(
        "| kill -9 of the coordinator to a new one serving | {:.2} s (all: {}) | {rounds} |",
        median(failover_s.clone()),
        failover_s
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
