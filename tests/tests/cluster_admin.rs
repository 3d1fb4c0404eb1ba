//! The administration side of a running cluster, with real `csvfs node` daemons on an
//! image-file LUN: `csvctl volume status` shows the coordinator, every node's role and
//! its disk heartbeat; mkfs `--force` and fsck refuse the volume while its heartbeats
//! advance and accept it once the nodes stop; a node whose cluster.toml differs from
//! its peers' refuses to join.

use std::process::Command;
use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::{Scratch, bin, output_text, run, run_ok};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn status_in_use_checks_and_a_differing_configuration() {
    let s = Scratch::new();
    let lun = s.path("lun.img");
    let lun_s = lun.display().to_string();
    let mut c = Cluster::start(&s.path("cluster"), 2, "Volume1", &lun_s);
    let (coord, status) = c.wait_for_coordinator(&[0, 1], 0, LIMIT);
    c.wait_for_followers(&[0, 1], coord, LIMIT);
    let config = c.config.display().to_string();
    let roots: Vec<String> = c
        .nodes
        .iter()
        .map(|n| n.root.display().to_string())
        .collect();

    // Status, as JSON and as a table.
    let mut args = vec!["volume", "status", "--config", &config, "--json"];
    for r in &roots {
        args.extend_from_slice(&["--root", r]);
    }
    let json = run_ok(&bin("csvctl"), &args);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let vol = &v[0];
    assert_eq!(vol["label"], "Volume1", "{json}");
    assert_eq!(vol["coordinator"], c.nodes[coord].name.as_str(), "{json}");
    assert_eq!(vol["epoch"], status.epoch, "{json}");
    for n in vol["nodes"].as_array().unwrap() {
        assert!(n["role"].is_string(), "{json}");
        assert!(n["heartbeat"]["counter"].as_u64().unwrap() > 0, "{json}");
        assert!(n["heartbeat_age_ms"].as_u64().unwrap() < 5_000, "{json}");
    }
    let table = run_ok(&bin("csvctl"), &args[..args.len() - roots.len() * 2 - 1]);
    assert!(table.contains("no serving coordinator") || table.contains("not reachable"));
    args.retain(|a| *a != "--json");
    let table = run_ok(&bin("csvctl"), &args);
    assert!(
        table.contains(&format!(
            "coordinator {}, epoch {}",
            c.nodes[coord].name, status.epoch
        )),
        "{table}"
    );
    assert!(table.contains("disk heartbeat #"), "{table}");

    // In use: fsck and mkfs --force refuse.
    for (prog, a) in [
        ("fsck.csvfs", vec![lun_s.as_str()]),
        ("mkfs.csvfs", vec!["--force", "-L", "Other", lun_s.as_str()]),
    ] {
        let out = run(&bin(prog), &a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{prog} accepted a volume in use");
        assert!(
            err.contains("is in use") && err.contains("heartbeats"),
            "{prog}: {err}"
        );
    }

    // A node with another configuration (a different drain interval) refuses to join.
    let other = s.path("cluster/other.toml");
    let text = std::fs::read_to_string(&c.config).unwrap();
    let certs = s.path("cluster/certs").display().to_string();
    let text = text
        .replace("drain_ms = 300", "drain_ms = 400")
        .replace("cert_dir = \"certs\"", &format!("cert_dir = {certs:?}"));
    std::fs::write(&other, text).unwrap();
    let mismatched = if coord == 0 { 1 } else { 0 };
    c.nodes[mismatched].stop();
    let started = Instant::now();
    let out = Command::new(bin("csvfs"))
        .args(["node", "--config"])
        .arg(&other)
        .args(["--name", &c.nodes[mismatched].name, "--root"])
        .arg(s.path("mismatched-root"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a node with another configuration joined"
    );
    assert!(
        err.contains("refusing to join") && err.contains("configuration differs"),
        "{err}"
    );
    assert!(started.elapsed() < LIMIT);
    // The running node carried on.
    assert!(c.volume_status(coord).is_some_and(|v| v.serving));

    // Stopped: the heartbeats stand still, fsck accepts the volume.
    for n in &mut c.nodes {
        n.stop();
    }
    let out = run(&bin("fsck.csvfs"), &[&lun_s]);
    assert!(out.status.success(), "{}", output_text(&out));
}
