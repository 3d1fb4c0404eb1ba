//! Inodes: what the INODES table holds per file, and its byte layout.
//!
//! Record layout (little-endian, 128 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | record version (1) |
//! | 1 | 3 | reserved, zero |
//! | 4 | 4 | mode (file type and permission bits, as `st_mode`) |
//! | 8 | 4 | uid |
//! | 12 | 4 | gid |
//! | 16 | 4 | link count |
//! | 20 | 4 | flags (none defined) |
//! | 24 | 8 | size in bytes |
//! | 32 | 12 | atime: seconds (i64), nanoseconds (u32) |
//! | 44 | 12 | mtime |
//! | 56 | 12 | ctime |
//! | 68 | 12 | crtime (birth) |
//! | 80 | 8 | rdev |
//! | 88 | 8 | parent directory (directories only) |
//! | 96 | 8 | next directory cookie (directories only) |
//! | 104 | 8 | generation |
//! | 112 | 8 | allocated data blocks |
//! | 120 | 8 | reserved, zero |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{MetaError, MetaResult};

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;
/// Size of an encoded inode.
pub const INODE_RECORD_LEN: usize = 128;
const RECORD_VERSION: u8 = 1;

/// A point in time with nanoseconds, as stored.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Timestamp {
    /// Seconds since the epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Timestamp {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        if t.secs >= 0 {
            UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
                + Duration::from_nanos(u64::from(t.nanos))
        }
    }
}

/// The kinds of file csvfs stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// The kind encoded in the type bits of `mode`.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }

    /// One byte, as directory entries store it.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The inverse of [`FileKind::code`].
    pub fn from_code(c: u8) -> Option<FileKind> {
        use FileKind::*;
        [File, Dir, Symlink, Fifo, CharDev, BlockDev, Socket]
            .get(c as usize)
            .copied()
    }
}

/// One inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Inode {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Flags; none defined.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last data change.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// Birth.
    pub crtime: Timestamp,
    /// Device number of device files.
    pub rdev: u64,
    /// Parent directory (directories only; the root is its own parent).
    pub parent: u64,
    /// Next readdir cookie to hand out (directories only).
    pub next_cookie: u64,
    /// Generation, for NFS-style handles.
    pub generation: u64,
    /// Data blocks allocated to the file.
    pub blocks: u64,
}

/// The first cookie of a directory's entries; 1 and 2 are "." and "..".
pub const FIRST_COOKIE: u64 = 3;

impl Inode {
    /// A new inode stamped with `now`.
    pub fn new(mode: u32, uid: u32, gid: u32, now: Timestamp) -> Inode {
        Inode {
            mode,
            uid,
            gid,
            nlink: 1,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            next_cookie: FIRST_COOKIE,
            ..Inode::default()
        }
    }

    /// The file's kind.
    pub fn kind(&self) -> FileKind {
        FileKind::from_mode(self.mode).unwrap_or(FileKind::File)
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.kind() == FileKind::Dir
    }

    /// Encodes the record.
    pub fn encode(&self) -> [u8; INODE_RECORD_LEN] {
        let mut b = [0u8; INODE_RECORD_LEN];
        b[0] = RECORD_VERSION;
        let mut put = |o: usize, v: &[u8]| b[o..o + v.len()].copy_from_slice(v);
        put(4, &self.mode.to_le_bytes());
        put(8, &self.uid.to_le_bytes());
        put(12, &self.gid.to_le_bytes());
        put(16, &self.nlink.to_le_bytes());
        put(20, &self.flags.to_le_bytes());
        put(24, &self.size.to_le_bytes());
        for (o, t) in [
            (32, self.atime),
            (44, self.mtime),
            (56, self.ctime),
            (68, self.crtime),
        ] {
            put(o, &t.secs.to_le_bytes());
            put(o + 8, &t.nanos.to_le_bytes());
        }
        put(80, &self.rdev.to_le_bytes());
        put(88, &self.parent.to_le_bytes());
        put(96, &self.next_cookie.to_le_bytes());
        put(104, &self.generation.to_le_bytes());
        put(112, &self.blocks.to_le_bytes());
        b
    }

    /// Decodes a record; rejects anything malformed, never panics.
    pub fn decode(b: &[u8]) -> MetaResult<Inode> {
        if b.len() != INODE_RECORD_LEN {
            return Err(MetaError::Corrupt(format!(
                "inode record is {} bytes, expected 128",
                b.len()
            )));
        }
        if b[0] != RECORD_VERSION {
            return Err(MetaError::Corrupt(format!("inode record version {}", b[0])));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let ts = |o: usize| -> MetaResult<Timestamp> {
            let nanos = u32_at(o + 8);
            if nanos >= 1_000_000_000 {
                return Err(MetaError::Corrupt(format!(
                    "inode timestamp has {nanos} nanoseconds"
                )));
            }
            Ok(Timestamp {
                secs: u64_at(o) as i64,
                nanos,
            })
        };
        let mode = u32_at(4);
        if FileKind::from_mode(mode).is_none() {
            return Err(MetaError::Corrupt(format!(
                "inode mode {mode:o} has no file type"
            )));
        }
        Ok(Inode {
            mode,
            uid: u32_at(8),
            gid: u32_at(12),
            nlink: u32_at(16),
            flags: u32_at(20),
            size: u64_at(24),
            atime: ts(32)?,
            mtime: ts(44)?,
            ctime: ts(56)?,
            crtime: ts(68)?,
            rdev: u64_at(80),
            parent: u64_at(88),
            next_cookie: u64_at(96),
            generation: u64_at(104),
            blocks: u64_at(112),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let mut i = Inode::new(
            libc::S_IFREG | 0o644,
            1000,
            100,
            Timestamp { secs: -5, nanos: 7 },
        );
        i.size = 5 << 32;
        i.blocks = 99;
        assert_eq!(Inode::decode(&i.encode()).unwrap(), i);
    }

    #[test]
    fn negative_times_survive_system_time() {
        let t = Timestamp {
            secs: -3,
            nanos: 250,
        };
        assert_eq!(Timestamp::from(SystemTime::from(t)), t);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Inode::decode(&bytes);
        }
    }
}
