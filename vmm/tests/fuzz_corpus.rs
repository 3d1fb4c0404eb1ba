//! Replays the corpus of the `vhd_open` fuzz target (vmm/fuzz/corpus/vhd_open) as
//! CI's short form of it: every input is refused with an error or opens, reads, takes
//! a write and reopens with it; nothing panics.

use std::path::Path;

use vmm::vhd::exercise::open_and_exercise;

#[test]
fn vhd_open_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/vhd_open");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut opened = 0;
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if open_and_exercise(&data).is_ok() {
            opened += 1;
        }
    }
    println!("vhd_open: {} inputs, {opened} open as VHDs", files.len());
    assert!(opened > 0, "the corpus lacks valid VHDs");
}
