//! Replays the corpora of the fuzz targets (vmm/fuzz/corpus/*) as CI's short form of
//! them: every VHD input is refused with an error or opens, reads, takes a write and
//! reopens with it; every saved-state or migration-frame input is refused or
//! round-trips; nothing panics.

use std::path::Path;

use vmm::machine::state_codec;
use vmm::migration::wire;
use vmm::vhd::exercise::open_and_exercise;

/// Runs `check` over every input of the corpus `name`; returns (inputs, accepted).
fn replay<E>(name: &str, check: impl Fn(&[u8]) -> Result<(), E>) -> (usize, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let accepted = files
        .iter()
        .filter(|f| check(&std::fs::read(f).unwrap()).is_ok())
        .count();
    println!("{name}: {} inputs, {accepted} accepted", files.len());
    (files.len(), accepted)
}

#[test]
fn vhd_open_corpus() {
    let (_, opened) = replay("vhd_open", open_and_exercise);
    assert!(opened > 0, "the corpus lacks valid VHDs");
}

#[test]
fn vm_state_corpus() {
    let (_, decoded) = replay("vm_state", state_codec::check_untrusted);
    assert!(decoded > 0, "the corpus lacks valid states");
}

#[test]
fn migration_frame_corpus() {
    let (_, decoded) = replay("migration_frame", wire::check_untrusted);
    assert!(decoded > 0, "the corpus lacks valid frames");
}
