//! Raw images in and out of VHDs: `vmm disk import` and `vmm disk export`. Zero runs
//! are skipped both ways, so a dynamic VHD allocates only blocks holding data and an
//! exported raw image stays sparse.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use super::{Backing, DiskType, SECTOR, VhdError, VhdImage};

/// Bytes moved per step.
const CHUNK: usize = 2 << 20;

/// Writes the raw image `raw` into a new VHD over `backing`, of `raw`'s size rounded
/// up to whole sectors. Returns the VHD.
pub fn import<B: Backing>(
    raw: &mut File,
    backing: B,
    kind: DiskType,
) -> Result<VhdImage<B>, VhdError> {
    let len = raw.metadata()?.len();
    let size = len.div_ceil(SECTOR) * SECTOR;
    let vhd = VhdImage::create(backing, kind, size)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        let n = read_full(raw, &mut buf)?;
        if n == 0 {
            break;
        }
        let whole = n.div_ceil(SECTOR as usize) * SECTOR as usize;
        buf[n..whole].fill(0);
        if buf[..whole].iter().any(|&b| b != 0) {
            vhd.write_at(&buf[..whole], at)?;
        }
        at += whole as u64;
    }
    vhd.flush()?;
    Ok(vhd)
}

/// Writes the disk of `vhd` into `raw` (truncated to the disk's size first), leaving
/// holes where the disk reads as zeros.
pub fn export<B: Backing>(vhd: &VhdImage<B>, raw: &File) -> Result<(), VhdError> {
    raw.set_len(0)?;
    raw.set_len(vhd.size())?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < vhd.size() {
        let n = (vhd.size() - at).min(CHUNK as u64) as usize;
        vhd.read_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            FileExt::write_all_at(raw, &buf[..n], at)?;
        }
        at += n as u64;
    }
    raw.sync_data()?;
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
