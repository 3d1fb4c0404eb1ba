//! A saved VM (quick migration): beside its disk on the volume, `<vm>.vmstate` (its
//! vCPU and device state, [`crate::machine::state_codec`]), `<vm>.vmmem` (its memory,
//! sparse: pages of zeros are not written) and `<vm>.saved.json` (when it paused).
//! Any node can restore it; the files go once it runs again.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::machine::memory::is_zero;

/// When and what was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveInfo {
    /// Milliseconds since the epoch when the VM paused.
    pub paused_at_ms: u64,
    pub memory_bytes: u64,
}

const PAGE: usize = 4096;

fn paths(dir: &Path, name: &str) -> [PathBuf; 3] {
    [
        dir.join(format!("{name}.vmstate")),
        dir.join(format!("{name}.vmmem")),
        dir.join(format!("{name}.saved.json")),
    ]
}

/// Whether the VM in `dir` has been saved and not yet restored.
pub fn exists(dir: &Path, name: &str) -> bool {
    paths(dir, name)[2].exists()
}

/// The save's info, if there is one.
pub fn info(dir: &Path, name: &str) -> Result<SaveInfo> {
    let p = &paths(dir, name)[2];
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("VM {name} has no saved state ({})", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a save record", p.display()))
}

/// Writes the save; returns the bytes of memory written. The info file goes last, so
/// a save is there only once all of it is.
pub fn write(dir: &Path, name: &str, state: &[u8], memory: &[u8], info: SaveInfo) -> Result<u64> {
    let [state_path, mem_path, info_path] = paths(dir, name);
    let _ = std::fs::remove_file(&info_path);
    std::fs::write(&state_path, state)
        .with_context(|| format!("cannot write {}", state_path.display()))?;
    File::open(&state_path)?.sync_all()?;
    let mem = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&mem_path)
        .with_context(|| format!("cannot write {}", mem_path.display()))?;
    mem.set_len(memory.len() as u64)?;
    // Runs of pages holding data, each in one write: a write per page would cost a
    // round trip each through the mount.
    let mut written = 0u64;
    let zero = |p: usize| is_zero(&memory[p * PAGE..((p + 1) * PAGE).min(memory.len())]);
    let pages = memory.len().div_ceil(PAGE);
    let mut p = 0;
    while p < pages {
        if zero(p) {
            p += 1;
            continue;
        }
        let start = p;
        while p < pages && !zero(p) && p - start < 1024 {
            p += 1;
        }
        let run = &memory[start * PAGE..(p * PAGE).min(memory.len())];
        mem.write_all_at(run, (start * PAGE) as u64)
            .with_context(|| format!("cannot write {}", mem_path.display()))?;
        written += run.len() as u64;
    }
    mem.sync_all()?;
    let json = serde_json::to_string(&info).expect("plain data serialises");
    std::fs::write(&info_path, json)
        .with_context(|| format!("cannot write {}", info_path.display()))?;
    File::open(&info_path)?.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(written)
}

/// Reads the save: (info, state bytes, memory).
pub fn read(dir: &Path, name: &str) -> Result<(SaveInfo, Vec<u8>, Vec<u8>)> {
    let info = info(dir, name)?;
    let [state_path, mem_path, _] = paths(dir, name);
    let state = std::fs::read(&state_path)
        .with_context(|| format!("cannot read {}", state_path.display()))?;
    let memory =
        std::fs::read(&mem_path).with_context(|| format!("cannot read {}", mem_path.display()))?;
    if memory.len() as u64 != info.memory_bytes {
        bail!(
            "{} holds {} bytes, the save says {}",
            mem_path.display(),
            memory.len(),
            info.memory_bytes
        );
    }
    Ok((info, state, memory))
}

/// Removes the save (once the VM runs again).
pub fn remove(dir: &Path, name: &str) {
    let [state, mem, info] = paths(dir, name);
    let _ = std::fs::remove_file(info);
    let _ = std::fs::remove_file(state);
    let _ = std::fs::remove_file(mem);
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
