//! A device that forgets: an in-memory LUN with a volatile write cache, for crash tests.
//!
//! Writes land in a cache; `flush` makes them durable. [`CrashSimDevice::crash`] returns
//! what a power cut could leave behind: the durable image plus an arbitrary subset of
//! the cached block writes, each applied or lost independently, as a real disk cache
//! may reorder them.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::{BlockDevice, BlockError};

const BLOCK: usize = 4096;

#[derive(Debug, Default)]
struct State {
    durable: Vec<u8>,
    /// Cached writes in issue order: (block number, contents).
    cache: Vec<(u64, Box<[u8]>)>,
    /// Latest cached contents per block, for reads.
    latest: BTreeMap<u64, usize>,
}

/// An in-memory LUN that loses unflushed writes on [`CrashSimDevice::crash`].
#[derive(Debug)]
pub struct CrashSimDevice {
    state: Mutex<State>,
    capacity: u64,
}

impl CrashSimDevice {
    /// A zeroed LUN of `capacity` bytes (a multiple of 4096).
    pub fn new(capacity: u64) -> CrashSimDevice {
        assert_eq!(capacity % BLOCK as u64, 0);
        CrashSimDevice {
            state: Mutex::new(State {
                durable: vec![0; capacity as usize],
                ..State::default()
            }),
            capacity,
        }
    }

    /// What survives a power cut: the durable image plus those cached block writes for
    /// which `keep` says true (it is asked once per cached write, in issue order).
    pub fn crash(&self, mut keep: impl FnMut() -> bool) -> CrashSimDevice {
        let st = self.state.lock();
        let mut image = st.durable.clone();
        for (block, data) in &st.cache {
            if keep() {
                let at = *block as usize * BLOCK;
                image[at..at + BLOCK].copy_from_slice(data);
            }
        }
        CrashSimDevice {
            state: Mutex::new(State {
                durable: image,
                ..State::default()
            }),
            capacity: self.capacity,
        }
    }

    /// Number of writes not yet flushed.
    pub fn unflushed_writes(&self) -> usize {
        self.state.lock().cache.len()
    }
}

impl BlockDevice for CrashSimDevice {
    fn block_size(&self) -> u32 {
        BLOCK as u32
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let st = self.state.lock();
        for (i, chunk) in buf.chunks_mut(BLOCK).enumerate() {
            let block = offset / BLOCK as u64 + i as u64;
            match st.latest.get(&block) {
                Some(&idx) => chunk.copy_from_slice(&st.cache[idx].1),
                None => {
                    let at = block as usize * BLOCK;
                    chunk.copy_from_slice(&st.durable[at..at + BLOCK]);
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let mut st = self.state.lock();
        for (i, chunk) in buf.chunks(BLOCK).enumerate() {
            let block = offset / BLOCK as u64 + i as u64;
            let idx = st.cache.len();
            st.cache.push((block, chunk.into()));
            st.latest.insert(block, idx);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        let mut st = self.state.lock();
        let cache = std::mem::take(&mut st.cache);
        st.latest.clear();
        for (block, data) in cache {
            let at = block as usize * BLOCK;
            st.durable[at..at + BLOCK].copy_from_slice(&data);
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "crash-sim"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_writes_survive_and_unflushed_ones_may_not() {
        let dev = CrashSimDevice::new(4 * 4096);
        dev.write_at(&[1u8; 4096], 0).unwrap();
        dev.flush().unwrap();
        dev.write_at(&[2u8; 4096], 0).unwrap();
        dev.write_at(&[3u8; 4096], 4096).unwrap();
        let mut buf = vec![0u8; 8192];
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!((buf[0], buf[4096]), (2, 3));
        assert_eq!(dev.unflushed_writes(), 2);
        let lost = dev.crash(|| false);
        lost.read_at(&mut buf, 0).unwrap();
        assert_eq!((buf[0], buf[4096]), (1, 0));
        let kept = dev.crash(|| true);
        kept.read_at(&mut buf, 0).unwrap();
        assert_eq!((buf[0], buf[4096]), (2, 3));
    }
}
