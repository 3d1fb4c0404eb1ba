//! VHD images in memory: what is written reads back, across reopening, for fixed and
//! dynamic disks and any pattern of writes; and a malformed image (bad checksum, BAT
//! entry out of range, truncated file, ...) is refused at open with an error that says
//! what is wrong.

use proptest::prelude::*;
use vmm::vhd::{DiskType, MemBacking, SECTOR, VhdError, VhdImage};

const MIB: u64 = 1 << 20;
const CAP: usize = 64 << 20;

fn new_disk(kind: DiskType, size: u64) -> VhdImage<MemBacking> {
    VhdImage::create(MemBacking::new(Vec::new(), CAP), kind, size).expect("create")
}

fn reopen(vhd: &VhdImage<MemBacking>) -> VhdImage<MemBacking> {
    VhdImage::open(MemBacking::new(vhd.backing().to_vec(), CAP), false).expect("reopen")
}

fn whole(vhd: &VhdImage<MemBacking>) -> Vec<u8> {
    let mut buf = vec![0u8; vhd.size() as usize];
    vhd.read_at(&mut buf, 0).expect("read");
    buf
}

fn open_bytes(bytes: Vec<u8>) -> Result<VhdImage<MemBacking>, VhdError> {
    VhdImage::open(MemBacking::new(bytes, CAP), false)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn a_new_disk_reads_as_zeros_and_takes_no_blocks() {
    for kind in [DiskType::Fixed, DiskType::Dynamic] {
        let vhd = new_disk(kind, 5 * MIB + 3 * SECTOR);
        assert_eq!(vhd.size(), 5 * MIB + 3 * SECTOR);
        assert!(whole(&vhd).iter().all(|&b| b == 0));
        let expected = if kind == DiskType::Dynamic {
            0
        } else {
            vhd.size()
        };
        assert_eq!(vhd.allocated(), expected);
    }
}

#[test]
fn writes_across_blocks_read_back_after_reopening() {
    for kind in [DiskType::Fixed, DiskType::Dynamic] {
        let size = 7 * MIB;
        let vhd = new_disk(kind, size);
        let mut model = vec![0u8; size as usize];
        // Across the boundary of the first two 2 MiB blocks, and the disk's last sector.
        for (at, len, seed) in [
            (2 * MIB - 4096, 8192usize, 1u8),
            (size - SECTOR, 512, 2),
            (0, 512, 3),
        ] {
            let data = pattern(len, seed);
            vhd.write_at(&data, at).unwrap();
            model[at as usize..at as usize + len].copy_from_slice(&data);
        }
        vhd.flush().unwrap();
        assert_eq!(whole(&vhd), model);
        let again = reopen(&vhd);
        assert_eq!(whole(&again), model, "{kind:?} after reopening");
        if kind == DiskType::Dynamic {
            assert_eq!(
                again.allocated(),
                3 * 2 * MIB,
                "blocks 0, 1 and 3 allocated"
            );
        }
    }
}

#[test]
fn requests_outside_the_disk_or_not_in_sectors_are_refused() {
    let vhd = new_disk(DiskType::Dynamic, 4 * MIB);
    let mut buf = vec![0u8; 1024];
    for (len, at) in [
        (1024usize, 4 * MIB - 512),
        (1000, 0),
        (1024, 100),
        (1024, u64::MAX - 511),
    ] {
        let e = vhd.read_at(&mut buf[..len], at).unwrap_err();
        assert!(matches!(e, VhdError::InvalidRequest(_)), "{e}");
        let e = vhd.write_at(&buf[..len], at).unwrap_err();
        assert!(matches!(e, VhdError::InvalidRequest(_)), "{e}");
    }
    let ro = VhdImage::open(MemBacking::new(vhd.backing().to_vec(), CAP), true).unwrap();
    assert!(matches!(ro.write_at(&buf, 0), Err(VhdError::ReadOnly)));
    for size in [0, 1000, 2041 << 30] {
        let e = VhdImage::create(MemBacking::new(Vec::new(), CAP), DiskType::Dynamic, size)
            .unwrap_err();
        assert!(e.to_string().contains("multiple of 512"), "{e}");
    }
}

/// A block written by another program whose bitmap marks only some sectors present:
/// the others read as zeros, and a write marks its sectors present.
#[test]
fn sector_bitmaps_are_honoured() {
    let vhd = new_disk(DiskType::Dynamic, 4 * MIB);
    vhd.write_at(&pattern(2 * MIB as usize, 7), 0).unwrap();
    let mut bytes = vhd.backing().to_vec();
    // The block's bitmap is the sector its BAT entry names: mark only sectors 0..8.
    let bat_at = 512 + 1024;
    let sector = u32::from_be_bytes(bytes[bat_at..bat_at + 4].try_into().unwrap()) as usize;
    let bitmap = &mut bytes[sector * 512..sector * 512 + 512];
    bitmap.fill(0);
    bitmap[0] = 0xff;
    let vhd = open_bytes(bytes).unwrap();
    let mut got = vec![0u8; 16 * 512];
    vhd.read_at(&mut got, 0).unwrap();
    assert_eq!(&got[..8 * 512], &pattern(2 * MIB as usize, 7)[..8 * 512]);
    assert!(
        got[8 * 512..].iter().all(|&b| b == 0),
        "absent sectors read as zeros"
    );
    vhd.write_at(&[9u8; 512], 10 * 512).unwrap();
    let again = reopen(&vhd);
    again.read_at(&mut got, 0).unwrap();
    assert_eq!(&got[10 * 512..11 * 512], &[9u8; 512][..]);
    assert!(got[8 * 512..10 * 512].iter().all(|&b| b == 0));
    assert!(got[11 * 512..].iter().all(|&b| b == 0));
}

#[test]
fn a_bad_footer_checksum_is_refused() {
    for kind in [DiskType::Fixed, DiskType::Dynamic] {
        let vhd = new_disk(kind, 2 * MIB);
        let mut bytes = vhd.backing().to_vec();
        let end = bytes.len();
        bytes[end - 512 + 40] ^= 0x01; // a byte of the original size
        let e = open_bytes(bytes).unwrap_err();
        assert!(
            matches!(e, VhdError::Checksum { what: "footer", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("checksum is wrong"), "{e}");
    }
}

#[test]
fn a_bad_dynamic_header_checksum_is_refused() {
    let vhd = new_disk(DiskType::Dynamic, 2 * MIB);
    let mut bytes = vhd.backing().to_vec();
    bytes[512 + 32] ^= 0x40; // max table entries
    let e = open_bytes(bytes).unwrap_err();
    assert!(e.to_string().contains("checksum is wrong"), "{e}");
}

#[test]
fn a_bat_entry_out_of_range_is_refused() {
    let vhd = new_disk(DiskType::Dynamic, 4 * MIB);
    vhd.write_at(&[1u8; 512], 0).unwrap();
    let good = vhd.backing().to_vec();
    let bat_at = 512 + 1024;
    for entry in [0x00ff_ffffu32, 1, 3] {
        let mut bytes = good.clone();
        bytes[bat_at + 4..bat_at + 8].copy_from_slice(&entry.to_be_bytes());
        let e = open_bytes(bytes).unwrap_err();
        assert!(matches!(e, VhdError::Corrupt(_)), "entry {entry}: {e}");
        assert!(e.to_string().contains("BAT entry 1"), "{e}");
    }
    // Two entries naming the same block.
    let mut bytes = good.clone();
    let first: [u8; 4] = bytes[bat_at..bat_at + 4].try_into().unwrap();
    bytes[bat_at + 4..bat_at + 8].copy_from_slice(&first);
    let e = open_bytes(bytes).unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
}

#[test]
fn a_truncated_file_is_refused() {
    let vhd = new_disk(DiskType::Dynamic, 4 * MIB);
    vhd.write_at(&[1u8; 4096], MIB).unwrap();
    let bytes = vhd.backing().to_vec();
    for cut in [512usize, 4096, MIB as usize] {
        let e = open_bytes(bytes[..bytes.len() - cut].to_vec()).unwrap_err();
        assert!(matches!(e, VhdError::Truncated(_)), "cut {cut}: {e}");
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    let e = open_bytes(bytes[..100].to_vec()).unwrap_err();
    assert!(matches!(e, VhdError::Truncated(_)), "{e}");
    // A fixed disk whose footer claims more data than the file holds.
    let fixed = new_disk(DiskType::Fixed, 2 * MIB);
    let bytes = fixed.backing().to_vec();
    let footer = bytes[bytes.len() - 512..].to_vec();
    let mut short = bytes[..MIB as usize].to_vec();
    short.extend_from_slice(&footer);
    let e = open_bytes(short).unwrap_err();
    assert!(matches!(e, VhdError::Truncated(_)), "{e}");
}

#[test]
fn other_files_are_not_vhds() {
    for bytes in [vec![0u8; 4096], b"hello".repeat(200), Vec::new()] {
        let e = open_bytes(bytes).unwrap_err();
        assert!(
            matches!(e, VhdError::NotVhd | VhdError::Truncated(_)),
            "{e}"
        );
    }
}

/// A crash in the middle of allocating a block leaves an image that opens, in which
/// the block is absent.
#[test]
fn a_crash_while_allocating_leaves_a_valid_image() {
    let vhd = new_disk(DiskType::Dynamic, 4 * MIB);
    vhd.write_at(&[3u8; 512], 0).unwrap();
    let before = vhd.backing().to_vec();
    vhd.write_at(&[4u8; 512], 2 * MIB).unwrap();
    let after = vhd.backing().to_vec();
    // The state once the new footer is written and before the BAT entry is: the new
    // length, the old BAT.
    let mut torn = after.clone();
    torn[512 + 1024..512 + 1024 + 8].copy_from_slice(&before[512 + 1024..512 + 1024 + 8]);
    let vhd = open_bytes(torn).unwrap();
    let mut got = vec![0u8; 512];
    vhd.read_at(&mut got, 2 * MIB).unwrap();
    assert_eq!(got, [0u8; 512]);
    vhd.read_at(&mut got, 0).unwrap();
    assert_eq!(got, [3u8; 512]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any sequence of writes, with any block size, reads back as a byte model says,
    /// before and after reopening the image.
    #[test]
    fn random_writes_match_a_model(
        dynamic in any::<bool>(),
        block_size in prop::sample::select(vec![512u32, 4096, 64 << 10, 2 << 20]),
        writes in prop::collection::vec((0u64..(9 * MIB / SECTOR), 1u64..300, any::<u8>()), 1..24),
    ) {
        let size = 9 * MIB;
        let kind = if dynamic { DiskType::Dynamic } else { DiskType::Fixed };
        let vhd = VhdImage::create_with_block_size(MemBacking::new(Vec::new(), CAP), kind, size, block_size)
            .unwrap();
        let mut model = vec![0u8; size as usize];
        for (sector, count, seed) in writes {
            let at = sector * SECTOR;
            let len = (count * SECTOR).min(size - at) as usize;
            let data = pattern(len, seed);
            vhd.write_at(&data, at).unwrap();
            model[at as usize..at as usize + len].copy_from_slice(&data);
        }
        prop_assert!(whole(&vhd) == model);
        prop_assert!(whole(&reopen(&vhd)) == model);
    }
}
