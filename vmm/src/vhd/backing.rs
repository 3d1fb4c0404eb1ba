//! Where a VHD's bytes live: a file (on a volume, normally), or memory (tests and the
//! fuzz target).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use parking_lot::Mutex;

/// Positional byte storage under a VHD.
pub trait Backing: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the storage if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The storage's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the storage is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Makes every write so far durable.
    fn sync(&self) -> io::Result<()>;
}

impl Backing for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// A VHD held in memory. Growth is capped, so that a hostile image cannot make a
/// test or the fuzz target allocate without bound.
#[derive(Debug, Default)]
pub struct MemBacking {
    bytes: Mutex<Vec<u8>>,
    cap: usize,
}

impl MemBacking {
    /// Memory holding `bytes`, allowed to grow to `cap` bytes.
    pub fn new(bytes: Vec<u8>, cap: usize) -> MemBacking {
        MemBacking {
            bytes: Mutex::new(bytes),
            cap,
        }
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }
}

impl Backing for MemBacking {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.bytes.lock();
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = bytes.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.lock();
        let start = usize::try_from(offset).map_err(|_| full())?;
        let end = start.checked_add(buf.len()).ok_or_else(full)?;
        if end > self.cap {
            return Err(full());
        }
        if end > bytes.len() {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.lock().len() as u64)
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the VHD")
}

fn full() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "the in-memory VHD would grow past its cap",
    )
}
