//! Live migration with the network cut during the transfer: two nodes and the tgtd
//! target, each in a network namespace of its own ([`NetLab`]). The VM runs on the
//! coordinator, in its namespace; `vmm migrate` runs in the destination's namespace
//! (where it starts the incoming VM process, as an operator on that host would). While
//! the pre-copy rounds go on, the destination's cluster cable is pulled: the move
//! fails with a message saying so, the VM keeps running on the source, `vmm list` says
//! it runs there, the guest goes on writing its records, and the destination's
//! incoming VM process is gone.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::netns::NetLab;
use csvfs_tests::vmm::{StopVm, create_test_vm, incoming_process, records, require_kvm, wait_row};
use csvfs_tests::{Scratch, bin, require_root_and_fuse};

const LIMIT: Duration = Duration::from_secs(60);

/// `vmm ARGS` run inside network namespace `ns`.
fn vmm_in(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(bin("vmm"))
        .args(args);
    c
}

#[test]
fn a_migration_whose_network_is_cut_leaves_the_vm_running_on_the_source() {
    require_root_and_fuse();
    require_kvm();
    let lab = NetLab::new(2);
    let s = Scratch::new();
    let (_t, c) = Cluster::in_netlab(&lab, 2, &s, "Volume1", "");
    let (src, _) = c.wait_for_coordinator(&[0, 1], 0, LIMIT);
    let dst = 1 - src;
    c.wait_for_followers(&[dst], src, LIMIT);
    c.nodes[src].wait_mounted("Volume1", LIMIT);
    c.nodes[dst].wait_mounted("Volume1", LIMIT);
    let config = c.config.display().to_string();
    let root = c.nodes[src].root.display().to_string();
    let (src_name, dst_name) = (c.nodes[src].name.clone(), c.nodes[dst].name.clone());
    // A guest that always dirties memory, and a downtime limit it never fits: the
    // source stays in pre-copy rounds until it gives up (30 rounds), so the cut comes
    // while memory moves.
    create_test_vm(&config, &root, "web1", "128M", "32M");
    let _stop = StopVm {
        vm: "web1",
        root: &root,
    };
    let out = vmm_in(
        &lab.node(src + 1),
        &["start", "web1", "--root", &root, "--config", &config],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "vmm start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = wait_row(&root, "web1", "the guest to write records", |r| {
        records(r) >= 3
    });
    assert_eq!(before["node"], src_name.as_str(), "{before}");

    let mut migrate = vmm_in(
        &lab.node(dst + 1),
        &[
            "migrate",
            "web1",
            "--to",
            &dst_name,
            "--root",
            &root,
            "--config",
            &config,
            "--downtime-ms",
            "1",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(migrate.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.starts_with("round  1:"), "no first round: {first:?}");
    // Memory is moving: the destination's cable goes.
    lab.cluster_link(dst + 1, false);
    let cut_at = Instant::now();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let failed = migrate.wait_with_output().unwrap();
    let took = cut_at.elapsed();
    let err = String::from_utf8_lossy(&failed.stderr);
    println!(
        "{first}\n{}\nvmm migrate ended {took:?} after the cut: {}",
        rest.join("\n"),
        err.trim()
    );
    assert!(
        !failed.status.success(),
        "the move succeeded with its network cut"
    );
    assert!(
        err.contains(&format!("migration of VM web1 to {dst_name} failed"))
            && err
                .trim_end()
                .ends_with(&format!("; it runs on {src_name}")),
        "{err}"
    );
    assert!(took < LIMIT, "the move took {took:?} to fail");

    // The VM runs on the source, and vmm list says so; the guest goes on.
    let after = wait_row(&root, "web1", "the guest to go on on the source", |r| {
        r["node"] == src_name.as_str()
            && r["state"] == "running"
            && records(r) >= records(&before) + 3
    });
    println!("after the failed move: {after}");
    // Nothing is left half-done on the destination: its incoming VM process is gone.
    let deadline = Instant::now() + LIMIT;
    while let Some(pid) = incoming_process(&c.nodes[dst].root) {
        assert!(
            Instant::now() < deadline,
            "the destination's incoming VM process {pid} is still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.cluster_link(dst + 1, true);
}
