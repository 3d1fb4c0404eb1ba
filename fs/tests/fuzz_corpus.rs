//! Replays the fuzz corpus of the metadata service's and lease recalls' frames
//! (fs/fuzz/corpus/meta_frame)
//! through the decoders, as CI's short form of the fuzz target: each input is
//! rejected with an error or decodes to a frame that encodes and decodes to itself;
//! nothing panics.

use std::path::Path;

use csvfs::cluster::wire::{MetaRequest, MetaResponse, RecallDone, RecallRequest};

#[test]
fn meta_frame_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/meta_frame");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let (mut requests, mut responses, mut recalls) = (0, 0, 0);
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let name = f.display().to_string();
        requests += round_trips(&data, &name, MetaRequest::decode, MetaRequest::encode);
        responses += round_trips(&data, &name, MetaResponse::decode, MetaResponse::encode);
        recalls += round_trips(&data, &name, RecallRequest::decode, RecallRequest::encode);
        round_trips(&data, &name, RecallDone::decode, RecallDone::encode);
    }
    println!(
        "meta_frame: {} inputs, {requests} decode as requests, {responses} as responses, {recalls} as recalls",
        files.len()
    );
    assert!(
        requests > 0 && responses > 0 && recalls > 0,
        "the corpus lacks valid frames"
    );
}

/// 1 when `data` decodes, after checking that what it decodes to encodes and decodes
/// to itself; 0 when it is refused.
fn round_trips<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    data: &[u8],
    name: &str,
    decode: fn(&[u8]) -> Result<T, E>,
    encode: fn(&T) -> Vec<u8>,
) -> usize {
    match decode(data) {
        Ok(v) => {
            assert_eq!(decode(&encode(&v)).unwrap(), v, "{name}");
            1
        }
        Err(_) => 0,
    }
}
