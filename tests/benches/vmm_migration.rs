//! Benchmark of moving a running VM between two `csvfs node`s on 127.0.0.1 that share
//! a tgtd LUN: live migration (`vmm migrate`, a 300 ms downtime limit) of the
//! bundled test guest at several dirty rates, ROUNDS moves each, alternating between
//! the nodes, and quick migration (`vmm save`, then `vmm restore --on` the other node).
//! Prints a Markdown table of medians for docs/benchmarks.md, and beside it the
//! reference for how fast memory moves: bulk data on the cluster's own QUIC transport
//! ([`csvfs_tests::quic_bulk`]), measured 3 times before the migrations and 3 times
//! after with no VM running, and per dirty rate 3 times before and 3 times after its
//! migrations while its VM runs (the test guest polls: its vCPU takes a whole core, as
//! it does while its memory moves, and this machine has two).
//!
//! Run it with tools/bench-vmm (it builds the binaries first). ROUNDS (default 5),
//! MEMORY_MB (default 256), RATES_MB (dirty MiB/s, default "0,16,64"), DOWNTIME_MS
//! (the live migrations' limit, default 300).

use std::path::Path;
use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::quic_bulk::bulk_mib_per_s;
use csvfs_tests::vmm::{MigrationReport, create_test_vm, number_after, vm_row};
use csvfs_tests::{Scratch, bin, env_number, median, run_ok};

const LIMIT: Duration = Duration::from_secs(60);

/// Waits until `vm` runs on `node` and its guest has written `records` more records.
fn wait_running(root: &str, vm: &str, node: &str, records: u64) -> u64 {
    let deadline = Instant::now() + LIMIT;
    loop {
        let row = vm_row(root, vm);
        let have = row["guest"]["records"].as_u64().unwrap_or(0);
        if row["node"] == node && row["state"] == "running" && have >= records {
            return have;
        }
        assert!(
            Instant::now() < deadline,
            "{vm} not running on {node}: {row}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let rounds = env_number("ROUNDS", 5);
    let limit = env_number("DOWNTIME_MS", 300).to_string();
    let memory = env_number("MEMORY_MB", 256);
    let rates: Vec<u64> = std::env::var("RATES_MB")
        .unwrap_or_else(|_| "0,16,64".into())
        .split(',')
        .map(|r| {
            r.trim()
                .parse()
                .expect("RATES_MB: numbers separated by commas")
        })
        .collect();
    assert!(
        Path::new("/dev/kvm").exists(),
        "the benchmark runs VMs: it needs /dev/kvm"
    );
    let s = Scratch::new();
    // Room for every VM's disk and a saved memory image at once.
    let (_tgtd, c) = Cluster::on_tgtd(&s, 2, "Volume1", (memory << 20) * 2 + (1 << 30));
    let (coord, _) = c.wait_for_coordinator(&[0, 1], 0, LIMIT);
    c.wait_for_followers(&[0, 1], coord, LIMIT);
    for n in &c.nodes {
        n.wait_mounted("Volume1", LIMIT);
    }
    let config = c.config.display().to_string();
    let roots = [
        c.nodes[0].root.display().to_string(),
        c.nodes[1].root.display().to_string(),
    ];
    let vmm = bin("vmm");
    let mut bulk: Vec<f64> = (0..3)
        .map(|_| bulk_mib_per_s(&c.config, "n1", "n2", 512))
        .collect();
    let mut rows = Vec::new();
    let mut rates_moved = Vec::new();
    for rate in rates {
        let vm = format!("bench{rate}");
        let mem = format!("{memory}M");
        let dirty = format!("{rate}M");
        create_test_vm(&config, &roots[0], &vm, &mem, &dirty);
        run_ok(
            &vmm,
            &["start", &vm, "--root", &roots[0], "--config", &config],
        );
        let mut records = wait_running(&roots[0], &vm, "n1", 3);
        let mut loaded: Vec<f64> = (0..3)
            .map(|_| bulk_mib_per_s(&c.config, "n1", "n2", 512))
            .collect();
        let (mut down, mut total, mut rnds, mut mib, mut speed, mut precopy) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut on = 0;
        for _ in 0..rounds {
            let to = 1 - on;
            let out = run_ok(
                &vmm,
                &[
                    "migrate",
                    &vm,
                    "--to",
                    &format!("n{}", to + 1),
                    "--root",
                    &roots[on],
                    "--config",
                    &config,
                    "--downtime-ms",
                    &limit,
                ],
            );
            let r = MigrationReport::parse(&out);
            down.push(r.downtime_ms);
            total.push(r.total_ms);
            rnds.push(r.rounds);
            mib.push(r.bytes / (1 << 20) as f64);
            speed.push(r.bytes / (1 << 20) as f64 / (r.total_ms / 1000.0));
            precopy.push(r.precopy_mib_per_s);
            on = to;
            records = wait_running(&roots[0], &vm, &format!("n{}", on + 1), records + 3);
        }
        // Quick migration: save, restore on the other node.
        let mut quick = Vec::new();
        for _ in 0..rounds.min(3) {
            let to = 1 - on;
            run_ok(
                &vmm,
                &["save", &vm, "--root", &roots[on], "--config", &config],
            );
            let out = run_ok(
                &vmm,
                &[
                    "restore",
                    &vm,
                    "--on",
                    &format!("n{}", to + 1),
                    "--root",
                    &roots[on],
                    "--config",
                    &config,
                ],
            );
            quick.push(number_after(&out, "downtime "));
            on = to;
            records = wait_running(&roots[0], &vm, &format!("n{}", on + 1), records + 3);
        }
        loaded.extend((0..3).map(|_| bulk_mib_per_s(&c.config, "n2", "n1", 512)));
        run_ok(
            &vmm,
            &["stop", &vm, "--root", &roots[0], "--config", &config],
        );
        let moved = median(speed);
        let moving = median(precopy);
        rates_moved.push((rate, moved, moving, loaded));
        rows.push(format!(
            "| {rate} MiB/s | {:.0} ms | {:.0} ms | {:.0} | {:.1} | {moved:.0} | {moving:.0} | {:.0} ms |",
            median(down),
            median(total),
            median(rnds),
            median(mib),
            median(quick)
        ));
    }
    bulk.extend((0..3).map(|_| bulk_mib_per_s(&c.config, "n2", "n1", 512)));
    let reference = median(bulk.clone());
    println!(
        "| dirty rate | live: downtime | live: total | live: rounds | live: MiB sent | live: MiB/s (sent / total) | live: MiB/s of the rounds | quick: downtime |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!();
    println!(
        "bulk on the cluster's QUIC transport (512 MiB, 1 MiB frames, one stream): median {reference:.0} MiB/s of {bulk:.0?}"
    );
    for (rate, moved, moving, loaded) in rates_moved {
        let beside = median(loaded.clone());
        println!(
            "live migration at {rate} MiB/s dirtied: memory moved at {moving:.0} MiB/s during the pre-copy rounds = {:.2} of the bulk reference ({moved:.0} MiB/s = {:.2} over the whole migration, setup and switch-over included); bulk beside the running VM: median {beside:.0} MiB/s of {loaded:.0?}, the rounds moved {:.2} of it",
            moving / reference,
            moved / reference,
            moving / beside
        );
    }
    drop(c);
}
