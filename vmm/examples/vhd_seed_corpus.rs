//! Writes the seed inputs of the `vhd_open` fuzz target into the directory given
//! (vmm/fuzz/corpus/vhd_open): small fixed and dynamic VHDs, with blocks allocated,
//! a partial sector bitmap, and small block sizes, so that fuzzing starts from files
//! that open.
//!
//! `cargo run -p vmm --example vhd_seed_corpus -- vmm/fuzz/corpus/vhd_open`

use std::path::PathBuf;

use vmm::vhd::{DiskType, MemBacking, VhdImage};

/// A seed: file name, kind, disk size, block size (0: the default), and sectors
/// written (offset, byte).
type Seed = (&'static str, DiskType, u64, u32, &'static [(u64, u8)]);

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: vhd_seed_corpus DIR"));
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let cap = 64 << 20;
    let seeds: [Seed; 5] = [
        (
            "fixed-8k",
            DiskType::Fixed,
            8 << 10,
            0,
            &[(0, 1), (7 << 9, 2)],
        ),
        (
            "dynamic-empty-64k-4k",
            DiskType::Dynamic,
            64 << 10,
            4096,
            &[],
        ),
        (
            "dynamic-64k-4k",
            DiskType::Dynamic,
            64 << 10,
            4096,
            &[(0, 3), (40 << 10, 4)],
        ),
        (
            "dynamic-6k-512",
            DiskType::Dynamic,
            6 << 10,
            512,
            &[(1 << 10, 5), (5 << 10, 6)],
        ),
        (
            "dynamic-odd-size",
            DiskType::Dynamic,
            (32 << 10) + 1536,
            8192,
            &[(32 << 10, 7)],
        ),
    ];
    for (name, kind, size, block, writes) in seeds {
        let block = if block == 0 { 2 << 20 } else { block };
        let vhd =
            VhdImage::create_with_block_size(MemBacking::new(Vec::new(), cap), kind, size, block)
                .expect("create a seed");
        for &(at, byte) in writes {
            vhd.write_at(&[byte; 512], at).expect("write a seed");
        }
        let bytes = vhd.backing().to_vec();
        std::fs::write(dir.join(name), &bytes).expect("write a seed file");
        if name == "dynamic-64k-4k" {
            // The same with block 0's bitmap marking only its first sector present.
            let mut partial = bytes.clone();
            let bat = 512 + 1024;
            let sector = u32::from_be_bytes(partial[bat..bat + 4].try_into().unwrap()) as usize;
            partial[sector * 512..sector * 512 + 512].fill(0);
            partial[sector * 512] = 0x80;
            std::fs::write(dir.join("dynamic-64k-4k-partial-bitmap"), partial)
                .expect("write a seed file");
        }
    }
    println!("seeds written to {}", dir.display());
}
