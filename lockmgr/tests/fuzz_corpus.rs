//! Replays the fuzz corpora (lockmgr/fuzz/corpus/<target>/*) through the decoders, as
//! CI's short form of the fuzz targets: each input is rejected with an error or
//! decodes to a value that re-encodes to itself; nothing panics. Each input is read
//! the way its fuzz target reads it.

use std::path::{Path, PathBuf};

use lockmgr::cluster_region::{CoordinatorRecord, HeartbeatSlot, seal_for_fuzzing};
use lockmgr::control::Request;
use lockmgr::wire::Frame;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

#[test]
fn wire_frame_corpus() {
    let mut accepted = 0;
    for f in corpus("wire_frame") {
        let data = std::fs::read(&f).unwrap();
        if let Ok(frame) = Frame::decode(&data) {
            assert_eq!(frame.encode(), data, "{}", f.display());
            accepted += 1;
        }
    }
    println!("wire_frame: {accepted} of the corpus decode");
    assert!(accepted > 0, "no valid frame in the corpus");
}

#[test]
fn cluster_region_corpus() {
    let mut accepted = 0;
    for f in corpus("cluster_region") {
        let data = std::fs::read(&f).unwrap();
        let Some((which, body)) = data.split_first() else {
            continue;
        };
        for input in [body.to_vec(), seal_for_fuzzing(body)] {
            if which % 2 == 0 {
                if let Ok(Some(r)) = CoordinatorRecord::decode(&input) {
                    assert_eq!(CoordinatorRecord::decode(&r.encode()).unwrap(), Some(r));
                    accepted += 1;
                }
            } else if let Ok(Some(s)) = HeartbeatSlot::decode(&input) {
                assert_eq!(HeartbeatSlot::decode(&s.encode()).unwrap(), Some(s));
                accepted += 1;
            }
        }
    }
    println!("cluster_region: {accepted} of the corpus decode");
    assert!(accepted > 0, "no valid entry in the corpus");
}

#[test]
fn control_request_corpus() {
    let mut accepted = 0;
    for f in corpus("control_request") {
        let data = std::fs::read(&f).unwrap();
        if let Ok(r) = serde_json::from_slice::<Request>(&data) {
            let again = serde_json::to_vec(&r).unwrap();
            assert_eq!(
                serde_json::from_slice::<Request>(&again).unwrap(),
                r,
                "{}",
                f.display()
            );
            accepted += 1;
        }
    }
    println!("control_request: {accepted} of the corpus decode");
    assert!(accepted > 0, "no valid request in the corpus");
}
