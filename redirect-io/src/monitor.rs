//! [`PathMonitor`]: the device a node uses for one LUN, moving between its direct path
//! and a redirected one.
//!
//! - Direct: I/O goes to the direct path. An I/O that fails there for a reason of the
//!   path (an I/O error, a timeout, a lost connection, a registration that may have
//!   gone with a reconnect) switches the node to block redirected (reason
//!   `NoDiskConnectivity`) and goes again through the redirected path: the caller
//!   sees latency, not the error. A reservation conflict is no path problem (the node
//!   is fenced) and is returned as it is.
//! - Block redirected: I/O goes through a node with a direct path. A probe thread reads
//!   the direct path every second; once reads work it asks the lock manager to
//!   register this node again if the reconnect may have cost its registration
//!   (writes wait for that), and when writes are allowed the node goes back to
//!   direct.
//! - File system redirected (reason `UserRequest`): the administrator sends every
//!   I/O of the node through the coordinator, until asked to stop; no probing.
//!
//! Persistent reservation calls always use the direct path: a registration belongs to
//! this node's own connection to the target. Every change of state is logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, BlockError, PrHolder, PrKeys, PrOut};
use parking_lot::Mutex;
use tracing::{info, warn};

/// How a node reaches the LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// On its own path.
    Direct,
    /// Its block I/O goes through another node.
    BlockRedirected,
    /// Every I/O goes through the coordinator, on request.
    FileSystemRedirected,
}

/// Why a node is not direct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its path to the LUN failed.
    NoDiskConnectivity,
    /// An administrator asked for it.
    UserRequest,
}

impl std::fmt::Display for PathState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The monitor's state and counters, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathReport {
    /// The state.
    pub state: PathState,
    /// Why, when not direct.
    pub reason: Option<Reason>,
    /// What failed on the direct path, when the reason is `NoDiskConnectivity`.
    pub detail: Option<String>,
    /// Bytes moved on the direct path.
    pub bytes_direct: u64,
    /// Bytes moved through another node.
    pub bytes_redirected: u64,
    /// Changes of state so far.
    pub changes: u64,
}

/// The direct path after an I/O on it failed.
enum Direct {
    /// It does not work: redirect.
    Failed,
    /// It works and the node is registered on it (again): try the I/O again there.
    Registered,
    /// It works but the node waits for a new registration: the I/O fails.
    Unregistered,
}

/// How often the direct path is probed while redirected for lack of it.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Asks the lock manager to register this node again on the direct path.
pub type Reregister = Box<dyn Fn() + Send + Sync>;

/// Says whether this node coordinates the volume now (in file system redirected mode
/// the coordinator's own I/O stays on its direct path: it is the node all the others
/// go through).
pub type Coordinates = Box<dyn Fn() -> bool + Send + Sync>;

struct Mode {
    state: PathState,
    reason: Option<Reason>,
    detail: Option<String>,
    since: Instant,
    /// The direct path reads again, and this node asked to be registered again.
    reregistering: bool,
}

/// The device of one LUN on one node: direct, or redirected through a peer.
pub struct PathMonitor {
    label: String,
    direct: Arc<dyn BlockDevice>,
    redirected: Arc<dyn BlockDevice>,
    redirected_quick: Arc<dyn BlockDevice>,
    mode: Mutex<Mode>,
    reregister: Reregister,
    coordinates: Coordinates,
    bytes_direct: AtomicU64,
    bytes_redirected: AtomicU64,
    changes: AtomicU64,
}

impl std::fmt::Debug for PathMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathMonitor")
            .field("label", &self.label)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

/// Errors of the direct path that mean "the path", not "this I/O" or "this node".
/// (`PossiblyFenced` is one only if the path does not read either: see
/// [`PathMonitor::path_failed`].)
fn is_path_error(e: &BlockError) -> bool {
    matches!(
        e,
        BlockError::Io { .. } | BlockError::PossiblyFenced { .. } | BlockError::Protocol { .. }
    )
}

impl PathMonitor {
    /// The device of volume `label`: `direct` while it works, else `redirected`
    /// (`redirected_quick`, the same path with less patience, for the lock manager);
    /// `reregister` asks the lock manager for a new registration, `coordinates` says
    /// whether this node coordinates the volume. Starts the probe thread, which ends
    /// when the monitor is dropped.
    pub fn start(
        label: &str,
        direct: Arc<dyn BlockDevice>,
        redirected: Arc<dyn BlockDevice>,
        redirected_quick: Arc<dyn BlockDevice>,
        reregister: Reregister,
        coordinates: Coordinates,
    ) -> Arc<PathMonitor> {
        let m = Arc::new(PathMonitor {
            label: label.to_string(),
            direct,
            redirected,
            redirected_quick,
            mode: Mutex::new(Mode {
                state: PathState::Direct,
                reason: None,
                detail: None,
                since: Instant::now(),
                reregistering: false,
            }),
            reregister,
            coordinates,
            bytes_direct: AtomicU64::new(0),
            bytes_redirected: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&m);
        std::thread::Builder::new()
            .name(format!("path-{label}"))
            .spawn(move || probe_loop(weak))
            .expect("spawn the path probe thread");
        m
    }

    /// The state and counters now.
    pub fn report(&self) -> PathReport {
        let m = self.mode.lock();
        PathReport {
            state: m.state,
            reason: m.reason,
            detail: m.detail.clone(),
            bytes_direct: self.bytes_direct.load(Ordering::Relaxed),
            bytes_redirected: self.bytes_redirected.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
        }
    }

    /// The direct path.
    pub fn direct(&self) -> &Arc<dyn BlockDevice> {
        &self.direct
    }

    /// Sends every I/O through the coordinator (`on`), or goes back to direct (the
    /// probes decide, if the direct path failed meanwhile).
    pub fn set_user_redirect(&self, on: bool) {
        let mut m = self.mode.lock();
        if on {
            self.change(
                &mut m,
                PathState::FileSystemRedirected,
                Some(Reason::UserRequest),
                None,
            );
        } else if m.state == PathState::FileSystemRedirected {
            self.change(&mut m, PathState::Direct, None, None);
        }
    }

    fn change(
        &self,
        m: &mut Mode,
        state: PathState,
        reason: Option<Reason>,
        detail: Option<String>,
    ) {
        if m.state == state && m.reason == reason {
            return;
        }
        let was = m.state;
        let lasted = m.since.elapsed();
        *m = Mode {
            state,
            reason,
            detail: detail.clone(),
            since: Instant::now(),
            reregistering: false,
        };
        self.changes.fetch_add(1, Ordering::Relaxed);
        match state {
            PathState::Direct => info!(
                volume = self.label,
                from = %was,
                after_ms = lasted.as_millis() as u64,
                "I/O path: Direct"
            ),
            _ => warn!(
                volume = self.label,
                state = %state,
                reason = ?reason,
                detail = detail.as_deref().unwrap_or(""),
                "I/O path changed"
            ),
        }
    }

    fn redirected_now(&self) -> bool {
        match self.mode.lock().state {
            PathState::Direct => false,
            PathState::BlockRedirected => true,
            PathState::FileSystemRedirected => !(self.coordinates)(),
        }
    }

    /// The direct path failed with `e`: redirect (if still direct).
    fn lost_path(&self, op: &str, e: &BlockError) {
        let mut m = self.mode.lock();
        if m.state == PathState::Direct {
            self.change(
                &mut m,
                PathState::BlockRedirected,
                Some(Reason::NoDiskConnectivity),
                Some(format!("{op}: {e}")),
            );
        }
    }

    /// Runs `io` on the direct path, or on the redirected one when the node is
    /// redirected or the direct attempt fails for the path's sake.
    fn route<T>(
        &self,
        op: &str,
        bytes: u64,
        quick: bool,
        mut io: impl FnMut(&dyn BlockDevice) -> Result<T, BlockError>,
    ) -> Result<T, BlockError> {
        if !self.redirected_now() {
            let mut again = true;
            loop {
                match io(self.direct.as_ref()) {
                    Ok(v) => {
                        self.bytes_direct.fetch_add(bytes, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(e) if is_path_error(&e) => match self.after_error(&e) {
                        Direct::Failed => {
                            self.lost_path(op, &e);
                            break;
                        }
                        Direct::Registered if again => again = false,
                        _ => return Err(e),
                    },
                    Err(e) => return Err(e),
                }
            }
        }
        let redirected = if quick {
            &self.redirected_quick
        } else {
            &self.redirected
        };
        let v = io(redirected.as_ref())?;
        self.bytes_redirected.fetch_add(bytes, Ordering::Relaxed);
        Ok(v)
    }

    /// What an I/O error `e` on the direct path says about the path. A write held
    /// back for a registration that a reconnect may have cost (a target that
    /// restarted, a reset) comes from a path that works: if it reads, the node is
    /// asked to register again (unless it has meanwhile) and the I/O is not sent
    /// elsewhere.
    fn after_error(&self, e: &BlockError) -> Direct {
        if !matches!(e, BlockError::PossiblyFenced { .. }) {
            return Direct::Failed;
        }
        let mut block = vec![0u8; self.direct.block_size() as usize];
        if self.direct.read_at(&mut block, 0).is_err() {
            return Direct::Failed;
        }
        if self.direct.write_ready().is_ok() {
            return Direct::Registered;
        }
        (self.reregister)();
        Direct::Unregistered
    }

    /// The same device for the lock manager's own I/O: when redirected, an I/O waits
    /// for a node to carry it out only briefly (the lock manager must go on, and
    /// retries, while there is no coordinator to send to: it may be becoming one).
    pub fn for_lock_manager(self: &Arc<Self>) -> Arc<dyn BlockDevice> {
        Arc::new(LockManagerView(self.clone()))
    }

    /// One probe of the direct path while redirected for lack of it.
    fn probe(&self) {
        {
            let m = self.mode.lock();
            if m.state != PathState::BlockRedirected {
                return;
            }
        }
        let mut block = vec![0u8; self.direct.block_size() as usize];
        if self.direct.read_at(&mut block, 0).is_err() {
            return;
        }
        match self.direct.write_ready() {
            Ok(()) => {
                let mut m = self.mode.lock();
                if m.state == PathState::BlockRedirected {
                    self.change(&mut m, PathState::Direct, None, None);
                }
            }
            Err(_) => {
                let mut m = self.mode.lock();
                if !m.reregistering {
                    m.reregistering = true;
                    drop(m);
                    info!(
                        volume = self.label,
                        "the direct path reads again; registering this node on it again before writing"
                    );
                    (self.reregister)();
                }
            }
        }
    }
}

fn probe_loop(monitor: Weak<PathMonitor>) {
    loop {
        std::thread::sleep(PROBE_INTERVAL);
        let Some(m) = monitor.upgrade() else {
            return;
        };
        m.probe();
    }
}

impl BlockDevice for PathMonitor {
    fn block_size(&self) -> u32 {
        self.direct.block_size()
    }

    fn capacity(&self) -> u64 {
        self.direct.capacity()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let len = buf.len() as u64;
        // A failed direct read leaves nothing the redirected one does not overwrite.
        self.route("read", len, false, |d| d.read_at(buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        self.route("write", buf.len() as u64, false, |d| {
            d.write_at(buf, offset)
        })
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.route("flush", 0, false, |d| d.flush())
    }

    fn name(&self) -> &str {
        self.direct.name()
    }

    fn persistent_reserve_out(&self, action: &PrOut) -> Result<(), BlockError> {
        self.direct.persistent_reserve_out(action)
    }

    fn read_keys(&self) -> Result<PrKeys, BlockError> {
        self.direct.read_keys()
    }

    fn read_reservation(&self) -> Result<Option<PrHolder>, BlockError> {
        self.direct.read_reservation()
    }

    fn path_generation(&self) -> u64 {
        self.direct.path_generation()
    }

    fn reservation_port(&self) -> Option<String> {
        self.direct.reservation_port()
    }

    fn write_ready(&self) -> Result<(), BlockError> {
        Ok(())
    }
}

/// [`PathMonitor::for_lock_manager`].
#[derive(Debug)]
struct LockManagerView(Arc<PathMonitor>);

impl BlockDevice for LockManagerView {
    fn block_size(&self) -> u32 {
        self.0.block_size()
    }

    fn capacity(&self) -> u64 {
        self.0.capacity()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let len = buf.len() as u64;
        self.0.route("read", len, true, |d| d.read_at(buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        self.0
            .route("write", buf.len() as u64, true, |d| d.write_at(buf, offset))
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.0.route("flush", 0, true, |d| d.flush())
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    fn persistent_reserve_out(&self, action: &PrOut) -> Result<(), BlockError> {
        self.0.persistent_reserve_out(action)
    }

    fn read_keys(&self) -> Result<PrKeys, BlockError> {
        self.0.read_keys()
    }

    fn read_reservation(&self) -> Result<Option<PrHolder>, BlockError> {
        self.0.read_reservation()
    }

    fn path_generation(&self) -> u64 {
        self.0.path_generation()
    }

    fn reservation_port(&self) -> Option<String> {
        self.0.reservation_port()
    }
}
