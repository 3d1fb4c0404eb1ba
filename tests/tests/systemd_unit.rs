//! The systemd unit of a cluster node (`tools/systemd/csvfs-node@.service`) passes
//! `systemd-analyze verify`, as `tools/install` installs it (its `ExecStart` pointing at
//! the csvfs binary built with this test), for an instance named like a node.

use std::process::Command;

use csvfs_tests::{bin, output_text};

#[test]
fn the_node_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tools/systemd/csvfs-node@.service"),
    )
    .expect("tools/systemd/csvfs-node@.service");
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/csvfs node --name %i"),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let installed = unit.replace("/usr/local/sbin/csvfs", &bin("csvfs").display().to_string());
    std::fs::write(dir.path().join("csvfs-node@.service"), installed).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("csvfs-node@n1.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed for this test");
    let said = output_text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {said}"
    );
    assert!(
        !said.contains("csvfs-node"),
        "systemd-analyze verify has something to say about the unit: {said}"
    );
}
