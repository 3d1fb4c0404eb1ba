//! The direct path to a LUN that the kernel already shows as a file: an image file, a
//! loop device, or a block device of a kernel initiator.
//!
//! Opens with O_DIRECT where the file system or device allows it, so that a node never
//! reads another node's writes from a stale host page cache; falls back to buffered I/O
//! (tmpfs, for one) where it does not. `flush` is `fdatasync`, which on a block device
//! is a cache flush of the device.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{AlignedBuf, BlockDevice, BlockError};

/// A LUN reached through a path in the host's file system.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    name: String,
    capacity: u64,
    block_size: u32,
    direct: bool,
}

// BLKGETSIZE64 = _IOR(0x12, 114, size_t); BLKSSZGET = _IO(0x12, 104).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

impl FileDevice {
    /// Opens `path` for reading and, unless `read_only`, writing.
    pub fn open(path: &Path, read_only: bool) -> Result<FileDevice, BlockError> {
        let name = path.display().to_string();
        let io_err = |source| BlockError::Io {
            op: "open",
            lun: name.clone(),
            offset: 0,
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        let is_block = meta.file_type().is_block_device();
        if !is_block && !meta.is_file() {
            return Err(BlockError::BadLun(
                name,
                "not a regular file or a block device".into(),
            ));
        }
        let (file, direct) = match Self::open_with(path, read_only, libc::O_DIRECT) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (Self::open_with(path, read_only, 0).map_err(io_err)?, false)
            }
            Err(e) => return Err(io_err(e)),
        };
        let (capacity, block_size) = if is_block {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer we pass.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
            if rc != 0 {
                return Err(io_err(std::io::Error::last_os_error()));
            }
            let mut ssz: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int through the pointer we pass.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut ssz) };
            if rc != 0 {
                return Err(io_err(std::io::Error::last_os_error()));
            }
            (size, ssz as u32)
        } else {
            (meta.len(), 512)
        };
        Ok(FileDevice {
            file,
            name,
            capacity,
            block_size,
            direct,
        })
    }

    fn open_with(path: &Path, read_only: bool, flags: i32) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(flags)
            .open(path)
    }

    /// Creates (or extends) an image file of `size` bytes, sparse, for `mkfs --size`.
    pub fn create_image(path: &Path, size: u64) -> Result<PathBuf, BlockError> {
        let name = path.display().to_string();
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| BlockError::Io {
                op: "create",
                lun: name.clone(),
                offset: 0,
                source,
            })?;
        let cur = f.metadata().map(|m| m.len()).unwrap_or(0);
        if cur < size {
            f.set_len(size).map_err(|source| BlockError::Io {
                op: "resize",
                lun: name,
                offset: size,
                source,
            })?;
        }
        Ok(path.to_path_buf())
    }

    /// True when the device was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The open file, for callers that need its descriptor (locks).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn io_error(&self, op: &'static str, offset: u64, source: std::io::Error) -> BlockError {
        BlockError::Io {
            op,
            lun: self.name.clone(),
            offset,
            source,
        }
    }
}

impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        if self.direct && !AlignedBuf::is_aligned(buf) {
            let mut bounce = AlignedBuf::zeroed(buf.len());
            self.file
                .read_exact_at(&mut bounce, offset)
                .map_err(|e| self.io_error("read", offset, e))?;
            buf.copy_from_slice(&bounce);
            return Ok(());
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io_error("read", offset, e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        if self.direct && !AlignedBuf::is_aligned(buf) {
            let mut bounce = AlignedBuf::zeroed(buf.len());
            bounce.copy_from_slice(buf);
            return self
                .file
                .write_all_at(&bounce, offset)
                .map_err(|e| self.io_error("write", offset, e));
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_error("write", offset, e))
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.file
            .sync_data()
            .map_err(|e| self.io_error("flush", 0, e))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_wrote_with_any_buffer_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun.img");
        FileDevice::create_image(&path, 1 << 20).unwrap();
        let dev = FileDevice::open(&path, false).unwrap();
        assert_eq!(dev.capacity(), 1 << 20);
        let mut data = vec![0u8; 8192 + 1];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // An unaligned slice goes through the bounce buffer.
        dev.write_at(&data[1..], 4096).unwrap();
        dev.flush().unwrap();
        let mut back = AlignedBuf::zeroed(8192);
        dev.read_at(&mut back, 4096).unwrap();
        assert_eq!(&back[..], &data[1..]);
    }

    #[test]
    fn refuses_unaligned_and_out_of_range_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun.img");
        FileDevice::create_image(&path, 1 << 16).unwrap();
        let dev = FileDevice::open(&path, false).unwrap();
        let mut buf = AlignedBuf::zeroed(4096);
        assert!(matches!(
            dev.read_at(&mut buf, 100),
            Err(BlockError::Unaligned { .. })
        ));
        assert!(matches!(
            dev.read_at(&mut buf, 1 << 16),
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = FileDevice::open(Path::new("/nonexistent/lun.img"), false).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lun.img"), "{err}");
    }
}
