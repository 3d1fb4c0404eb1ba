//! Replays the fuzz corpora (metadata/fuzz/corpus/<target>/*) through the decoders, as
//! CI's short form of the fuzz targets: each input is rejected with an error or decodes
//! to a value that re-encodes to itself; nothing panics.

use std::path::{Path, PathBuf};

use metadata::inode::Inode;
use metadata::region_backend::RegionHeader;
use metadata::superblock::Superblock;

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

macro_rules! replay {
    ($name:ident, $target:literal, $decode:path) => {
        #[test]
        fn $name() {
            let mut accepted = 0;
            for f in corpus($target) {
                let data = std::fs::read(&f).unwrap();
                if let Ok(v) = $decode(&data) {
                    let again = v.encode();
                    let back = $decode(&again).expect("re-encoded value decodes");
                    assert_eq!(back.encode().to_vec(), again.to_vec(), "{}", f.display());
                    accepted += 1;
                }
            }
            println!("{}: {accepted} of the corpus decode", $target);
        }
    };
}

replay!(superblock_corpus, "superblock", Superblock::decode);
replay!(region_header_corpus, "region_header", RegionHeader::decode);
replay!(inode_corpus, "inode", Inode::decode);

/// Writes valid seeds into the corpora (run by hand with CSVFS_WRITE_SEEDS=1).
#[test]
fn seeds() {
    if std::env::var_os("CSVFS_WRITE_SEEDS").is_none() {
        return;
    }
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let l = metadata::layout::Layout::plan(2 << 30, None).unwrap();
    std::fs::write(
        base.join("superblock/valid"),
        l.superblock("Volume1", [1; 16], 1_800_000_000).encode(),
    )
    .unwrap();
    std::fs::write(
        base.join("region_header/valid"),
        RegionHeader {
            sequence: 7,
            len: 1 << 20,
        }
        .encode(),
    )
    .unwrap();
    let i = Inode::new(
        libc::S_IFREG | 0o644,
        0,
        0,
        metadata::Timestamp {
            secs: 1_800_000_000,
            nanos: 5,
        },
    );
    std::fs::write(base.join("inode/valid"), i.encode()).unwrap();
}
