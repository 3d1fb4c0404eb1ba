//! The direct path to a LUN that the kernel already shows as a file: an image file, a
//! loop device, or a block device of a kernel initiator.
//!
//! Opens with O_DIRECT where the file system or device allows it, so that a node never
//! reads another node's writes from a stale host page cache; falls back to buffered I/O
//! (tmpfs, for one) where it does not. `flush` is `fdatasync`, which on a block device
//! is a cache flush of the device.
//!
//! A regular file opened for writing also emulates persistent reservations in a side
//! file (see `file_reservations`): every write checks them, and a fenced nexus's writes
//! fail with [`BlockError::Fenced`]. Read-only opens and block devices do not: their
//! reservation commands answer [`BlockError::Unsupported`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::file_reservations::{FileReservations, check_initiator_name, default_initiator_name};
use crate::{AlignedBuf, BlockDevice, BlockError, Nexus, PrHolder, PrKeys, PrOut};

/// A LUN reached through a path in the host's file system.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    name: String,
    capacity: u64,
    block_size: u32,
    direct: bool,
    is_block: bool,
    /// The reservation emulation: regular files opened for writing only.
    reservations: Option<FileReservations>,
}

// BLKGETSIZE64 = _IOR(0x12, 114, size_t); BLKSSZGET = _IO(0x12, 104).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

impl FileDevice {
    /// Opens `path` for reading and, unless `read_only`, writing. In the reservation
    /// emulation the device is a session of the initiator `file:<hostname>:<pid>`.
    pub fn open(path: &Path, read_only: bool) -> Result<FileDevice, BlockError> {
        FileDevice::open_as(path, read_only, &default_initiator_name())
    }

    /// Opens `path` like [`FileDevice::open`], as a new session (a nexus of its own,
    /// with a random session id) of the initiator `initiator_name` in the reservation
    /// emulation of a writable image file; the name is 1 to
    /// [`crate::PrState::MAX_INITIATOR_NAME`] bytes.
    pub fn open_as(
        path: &Path,
        read_only: bool,
        initiator_name: &str,
    ) -> Result<FileDevice, BlockError> {
        let name = path.display().to_string();
        check_initiator_name(&name, initiator_name)?;
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
        let reservations = if is_block || read_only {
            None
        } else {
            Some(FileReservations::open(path, &name, initiator_name)?)
        };
        Ok(FileDevice {
            file,
            name,
            capacity,
            block_size,
            direct,
            is_block,
            reservations,
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

    /// This device's I_T nexus in the reservation emulation (`None` where there is
    /// none: read-only opens and block devices).
    pub fn nexus(&self) -> Option<&Nexus> {
        self.reservations.as_ref().map(FileReservations::nexus)
    }

    fn reservations(&self) -> Result<&FileReservations, BlockError> {
        self.reservations
            .as_ref()
            .ok_or_else(|| BlockError::Unsupported {
                lun: self.name.clone(),
                what: if self.is_block {
                    "persistent reservations on a block device"
                } else {
                    "persistent reservations on a read-only open"
                },
            })
    }

    fn write_unchecked(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
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
        match &self.reservations {
            Some(r) => r.write_if_allowed(&self.name, || self.write_unchecked(buf, offset)),
            None => self.write_unchecked(buf, offset),
        }
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.file
            .sync_data()
            .map_err(|e| self.io_error("flush", 0, e))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn persistent_reserve_out(&self, action: &PrOut) -> Result<(), BlockError> {
        self.reservations()?.reserve_out(&self.name, action)
    }

    fn read_keys(&self) -> Result<PrKeys, BlockError> {
        self.reservations()?.read_keys(&self.name)
    }

    fn read_reservation(&self) -> Result<Option<PrHolder>, BlockError> {
        self.reservations()?.read_reservation(&self.name)
    }

    fn reservation_port(&self) -> Option<String> {
        self.nexus().map(|n| n.initiator.clone())
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
