//! A copy-on-write view of a LUN: reads fall through, writes stay in memory. fsck uses
//! it to let the metadata store's own checks "repair" without touching the LUN.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{BlockDevice, BlockError};

/// A LUN whose writes are kept in memory and never reach the device.
#[derive(Debug)]
pub struct OverlayDevice {
    inner: Arc<dyn BlockDevice>,
    blocks: Mutex<HashMap<u64, Box<[u8]>>>,
    name: String,
}

impl OverlayDevice {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlockDevice>) -> OverlayDevice {
        let name = format!("{} (overlay)", inner.name());
        OverlayDevice {
            inner,
            blocks: Mutex::new(HashMap::new()),
            name,
        }
    }

    /// Number of blocks written to the overlay.
    pub fn dirty_blocks(&self) -> usize {
        self.blocks.lock().len()
    }
}

impl BlockDevice for OverlayDevice {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.inner.read_at(buf, offset)?;
        let bs = self.block_size() as usize;
        let blocks = self.blocks.lock();
        for (i, chunk) in buf.chunks_mut(bs).enumerate() {
            if let Some(data) = blocks.get(&(offset / bs as u64 + i as u64)) {
                chunk.copy_from_slice(data);
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let bs = self.block_size() as usize;
        let mut blocks = self.blocks.lock();
        for (i, chunk) in buf.chunks(bs).enumerate() {
            blocks.insert(offset / bs as u64 + i as u64, chunk.into());
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CrashSimDevice;

    #[test]
    fn writes_never_reach_the_device() {
        let dev: Arc<dyn BlockDevice> = Arc::new(CrashSimDevice::new(8 * 4096));
        let o = OverlayDevice::new(dev.clone());
        o.write_at(&[9u8; 4096], 4096).unwrap();
        let mut buf = vec![0u8; 8192];
        o.read_at(&mut buf, 0).unwrap();
        assert_eq!((buf[0], buf[4096]), (0, 9));
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf[4096], 0);
        assert_eq!(o.dirty_blocks(), 1);
    }
}
