//! Writes the seed inputs of the `migration_frame` fuzz target: one frame of each
//! message type.
//!
//! `cargo run -p vmm --example migration_seed_corpus -- vmm/fuzz/corpus/migration_frame`

use std::path::PathBuf;

use vmm::migration::wire::{Message, PAGE};

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: migration_seed_corpus DIR"),
    );
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let mut page = Box::new([0u8; PAGE]);
    page[..8].copy_from_slice(b"CSVREC01");
    let seeds = [
        (
            "hello",
            Message::Hello {
                vm: "web1".into(),
                memory_bytes: 64 << 20,
                downtime_ms: 300,
            },
        ),
        ("pages", Message::Pages(vec![(1, Some(page)), (2, None)])),
        ("state", Message::State(vec![0x43, 0x53, 0x56])),
        ("verify", Message::Verify([0x5a; 32])),
        ("ready", Message::Ready),
        ("lease-released", Message::LeaseReleased),
        ("running", Message::Running),
        (
            "failed",
            Message::Failed("the disk could not be opened".into()),
        ),
    ];
    for (name, m) in seeds {
        std::fs::write(dir.join(name), m.encode()).expect("write a seed");
    }
    println!("seeds written to {}", dir.display());
}
