//! Driving `vmm` from tests and benchmarks: creating a test-guest VM, reading `vmm
//! list`, waiting for what it shows, finding a migration's incoming VM process, and
//! reading the figures of `vmm migrate`'s report.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{bin, run, run_ok};

/// Fails the test, saying why, on a machine without KVM.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test runs VMs and needs /dev/kvm (load kvm_intel or kvm_amd)"
    );
}

/// Waits (up to a minute) until `vm`'s row in `vmm list` on the node with root `root`
/// satisfies `done`; `what` says what for the failure message.
pub fn wait_row(
    root: &str,
    vm: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = vm_row(root, vm);
        if done(&row) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {row}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The test guest's counter in a `vmm list` row.
pub fn counter(row: &serde_json::Value) -> u64 {
    row["guest"]["counter"].as_u64().unwrap_or(0)
}

/// How many records the test guest has written, in a `vmm list` row.
pub fn records(row: &serde_json::Value) -> u64 {
    row["guest"]["records"].as_u64().unwrap_or(0)
}

/// The pid of a VM process waiting for an incoming migration as the node with root
/// `node_root`, if there is one.
pub fn incoming_process(node_root: &Path) -> Option<i32> {
    let needle = node_root.display().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(" run ") && cmd.contains("--incoming-from") && cmd.contains(&needle))
                .then_some(pid)
        })
}

/// Stops VM `vm` (from the node with root `root`) when dropped, so that a test that
/// fails while it runs leaves nodes that can unmount.
pub struct StopVm<'a> {
    pub vm: &'a str,
    pub root: &'a str,
}

impl Drop for StopVm<'_> {
    fn drop(&mut self) {
        let _ = run(&bin("vmm"), &["stop", self.vm, "--root", self.root]);
    }
}

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

/// Creates VM `vm` as [`create_test_vm`] does and starts it on the node with root
/// `root`; the guard stops it.
pub fn start_test_vm<'a>(
    config: &str,
    root: &'a str,
    vm: &'a str,
    memory: &str,
    dirty: &str,
) -> StopVm<'a> {
    create_test_vm(config, root, vm, memory, dirty);
    let stop = StopVm { vm, root };
    run_ok(
        &bin("vmm"),
        &["start", vm, "--root", root, "--config", config],
    );
    stop
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
    /// How fast memory moved while it moved: the bytes of the pre-copy rounds over the
    /// time they took, from the progress lines ("round N: ... S MiB sent, B MiB/s").
    pub precopy_mib_per_s: f64,
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
            precopy_mib_per_s: precopy_rate(out),
        }
    }
}

/// The pre-copy rounds' bytes over their time (MiB/s), from `vmm migrate`'s progress
/// lines; 0 if none carried a bandwidth.
fn precopy_rate(out: &str) -> f64 {
    let (mut sent_before, mut mib, mut secs) = (0.0, 0.0, 0.0);
    for line in out.lines().filter(|l| l.starts_with("round ")) {
        let sent = number_before(line, " MiB sent");
        let bandwidth = number_before(line, " MiB/s,");
        if bandwidth > 0.0 {
            mib += sent - sent_before;
            secs += (sent - sent_before) / bandwidth;
        }
        sent_before = sent;
    }
    if secs > 0.0 { mib / secs } else { 0.0 }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_and_the_rate_of_the_rounds_are_read_from_the_output() {
        let out = "\
round  1:  64523 pages, dirty    16393 pages/s,  200.0 MiB sent,   200.0 MiB/s, next   88.8 MiB ~487 ms, 1.4 s
round  2:  22744 pages, dirty    16424 pages/s,  300.0 MiB sent,   400.0 MiB/s, next   17.4 MiB ~53 ms, 1.7 s
round  3:    575 pages, dirty        0 pages/s,  302.2 MiB sent,     0.0 MiB/s, next    0.0 MiB ~0 ms, 1.8 s
migrated VM web1 from n1 to n2: downtime 14 ms, total 1768 ms, 3 rounds, 382899691 bytes (93273 pages)";
        let r = MigrationReport::parse(out);
        assert_eq!((r.downtime_ms, r.total_ms, r.rounds), (14.0, 1768.0, 3.0));
        assert_eq!(r.bytes, 382899691.0);
        // 300 MiB in 1 s + 0.25 s.
        assert!((r.precopy_mib_per_s - 240.0).abs() < 1e-9, "{r:?}");
    }
}
