//! Persistent reservations for image files: the emulation [`FileDevice`] uses when it
//! opens a regular file for writing.
//!
//! The target's state is a [`PrState`] kept in a side file, `<image>.pr` next to the
//! image's canonical path (made, mode 0600, by the first writable open; empty means a
//! freshly started target). Each open [`FileDevice`] is one I_T nexus: its initiator
//! name, given to [`FileDevice::open_as`], and a random session id, so two opens by
//! one process are two nexuses, as two iSCSI sessions would be.
//!
//! Locking is on the side file, so every process of the host sees it. Two
//! open-file-description locks (`F_OFD_SETLKW`, which like `flock` belong to the open
//! file and not to the process) on two bytes of it:
//!
//! - byte 1, the state lock. Every write takes it shared, reads and decodes the state,
//!   checks [`PrState::may_write`], and writes the image before letting go. PERSISTENT
//!   RESERVE OUT takes it exclusive, reads, applies, writes the state back and
//!   `fdatasync`s it before letting go. So a PERSISTENT RESERVE OUT waits for the
//!   writes in flight, and once it returns no nexus it fenced writes again: a refused
//!   write is [`BlockError::Fenced`].
//! - byte 0, the turnstile. Shared holders that keep overlapping would hold the state
//!   lock for ever, and Linux does not queue an exclusive waiter ahead of them (with a
//!   bare `flock`, four writing threads held off a PREEMPT for a minute). So writes pass
//!   the turnstile, taking it exclusive and letting go as soon as they hold the state
//!   lock, and PERSISTENT RESERVE OUT holds it while it waits: new writes queue behind
//!   it, the ones in flight finish, and the fencing goes through.
//!
//! A side file that does not decode (a torn write of the state, a stray edit) fails
//! every write and reservation action with an `InvalidData` error: the emulation fails
//! closed. Deleting the side file is a restart of the emulated target.
//!
//! Only the WRITE EXCLUSIVE types are emulated: reads are not checked, so the EXCLUSIVE
//! ACCESS types are refused. Read-only opens and block devices have no side file and
//! answer [`BlockError::Unsupported`] to reservation commands (a block device's
//! reservations belong to its own target; the kernel's PR ioctls are not wired up).
//!
//! What this does not own: the rules ([`PrState`]), and how the cluster uses them.
//!
//! [`FileDevice`]: crate::FileDevice
//! [`FileDevice::open_as`]: crate::FileDevice::open_as

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{BlockError, Nexus, PrHolder, PrKeys, PrOut, PrRefusal, PrState};

/// The side file's name: the image's path with this appended.
const SIDE_SUFFIX: &str = ".pr";
/// What one `pread` takes before the file's length is asked for: states of a few
/// dozen registrations fit, so a write costs its locks, one pread and a decode.
const FIRST_READ: usize = 4096;

/// One nexus's view of an image file's emulated reservations.
#[derive(Debug)]
pub(crate) struct FileReservations {
    side: File,
    side_path: PathBuf,
    nexus: Nexus,
    /// The file locks belong to the open file description, which every thread of this
    /// device shares, so they cannot keep this device's own threads apart: writes hold
    /// this shared, reservation actions exclusive.
    gate: RwLock<()>,
    /// One thread of this device at a time passes the turnstile.
    turnstile: Mutex<()>,
    /// How many threads hold the shared state lock now; the last one out unlocks.
    sharers: Mutex<usize>,
}

/// The initiator name [`crate::FileDevice::open`] uses: `file:<hostname>:<pid>`.
pub(crate) fn default_initiator_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    let mut name = format!("file:{host}:{}", std::process::id());
    name.truncate(PrState::MAX_INITIATOR_NAME);
    name
}

/// Refuses an initiator name a [`PrState`] would not accept.
pub(crate) fn check_initiator_name(lun: &str, name: &str) -> Result<(), BlockError> {
    if name.is_empty() || name.len() > PrState::MAX_INITIATOR_NAME {
        return Err(BlockError::BadLun(
            lun.to_string(),
            format!(
                "initiator name {name:?} is not 1 to {} bytes long",
                PrState::MAX_INITIATOR_NAME
            ),
        ));
    }
    Ok(())
}

impl FileReservations {
    /// Opens (creating if need be) the side file of the image at `image`, as a new
    /// session of `initiator`.
    pub(crate) fn open(
        image: &Path,
        lun: &str,
        initiator: &str,
    ) -> Result<FileReservations, BlockError> {
        let io_err = |op, source| BlockError::Io {
            op,
            lun: lun.to_string(),
            offset: 0,
            source,
        };
        // Next to the canonical path, so that every name of the image shares one state.
        let mut side_path = std::fs::canonicalize(image)
            .map_err(|e| io_err("open", e))?
            .into_os_string();
        side_path.push(SIDE_SUFFIX);
        let side_path = PathBuf::from(side_path);
        let side = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&side_path)
            .map_err(|e| io_err("open reservation state", e))?;
        let session = random_session().map_err(|e| io_err("open", e))?;
        Ok(FileReservations {
            side,
            side_path,
            nexus: Nexus::new(initiator, session),
            gate: RwLock::new(()),
            turnstile: Mutex::new(()),
            sharers: Mutex::new(0),
        })
    }

    /// This device's nexus.
    pub(crate) fn nexus(&self) -> &Nexus {
        &self.nexus
    }

    /// Runs `write` if the reservation state lets this nexus write, with the state
    /// locked against changes until it returns.
    pub(crate) fn write_if_allowed<T>(
        &self,
        lun: &str,
        write: impl FnOnce() -> Result<T, BlockError>,
    ) -> Result<T, BlockError> {
        let _locked = self.lock_shared(lun)?;
        if !self.load(lun)?.may_write(&self.nexus) {
            return Err(BlockError::Fenced {
                op: "write",
                lun: lun.to_string(),
            });
        }
        write()
    }

    /// PERSISTENT RESERVE OUT.
    pub(crate) fn reserve_out(&self, lun: &str, action: &PrOut) -> Result<(), BlockError> {
        const OP: &str = "persistent reserve out";
        if let PrOut::Reserve { kind, .. } | PrOut::Preempt { kind, .. } = action
            && kind.excludes_reads()
        {
            return Err(BlockError::Refused {
                op: OP,
                lun: lun.to_string(),
                detail: format!(
                    "the image-file emulation supports only the Write Exclusive reservation \
                     types (reads are not checked), not {kind:?}"
                ),
            });
        }
        let _locked = self.lock_exclusive(lun)?;
        let mut state = self.load(lun)?;
        match state.apply(&self.nexus, action) {
            Ok(()) => self.store(lun, &state),
            Err(PrRefusal::Conflict) => Err(BlockError::Fenced {
                op: OP,
                lun: lun.to_string(),
            }),
            Err(PrRefusal::Invalid) => Err(BlockError::Refused {
                op: OP,
                lun: lun.to_string(),
                detail: invalid_detail(action),
            }),
        }
    }

    /// PERSISTENT RESERVE IN, READ KEYS.
    pub(crate) fn read_keys(&self, lun: &str) -> Result<PrKeys, BlockError> {
        let _locked = self.lock_shared(lun)?;
        Ok(self.load(lun)?.read_keys())
    }

    /// PERSISTENT RESERVE IN, READ RESERVATION.
    pub(crate) fn read_reservation(&self, lun: &str) -> Result<Option<PrHolder>, BlockError> {
        let _locked = self.lock_shared(lun)?;
        Ok(self.load(lun)?.read_reservation())
    }

    fn load(&self, lun: &str) -> Result<PrState, BlockError> {
        let err = |source| BlockError::Io {
            op: "read reservation state",
            lun: lun.to_string(),
            offset: 0,
            source,
        };
        let mut buf = vec![0; FIRST_READ];
        let mut n = read_full_at(&self.side, &mut buf).map_err(err)?;
        if n == FIRST_READ {
            let len = self.side.metadata().map_err(err)?.len();
            let max = 16 + PrState::MAX_BODY_LEN + 32;
            if len > max as u64 {
                return Err(err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is {len} bytes, longer than any reservation state",
                        self.side_path.display()
                    ),
                )));
            }
            buf.resize(len as usize, 0);
            n = read_full_at(&self.side, &mut buf).map_err(err)?;
        }
        if n == 0 {
            return Ok(PrState::default());
        }
        PrState::decode(&buf[..n]).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))
    }

    fn store(&self, lun: &str, state: &PrState) -> Result<(), BlockError> {
        let err = |source| BlockError::Io {
            op: "write reservation state",
            lun: lun.to_string(),
            offset: 0,
            source,
        };
        let bytes = state.encode();
        self.side.write_all_at(&bytes, 0).map_err(err)?;
        self.side.set_len(bytes.len() as u64).map_err(err)?;
        self.side.sync_data().map_err(err)
    }

    fn lock_shared(&self, lun: &str) -> Result<SharedLock<'_>, BlockError> {
        let gate = self.gate.read();
        let _one_at_a_time = self.turnstile.lock();
        lock(&self.side, libc::F_WRLCK, TURNSTILE).map_err(|e| self.lock_error(lun, e))?;
        let joined = {
            let mut sharers = self.sharers.lock();
            let first = if *sharers == 0 {
                lock(&self.side, libc::F_RDLCK, STATE)
            } else {
                Ok(())
            };
            if first.is_ok() {
                *sharers += 1;
            }
            first
        };
        unlock(&self.side, TURNSTILE);
        joined.map_err(|e| self.lock_error(lun, e))?;
        Ok(SharedLock {
            owner: self,
            _gate: gate,
        })
    }

    fn lock_exclusive(&self, lun: &str) -> Result<ExclusiveLock<'_>, BlockError> {
        let gate = self.gate.write();
        lock(&self.side, libc::F_WRLCK, TURNSTILE).map_err(|e| self.lock_error(lun, e))?;
        if let Err(e) = lock(&self.side, libc::F_WRLCK, STATE) {
            unlock(&self.side, TURNSTILE);
            return Err(self.lock_error(lun, e));
        }
        Ok(ExclusiveLock {
            owner: self,
            _gate: gate,
        })
    }

    fn lock_error(&self, lun: &str, source: io::Error) -> BlockError {
        BlockError::Io {
            op: "lock reservation state",
            lun: lun.to_string(),
            offset: 0,
            source,
        }
    }
}

/// The shared state lock, held by one or more threads of this device.
struct SharedLock<'a> {
    owner: &'a FileReservations,
    _gate: RwLockReadGuard<'a, ()>,
}

impl Drop for SharedLock<'_> {
    fn drop(&mut self) {
        let mut sharers = self.owner.sharers.lock();
        *sharers -= 1;
        if *sharers == 0 {
            unlock(&self.owner.side, STATE);
        }
        // The gate goes after this, so this device's exclusive locker finds the lock free.
    }
}

/// The turnstile and the state lock, exclusive.
struct ExclusiveLock<'a> {
    owner: &'a FileReservations,
    _gate: RwLockWriteGuard<'a, ()>,
}

impl Drop for ExclusiveLock<'_> {
    fn drop(&mut self) {
        unlock(&self.owner.side, STATE);
        unlock(&self.owner.side, TURNSTILE);
    }
}

/// The byte of the side file the turnstile locks.
const TURNSTILE: i64 = 0;
/// The byte of the side file the state lock locks.
const STATE: i64 = 1;

/// Takes an open-file-description lock of `kind` (`F_RDLCK`, `F_WRLCK`, `F_UNLCK`) on
/// byte `at` of `file`, waiting for it.
fn lock(file: &File, kind: libc::c_int, at: i64) -> io::Result<()> {
    // SAFETY: `struct flock` is plain integers, for which all zeroes is a value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at;
    fl.l_len = 1;
    loop {
        // SAFETY: F_OFD_SETLKW reads the `struct flock` we pass and nothing else; `file`
        // keeps the descriptor open for the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &fl) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn unlock(file: &File, at: i64) {
    // Unlocking a range of an open descriptor does not fail; closing it would unlock
    // too.
    let _ = lock(file, libc::F_UNLCK, at);
}

/// Reads from offset 0 until `buf` is full or the file ends; returns how much it read.
fn read_full_at(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn random_session() -> io::Result<u64> {
    let mut b = [0; 8];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// What ILLEGAL REQUEST means for `action`, for the error message.
fn invalid_detail(action: &PrOut) -> String {
    match action {
        PrOut::Preempt { abort: true, .. } => {
            "PREEMPT AND ABORT is not implemented (as in tgtd)".into()
        }
        PrOut::Preempt { victim: 0, .. } => {
            "PREEMPT with reservation key 0 needs an all-registrants reservation".into()
        }
        PrOut::Release { .. } => "RELEASE names a type other than the reservation's".into(),
        PrOut::RegisterAndMove { .. } => "REGISTER AND MOVE needs a reservation, a non-zero \
             key and another initiator's name of 1 to 223 bytes"
            .into(),
        PrOut::Register { .. } | PrOut::RegisterIgnoreExisting { .. } => {
            "no room for another registration".into()
        }
        other => format!(
            "ILLEGAL REQUEST for service action {:#x}",
            other.service_action()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::{AlignedBuf, BlockDevice, FileDevice, ReservationType};

    const WERO: ReservationType = ReservationType::WriteExclusiveRegistrantsOnly;

    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lun.img");
        FileDevice::create_image(&path, 1 << 20).unwrap();
        (dir, path)
    }

    fn block(byte: u8) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(4096);
        b.fill(byte);
        b
    }

    fn register(dev: &FileDevice, key: u64) {
        dev.persistent_reserve_out(&PrOut::Register {
            key: 0,
            new_key: key,
        })
        .unwrap();
    }

    fn fenced(r: Result<(), BlockError>, op: &str) {
        match r {
            Err(BlockError::Fenced { op: o, .. }) if o == op => {}
            other => panic!("expected Fenced {{ op: {op:?} }}, got {other:?}"),
        }
    }

    #[test]
    fn without_registrations_everyone_writes() {
        let (_dir, path) = image();
        let a = FileDevice::open_as(&path, false, "iqn.a").unwrap();
        let b = FileDevice::open(&path, false).unwrap();
        a.write_at(&block(1), 0).unwrap();
        b.write_at(&block(2), 4096).unwrap();
        assert_eq!(a.read_keys().unwrap(), PrKeys::default());
        assert_eq!(b.read_reservation().unwrap(), None);
    }

    #[test]
    fn preempted_initiator_is_fenced_and_the_preempter_writes() {
        let (_dir, path) = image();
        let a = FileDevice::open_as(&path, false, "iqn.a").unwrap();
        let b = FileDevice::open_as(&path, false, "iqn.b").unwrap();
        let outsider = FileDevice::open_as(&path, false, "iqn.outsider").unwrap();
        register(&a, 0xA);
        register(&b, 0xB);
        a.persistent_reserve_out(&PrOut::Reserve {
            key: 0xA,
            kind: WERO,
        })
        .unwrap();
        a.write_at(&block(0xA), 0).unwrap();
        b.write_at(&block(0xB), 4096).unwrap();
        fenced(outsider.write_at(&block(0xF), 8192), "write");

        b.persistent_reserve_out(&PrOut::Preempt {
            key: 0xB,
            victim: 0xA,
            kind: WERO,
            abort: false,
        })
        .unwrap();
        fenced(a.write_at(&block(0xA), 0), "write");
        b.write_at(&block(0xB), 0).unwrap();
        fenced(outsider.write_at(&block(0xF), 0), "write");
        // The fenced node's reservation commands with its old key conflict too.
        fenced(
            a.persistent_reserve_out(&PrOut::Reserve {
                key: 0xA,
                kind: WERO,
            }),
            "persistent reserve out",
        );

        for dev in [&a, &b, &outsider] {
            assert_eq!(dev.read_keys().unwrap().keys, vec![0xB]);
            let holder = dev.read_reservation().unwrap().unwrap();
            assert_eq!((holder.key, holder.kind), (0xB, Some(WERO)));
        }
        let mut back = AlignedBuf::zeroed(4096);
        a.read_at(&mut back, 0).unwrap();
        assert_eq!(&back[..], &block(0xB)[..], "reads are not checked");
    }

    #[test]
    fn two_opens_by_one_initiator_are_two_nexuses() {
        let (_dir, path) = image();
        let a1 = FileDevice::open_as(&path, false, "iqn.a").unwrap();
        let a2 = FileDevice::open_as(&path, false, "iqn.a").unwrap();
        assert_ne!(a1.nexus(), a2.nexus());
        register(&a1, 0xA);
        a1.persistent_reserve_out(&PrOut::Reserve {
            key: 0xA,
            kind: ReservationType::WriteExclusive,
        })
        .unwrap();
        a1.write_at(&block(1), 0).unwrap();
        fenced(a2.write_at(&block(2), 0), "write");
    }

    #[test]
    fn exclusive_access_types_and_preempt_and_abort_are_refused() {
        let (_dir, path) = image();
        let a = FileDevice::open_as(&path, false, "iqn.a").unwrap();
        register(&a, 0xA);
        for kind in [
            ReservationType::ExclusiveAccess,
            ReservationType::ExclusiveAccessRegistrantsOnly,
            ReservationType::ExclusiveAccessAllRegistrants,
        ] {
            let e = a
                .persistent_reserve_out(&PrOut::Reserve { key: 0xA, kind })
                .unwrap_err();
            assert!(
                matches!(&e, BlockError::Refused { detail, .. } if detail.contains("Write Exclusive")),
                "{e}"
            );
        }
        let e = a
            .persistent_reserve_out(&PrOut::Preempt {
                key: 0xA,
                victim: 0xA,
                kind: WERO,
                abort: true,
            })
            .unwrap_err();
        assert!(
            matches!(&e, BlockError::Refused { detail, .. } if detail.contains("ABORT")),
            "{e}"
        );
        assert_eq!(a.read_reservation().unwrap(), None);
    }

    #[test]
    fn the_side_file_is_private_and_shared_by_every_name_of_the_image() {
        let (dir, path) = image();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let a = FileDevice::open_as(&path, false, "iqn.a").unwrap();
        let b = FileDevice::open_as(&link, false, "iqn.b").unwrap();
        let side = dir.path().join("lun.img.pr");
        let mode = std::fs::metadata(&side).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("link.img.pr").exists());
        register(&a, 0xA);
        assert_eq!(b.read_keys().unwrap().keys, vec![0xA]);
    }

    #[test]
    fn read_only_opens_have_no_reservations() {
        let (dir, path) = image();
        let ro = FileDevice::open_as(&path, true, "iqn.ro").unwrap();
        assert!(!dir.path().join("lun.img.pr").exists());
        assert_eq!(ro.nexus(), None);
        let e = ro.read_keys().unwrap_err();
        assert!(matches!(e, BlockError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("read-only"), "{e}");
    }

    #[test]
    fn default_initiator_name_names_host_and_process() {
        let (_dir, path) = image();
        let dev = FileDevice::open(&path, false).unwrap();
        let n = dev.nexus().unwrap();
        assert!(n.initiator.starts_with("file:"), "{n}");
        assert!(
            n.initiator.ends_with(&format!(":{}", std::process::id())),
            "{n}"
        );
        let e = FileDevice::open_as(&path, false, "").unwrap_err();
        assert!(matches!(e, BlockError::BadLun(..)), "{e}");
    }

    #[test]
    fn a_damaged_side_file_fails_closed() {
        let (dir, path) = image();
        let a = FileDevice::open_as(&path, false, "iqn.a").unwrap();
        register(&a, 0xA);
        let side = dir.path().join("lun.img.pr");
        let mut bytes = std::fs::read(&side).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&side, &bytes).unwrap();
        let e = a.write_at(&block(1), 0).unwrap_err();
        match &e {
            BlockError::Io { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::InvalidData, "{e}")
            }
            other => panic!("expected an InvalidData error, got {other:?}"),
        }
        // Removing the state is a restart of the emulated target.
        std::fs::write(&side, b"").unwrap();
        a.write_at(&block(1), 0).unwrap();
    }

    /// Once PREEMPT returns, no write of the preempted nexus lands, even from threads
    /// that were writing the whole time.
    #[test]
    fn no_write_of_the_victim_lands_after_the_preempt() {
        let (_dir, path) = image();
        let a = Arc::new(FileDevice::open_as(&path, false, "iqn.a").unwrap());
        let b = FileDevice::open_as(&path, false, "iqn.b").unwrap();
        register(&a, 0xA);
        register(&b, 0xB);
        a.persistent_reserve_out(&PrOut::Reserve {
            key: 0xA,
            kind: WERO,
        })
        .unwrap();
        let started = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let a = Arc::clone(&a);
                let started = Arc::clone(&started);
                std::thread::spawn(move || {
                    let mut written = 0u64;
                    loop {
                        match a.write_at(&block(0xA), 0) {
                            Ok(()) => written += 1,
                            Err(BlockError::Fenced { .. }) => return written,
                            Err(e) => panic!("{e}"),
                        }
                        started.store(true, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        while !started.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        b.persistent_reserve_out(&PrOut::Preempt {
            key: 0xB,
            victim: 0xA,
            kind: WERO,
            abort: false,
        })
        .unwrap();
        b.write_at(&block(0xB), 0).unwrap();
        let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(written > 0);
        let mut back = AlignedBuf::zeroed(4096);
        b.read_at(&mut back, 0).unwrap();
        assert_eq!(&back[..], &block(0xB)[..]);
    }
}
