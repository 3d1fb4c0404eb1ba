//! Replays the corpus of the fuzz target block_frame (redirect-io/fuzz/corpus) as CI's
//! short form of it: every frame is refused with an error or decodes to a value that
//! re-encodes to the same bytes; nothing panics.

use std::path::Path;

#[test]
fn block_frame_corpus_round_trips_or_is_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/block_frame");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let accepted: usize = files
        .iter()
        .map(|f| redirect_io::wire::check_round_trip(&std::fs::read(f).unwrap()))
        .sum();
    println!(
        "block_frame: {} inputs, {accepted} readings accepted",
        files.len()
    );
    assert!(accepted > 0, "no input of the corpus decodes");
}
