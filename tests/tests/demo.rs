//! The README's first command, `tools/demo`, run as a user runs it (with the binaries
//! this test was built with): two nodes share Volume1 on an image file, write and read
//! each other's files, and a running VM moves from n1 to n2. It must finish, say what
//! it did, and leave nothing mounted or running; run twice, it works twice.

use std::path::Path;
use std::process::Command;

use csvfs_tests::vmm::require_kvm;
use csvfs_tests::{bin_dir, output_text, require_root_and_fuse};

const WORK: &str = "/var/tmp/csvfs-demo";

fn run_demo() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/demo");
    let out = Command::new(&script)
        .env("CSVFS_BIN_DIR", bin_dir())
        .output()
        .expect("run tools/demo");
    let text = output_text(&out);
    assert!(out.status.success(), "tools/demo failed:\n{text}");
    text
}

/// What of the demo is still mounted or running.
fn leftovers() -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut left: Vec<String> = mounts
        .lines()
        .filter(|l| l.contains(WORK))
        .map(String::from)
        .collect();
    let ps = Command::new("pgrep")
        .args(["-af", WORK])
        .output()
        .expect("pgrep");
    left.extend(
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .map(String::from),
    );
    left
}

#[test]
fn the_demo_shares_a_volume_between_two_nodes_and_moves_a_running_vm() {
    require_root_and_fuse();
    require_kvm();
    for round in 1..=2 {
        let out = run_demo();
        println!("--- tools/demo, run {round}:\n{out}");
        for expected in [
            "n2 reads: hello from n1",
            "n1 reads: hello from n2",
            "n2 read n1's file and n1 read n2's: byte for byte what was written",
            "started VM demo-vm on node n1",
            "migrated VM demo-vm from n1 to n2: downtime ",
            "coordinator, epoch",
            "demo-vm          Volume1      running    n2",
            "stopped VM demo-vm on node n2",
            "demo finished",
        ] {
            assert!(out.contains(expected), "no {expected:?} in:\n{out}");
        }
        let left = leftovers();
        assert!(left.is_empty(), "the demo left behind: {left:#?}");
    }
}
