//! Replays the fuzz corpus of the metadata service's frames (fs/fuzz/corpus/meta_frame)
//! through the decoders, as CI's short form of the fuzz target: each input is
//! rejected with an error or decodes to a frame that encodes and decodes to itself;
//! nothing panics.

use std::path::Path;

use csvfs::cluster::wire::{MetaRequest, MetaResponse};

#[test]
fn meta_frame_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/meta_frame");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let (mut requests, mut responses) = (0, 0);
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Ok(r) = MetaRequest::decode(&data) {
            assert_eq!(
                MetaRequest::decode(&r.encode()).unwrap(),
                r,
                "{}",
                f.display()
            );
            requests += 1;
        }
        if let Ok(r) = MetaResponse::decode(&data) {
            assert_eq!(
                MetaResponse::decode(&r.encode()).unwrap(),
                r,
                "{}",
                f.display()
            );
            responses += 1;
        }
    }
    println!(
        "meta_frame: {} inputs, {requests} decode as requests, {responses} as responses",
        files.len()
    );
    assert!(
        requests > 0 && responses > 0,
        "the corpus lacks valid frames"
    );
}
