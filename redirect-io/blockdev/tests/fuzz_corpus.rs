//! Replays the fuzz corpora (redirect-io/blockdev/fuzz/corpus/<target>/*) through the
//! decoders, as CI's short form of the fuzz targets: each input is rejected with an
//! error or decodes to a value that re-encodes to itself; nothing panics.
//!
//! A new target is one `replay!` line: a test name, the corpus directory, and a function
//! from the input bytes to a `Result` (whose value has `encode()`, unless the line ends
//! with `decode_only`). The function reads an input the way the fuzz target does.

use std::path::{Path, PathBuf};

use blockdev::iscsi::fuzz_inputs;
use blockdev::{Nexus, PrOut, PrState, PrStateError, ReservationType};

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
    ($name:ident, $target:literal, $decode:expr) => {
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
    ($name:ident, $target:literal, $decode:expr, decode_only) => {
        #[test]
        fn $name() {
            let mut accepted = 0;
            for f in corpus($target) {
                let data = std::fs::read(&f).unwrap();
                if $decode(&data).is_ok() {
                    accepted += 1;
                }
            }
            println!("{}: {accepted} of the corpus decode", $target);
        }
    };
}

replay!(pr_state_corpus, "pr_state", pr_state_input);
replay!(
    iscsi_pdu_corpus,
    "iscsi_pdu",
    accepted(fuzz_inputs::pdu),
    decode_only
);
replay!(
    iscsi_text_corpus,
    "iscsi_text",
    accepted(fuzz_inputs::text),
    decode_only
);
replay!(
    iscsi_sense_corpus,
    "iscsi_sense",
    accepted(fuzz_inputs::sense),
    decode_only
);
replay!(
    iscsi_scsi_data_corpus,
    "iscsi_scsi_data",
    accepted(fuzz_inputs::scsi_data),
    decode_only
);

/// A shared fuzz input function as a decoder for `replay!`.
fn accepted(f: fn(&[u8]) -> bool) -> impl Fn(&[u8]) -> Result<(), ()> {
    move |d| if f(d) { Ok(()) } else { Err(()) }
}

/// How fuzz/fuzz_targets/pr_state.rs reads an input: as it is when it starts with the
/// magic, else as a flags byte and a body that get a correct header and checksum.
fn pr_state_input(data: &[u8]) -> Result<PrState, PrStateError> {
    if data.starts_with(&PrState::MAGIC) {
        return PrState::decode(data);
    }
    let (flags, body) = data.split_first().map_or((0, data), |(f, b)| (*f, b));
    PrState::decode(&seal(u16::from(flags), body))
}

fn seal(flags: u16, body: &[u8]) -> Vec<u8> {
    let mut sealed = PrState::MAGIC.to_vec();
    sealed.extend_from_slice(&PrState::VERSION.to_le_bytes());
    sealed.extend_from_slice(&flags.to_le_bytes());
    sealed.extend_from_slice(&(body.len() as u32).to_le_bytes());
    sealed.extend_from_slice(body);
    let sum = blake3::hash(&sealed);
    sealed.extend_from_slice(sum.as_bytes());
    sealed
}

/// Writes valid seeds into the corpora (run by hand with CSVFS_WRITE_SEEDS=1).
#[test]
fn seeds() {
    if std::env::var_os("CSVFS_WRITE_SEEDS").is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/pr_state");
    let a = Nexus::new("iqn.2026-01.org.example:node-a", 0x1111);
    let b = Nexus::new("iqn.2026-01.org.example:node-b", 0x2222);
    let c = Nexus::new("file:host:42", 7);
    let reg = |s: &mut PrState, n: &Nexus, key| {
        s.apply(
            n,
            &PrOut::Register {
                key: 0,
                new_key: key,
            },
        )
        .unwrap();
    };

    let empty = PrState::default();

    let mut reserved = PrState::default();
    reg(&mut reserved, &a, 0xA);
    reg(&mut reserved, &b, 0xB);
    reserved
        .apply(
            &a,
            &PrOut::Reserve {
                key: 0xA,
                kind: ReservationType::WriteExclusiveRegistrantsOnly,
            },
        )
        .unwrap();

    let mut all = PrState::new(true);
    for (n, key) in [(&a, 0xA), (&b, 0xB), (&c, 0xC)] {
        reg(&mut all, n, key);
    }
    all.apply(
        &c,
        &PrOut::Reserve {
            key: 0xC,
            kind: ReservationType::WriteExclusiveAllRegistrants,
        },
    )
    .unwrap();

    let mut moved = reserved.clone();
    moved
        .apply(
            &a,
            &PrOut::RegisterAndMove {
                key: 0xA,
                new_key: 0xD,
                to_initiator: "iqn.z".into(),
                unregister: true,
            },
        )
        .unwrap();

    for (name, s) in [
        ("empty", &empty),
        ("reserved", &reserved),
        ("all", &all),
        ("moved", &moved),
    ] {
        let encoded = s.encode();
        std::fs::write(dir.join(format!("valid-{name}")), &encoded).unwrap();
        // The same state as the fuzz target's sealed form: flags byte, then the body.
        let mut bare = vec![u8::from(s.accepts_preempt_and_abort())];
        bare.extend_from_slice(&encoded[16..encoded.len() - 32]);
        std::fs::write(dir.join(format!("body-{name}")), bare).unwrap();
    }
}
