//! The bundled test guest (guest/test_guest.c, built by build.rs): its binary, the
//! parameters the VMM passes it, and the status block it keeps in memory. The layouts
//! here and in the C source must agree.

use vm_memory::{Bytes, GuestAddress};

use crate::machine::layout::{DIRTY_BASE, TEST_GUEST_STATUS_ADDR, VIRTIO_BLK_MMIO};
use crate::machine::memory::GuestRam;

/// The flat binary, loaded at [`crate::machine::layout::LOAD_ADDR`].
pub static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/test_guest.bin"));

const PARAMS_MAGIC: u64 = u64::from_le_bytes(*b"CSVGUEST");
const STATUS_MAGIC: u64 = u64::from_le_bytes(*b"CSVSTATS");
/// A disk record's magic.
pub const RECORD_MAGIC: u64 = u64::from_le_bytes(*b"CSVREC01");

/// What the test guest is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestGuestParams {
    /// Bytes of memory dirtied per second.
    pub dirty_bytes_per_s: u64,
    /// A disk record every this many milliseconds (0: none).
    pub record_every_ms: u64,
    /// A progress line on the console every this many milliseconds (0: none).
    pub print_every_ms: u64,
}

impl TestGuestParams {
    /// The parameter block for a VM of `memory_bytes`, as the guest reads it.
    pub fn encode(&self, memory_bytes: u64) -> [u8; 64] {
        let fields = [
            PARAMS_MAGIC,
            memory_bytes,
            self.dirty_bytes_per_s,
            DIRTY_BASE,
            memory_bytes.saturating_sub(DIRTY_BASE),
            VIRTIO_BLK_MMIO,
            self.record_every_ms,
            self.print_every_ms,
        ];
        let mut b = [0u8; 64];
        for (i, f) in fields.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        b
    }
}

/// What the test guest reports in its memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestGuestStatus {
    /// Whether the guest has started (its status block is there).
    pub started: bool,
    pub counter: u64,
    pub records: u64,
    pub pages_dirtied: u64,
    pub clock_ms: u64,
    pub disk_sectors: u64,
    /// The guest stopped on an error (it printed it on the console).
    pub failed: bool,
}

impl TestGuestStatus {
    /// Reads the status block out of `ram`.
    pub fn read(ram: &GuestRam) -> TestGuestStatus {
        let mut raw = [0u8; 56];
        if ram
            .read_slice(&mut raw, GuestAddress(TEST_GUEST_STATUS_ADDR))
            .is_err()
        {
            return TestGuestStatus::default();
        }
        let f = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
        TestGuestStatus {
            started: f(0) == STATUS_MAGIC,
            counter: f(1),
            records: f(2),
            pages_dirtied: f(3),
            clock_ms: f(4),
            disk_sectors: f(5),
            failed: f(6) != 0,
        }
    }
}

/// A record the guest wrote to its disk, as (number, counter, clock_ms), if `sector`
/// holds one.
pub fn decode_record(sector: &[u8]) -> Option<(u64, u64, u64)> {
    if sector.len() < 32 {
        return None;
    }
    let f = |i: usize| u64::from_le_bytes(sector[i * 8..i * 8 + 8].try_into().unwrap());
    (f(0) == RECORD_MAGIC).then(|| (f(1), f(2), f(3)))
}
