//! Writes a seed input of the `vm_state` fuzz target: the saved state of a test guest
//! that ran for a moment on KVM (needs /dev/kvm).
//!
//! `cargo run -p vmm --example vm_state_seed -- vmm/fuzz/corpus/vm_state/test-guest`

use std::path::PathBuf;
use std::time::Duration;

use vmm::machine::{Machine, state_codec};
use vmm::test_guest::TestGuestParams;
use vmm::vhd::{DiskType, VhdImage};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: vm_state_seed FILE"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let disk = dir.path().join("seed.vhd");
    VhdImage::create_path(&disk, DiskType::Dynamic, 8 << 20).expect("create the disk");
    let vhd = VhdImage::open_path(&disk, false).expect("open the disk");
    let mut m = Machine::new(8 << 20, Box::new(std::io::sink()), vhd).expect("a VM");
    let params = TestGuestParams {
        dirty_bytes_per_s: 1 << 20,
        record_every_ms: 10,
        print_every_ms: 0,
    };
    m.load_test_guest(&params).expect("load the test guest");
    m.start().expect("start");
    std::thread::sleep(Duration::from_millis(100));
    m.pause().expect("pause");
    let bytes = state_codec::encode(&m.save().expect("save"));
    std::fs::create_dir_all(out.parent().expect("a directory"))
        .expect("create the corpus directory");
    std::fs::write(&out, bytes).expect("write the seed");
    println!("wrote {}", out.display());
}
