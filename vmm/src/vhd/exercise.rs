//! What the fuzz target and its corpus replay do with an untrusted file: open it as a
//! VHD and, if that succeeds, use it as a guest would. Every malformed input must give
//! an error, never a panic or an unbounded allocation; whatever opens must read, take
//! a write, and show that write again after reopening.

use super::{MemBacking, SECTOR, VhdError, VhdImage};

/// How far the in-memory file may grow past the input while it is written to.
const GROWTH: usize = 4 << 20;

/// Opens `data` as a VHD, reads its first, middle and last sectors, writes the middle
/// one, reopens the result and checks the write is there. Returns the error that
/// refused the input, if any; panics only when the VHD code breaks its own promises.
pub fn open_and_exercise(data: &[u8]) -> Result<(), VhdError> {
    let vhd = VhdImage::open(MemBacking::new(data.to_vec(), data.len() + GROWTH), false)?;
    let sectors = vhd.size() / SECTOR;
    let mut buf = [0u8; SECTOR as usize];
    for s in [0, sectors / 2, sectors - 1] {
        vhd.read_at(&mut buf, s * SECTOR)?;
    }
    let at = sectors / 2 * SECTOR;
    let written = [0x6bu8; SECTOR as usize];
    if vhd.write_at(&written, at).is_err() {
        // The in-memory file could not grow enough: a refusal, not a fault.
        return Ok(());
    }
    vhd.read_at(&mut buf, at)?;
    assert_eq!(buf, written, "a write does not read back");
    let bytes = vhd.backing().to_vec();
    let len = bytes.len();
    let again = VhdImage::open(MemBacking::new(bytes, len + GROWTH), true)
        .unwrap_or_else(|e| panic!("an image that opened and took a write no longer opens: {e}"));
    assert_eq!(again.size(), vhd.size());
    again.read_at(&mut buf, at)?;
    assert_eq!(buf, written, "a write does not read back after reopening");
    Ok(())
}
