//! Driving `vmm` from tests and benchmarks: creating a test-guest VM, reading `vmm
//! list`, and reading the figures of `vmm migrate`'s report.

use crate::{bin, run_ok};

/// Creates VM `name` (the test guest, a 64 MiB disk) on Volume1 of the node with root
/// `root`, with `memory` and a dirty rate of `dirty` (as `vmm create` takes them).
pub fn create_test_vm(config: &str, root: &str, name: &str, memory: &str, dirty: &str) {
    let out = run_ok(
        &bin("vmm"),
        &[
            "create",
            name,
            "--volume",
            "Volume1",
            "--config",
            config,
            "--root",
            root,
            "--memory",
            memory,
            "--disk-size",
            "64M",
            "--dirty-rate",
            dirty,
        ],
    );
    assert!(out.contains(&format!("created VM {name}")), "{out}");
}

/// `vmm list --json` from the node with root `root`: the row of `vm`.
pub fn vm_row(root: &str, vm: &str) -> serde_json::Value {
    let json = run_ok(&bin("vmm"), &["list", "--json", "--root", root]);
    let rows: serde_json::Value = serde_json::from_str(&json).expect("vmm list --json prints JSON");
    rows.as_array()
        .expect("a list")
        .iter()
        .find(|r| r["name"] == vm)
        .unwrap_or_else(|| panic!("{vm} not in vmm list: {json}"))
        .clone()
}

/// The figures of `vmm migrate`'s last line ("migrated VM ... downtime D ms, total T
/// ms, R rounds, B bytes (P pages)").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationReport {
    pub downtime_ms: f64,
    pub total_ms: f64,
    pub rounds: f64,
    pub bytes: f64,
}

impl MigrationReport {
    /// Reads the report out of `vmm migrate`'s output.
    pub fn parse(out: &str) -> MigrationReport {
        let last = out.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("migrated VM "),
            "no migration report in: {out}"
        );
        MigrationReport {
            downtime_ms: number_after(last, "downtime "),
            total_ms: number_after(last, "total "),
            rounds: number_before(last, " rounds"),
            bytes: number_before(last, " bytes"),
        }
    }
}

/// The number after `key` in `line`.
pub fn number_after(line: &str, key: &str) -> f64 {
    let at = line
        .rfind(key)
        .unwrap_or_else(|| panic!("{key:?} in {line}"))
        + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap_or(0.0)
}

/// The number before `unit` in `line`.
fn number_before(line: &str, unit: &str) -> f64 {
    let at = line
        .find(unit)
        .unwrap_or_else(|| panic!("{unit:?} in {line}"));
    let word = line[..at].trim_end().rsplit(' ').next().unwrap_or_default();
    word.trim_end_matches(',')
        .parse()
        .unwrap_or_else(|_| panic!("a number before {unit:?} in {line}"))
}
