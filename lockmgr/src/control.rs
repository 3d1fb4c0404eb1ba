//! The node daemon's control socket (`/run/csvfs/<node>.sock`, root only), through
//! which `csvctl` and `vmm` talk to the daemon of their host: one JSON request per
//! line, one JSON response per line.
//!
//! Leases taken through a connection are the connection's: they are released when it
//! closes, and given back as soon as they are recalled (a control client has nothing
//! to flush). So are its byte-range locks: every (volume, file, owner) it used is
//! released when it closes, as a process's locks are at its last close.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use crate::protocol::{LockKind, Mode, RangeOp, RangeOutcome, ResourceId};
use crate::shell::role_move::{RoleMove, move_role};
use crate::shell::{Shell, VolumeStatus};

/// The longest wait a control request may ask for (a day).
pub const MAX_WAIT_MS: u64 = 24 * 3600 * 1000;

/// The control socket of node `node` under the run directory `run_dir`.
pub fn socket_path(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join(format!("{node}.sock"))
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// The node's state.
    Status,
    /// A lease on a named resource of a volume's lockspace.
    Acquire {
        /// The volume's label.
        volume: String,
        /// The resource's name.
        resource: String,
        /// True for an exclusive lease.
        exclusive: bool,
        /// How long to wait for the grant.
        timeout_ms: u64,
    },
    /// Gives a lease back.
    Release {
        /// The volume's label.
        volume: String,
        /// The resource's name.
        resource: String,
    },
    /// A POSIX byte-range lock operation on a file of a volume, for lock owner `owner`
    /// of this connection.
    Range {
        /// The volume's label.
        volume: String,
        /// The file (inode number).
        file: u64,
        /// The lock owner.
        owner: u64,
        /// The operation.
        lock: LockRequest,
        /// How long a waiting lock may wait (then it is given up).
        timeout_ms: u64,
    },
    /// A planned move of a volume's coordinator role to node `to`.
    Move {
        /// The volume's label.
        volume: String,
        /// The node id to move it to.
        to: u8,
        /// How long to wait for the move.
        timeout_ms: u64,
    },
    /// Moves every coordinator role off node `node` (before maintenance).
    Drain {
        /// The node id to drain.
        node: u8,
        /// How long to wait for each move.
        timeout_ms: u64,
    },
    /// Evicts node `node` from the cluster on every volume: fenced, what it held freed,
    /// refused from then on.
    Evict {
        /// The node id to evict.
        node: u8,
        /// How long to wait for every volume's coordinator to take it.
        timeout_ms: u64,
    },
    /// File system redirected mode of a volume on every node: on sends every I/O of
    /// the nodes through the coordinator, off returns them to direct I/O.
    Redirect {
        /// The volume's label.
        volume: String,
        /// On or off.
        on: bool,
    },
}

/// A byte-range lock operation, as the control socket names it. Ranges are
/// `[start, end)`; an `end` of 18446744073709551615 means to the end of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LockRequest {
    /// F_GETLK.
    Test {
        /// A write (exclusive) lock, else a read lock.
        write: bool,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// F_SETLK, or F_SETLKW with `wait`.
    Lock {
        /// A write (exclusive) lock, else a read lock.
        write: bool,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Wait for a conflicting lock to go.
        wait: bool,
    },
    /// F_UNLCK.
    Unlock {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Everything the owner holds on the file (a close).
    Release,
}

/// A lock in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    /// The holder's node id.
    pub node: u8,
    /// The holder's lock owner.
    pub owner: u64,
    /// A write lock.
    pub write: bool,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// The answer to a [`LockRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum LockAnswer {
    /// Taken, unlocked or released.
    Done,
    /// Refused: a conflicting lock is held.
    Busy,
    /// Nothing conflicts (a test).
    Free,
    /// This lock conflicts (a test).
    Blocker(HeldLock),
    /// The node was fenced: its locks are gone.
    Lost,
}

fn kind(write: bool) -> LockKind {
    if write {
        LockKind::Write
    } else {
        LockKind::Read
    }
}

impl LockRequest {
    fn op(self) -> RangeOp {
        match self {
            LockRequest::Test { write, start, end } => RangeOp::Test {
                kind: kind(write),
                start,
                end,
            },
            LockRequest::Lock {
                write,
                start,
                end,
                wait,
            } => RangeOp::Lock {
                kind: kind(write),
                start,
                end,
                wait,
            },
            LockRequest::Unlock { start, end } => RangeOp::Unlock { start, end },
            LockRequest::Release => RangeOp::Release,
        }
    }
}

impl From<RangeOutcome> for LockAnswer {
    fn from(o: RangeOutcome) -> LockAnswer {
        match o {
            RangeOutcome::Done => LockAnswer::Done,
            RangeOutcome::Busy => LockAnswer::Busy,
            RangeOutcome::Free => LockAnswer::Free,
            RangeOutcome::Blocker(l) => LockAnswer::Blocker(HeldLock {
                node: l.owner.node,
                owner: l.owner.owner,
                write: l.kind == LockKind::Write,
                start: l.start,
                end: l.end,
            }),
            RangeOutcome::Lost => LockAnswer::Lost,
        }
    }
}

/// A node's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// Its id.
    pub id: u8,
    /// Its process id.
    pub pid: u32,
    /// Each volume's state.
    pub volumes: Vec<VolumeStatus>,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Response {
    /// The node's state.
    Status(NodeStatus),
    /// The lease is granted in this epoch.
    Granted {
        /// The grant's epoch (the fencing token).
        epoch: u64,
    },
    /// The answer to a byte-range lock operation.
    Lock {
        /// The answer.
        answer: LockAnswer,
    },
    /// Done.
    Done,
    /// The coordinator roles moved (none: nothing to move).
    Moved {
        /// One per volume moved.
        moves: Vec<RoleMove>,
        /// Volumes whose role did not move, each with why.
        #[serde(default)]
        errors: Vec<String>,
    },
    /// The volumes whose coordinator evicted the node.
    Evicted {
        /// Their labels.
        volumes: Vec<String>,
        /// Volumes where it could not be done, each with why.
        #[serde(default)]
        errors: Vec<String>,
    },
    /// How each node took a change of redirected mode.
    Redirected {
        /// By node id: `None` if it took it, else why not.
        nodes: Vec<(u8, Option<String>)>,
    },
    /// The request failed; the message says why and what to do.
    Error {
        /// One line.
        message: String,
    },
}

/// Evicts `node` on one volume and waits up to `within` until this node knows the
/// coordinator took it (it coordinates, or the coordinator told it).
async fn evict_on(
    v: &crate::shell::VolumeHandle,
    node: u8,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut watch = v.watch();
    loop {
        v.evict(node).await?;
        let asked = tokio::time::Instant::now();
        while tokio::time::Instant::now() < asked + Duration::from_secs(1) {
            if watch.borrow_and_update().evicted.contains(&node) {
                return Ok(());
            }
            if let Ok(Err(_)) =
                tokio::time::timeout_at(asked + Duration::from_secs(1), watch.changed()).await
            {
                return Err("the volume's lock manager stopped".to_string());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the coordinator did not confirm the eviction of node {node} within {within:?}"
            ));
        }
    }
}

/// The resource id of a resource name.
pub fn resource_id(name: &str) -> ResourceId {
    let h = blake3::hash(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Serves the control socket at `path` (replacing a stale one) until the process
/// ends. The socket is made root only (mode 0600).
pub fn serve(shell: Arc<Shell>, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        // Root only, before the socket exists: nobody else can reach it in the moment
        // between bind and chmod.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_client(shell.clone(), stream));
                }
                Err(e) => warn!(error = %e, "control socket accept failed"),
            }
        }
    });
    Ok(())
}

async fn serve_client(shell: Arc<Shell>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut held: BTreeSet<(String, ResourceId)> = BTreeSet::new();
    let mut owners: BTreeSet<(String, u64, u64)> = BTreeSet::new();
    // A line that came while a request was being answered.
    let mut next: Option<String> = None;
    let mut gone = false;
    while !gone {
        let line = match next.take() {
            Some(l) => l,
            None => match lines.next_line().await {
                Ok(Some(l)) => l,
                _ => break,
            },
        };
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(r) => {
                // Watch the socket while waiting: a client that dies during a long
                // wait gives up the wait (dropping it cancels it) and what it holds.
                let work = answer(&shell, r, &mut held, &mut owners);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        l = lines.next_line(), if next.is_none() => match l {
                            Ok(Some(l)) => next = Some(l),
                            _ => {
                                gone = true;
                                break Response::Done;
                            }
                        },
                    }
                }
            }
            Err(e) => Response::Error {
                message: format!("bad control request: {e}"),
            },
        };
        if gone {
            break;
        }
        let mut out = serde_json::to_string(&response).unwrap_or_default();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            break;
        }
    }
    for (volume, res) in held {
        if let Some(v) = shell.volume(&volume) {
            v.release(res);
        }
    }
    for (volume, file, owner) in owners {
        if let Some(v) = shell.volume(&volume) {
            // The close: nobody waits for the answer.
            let v = v.clone();
            tokio::spawn(async move {
                let _ = v.range(file, owner, RangeOp::Release, None).await;
            });
        }
    }
}

fn no_volume(shell: &Shell, v: &str) -> Response {
    Response::Error {
        message: format!(
            "node {} serves no volume {v:?}: see `csvctl volume status`",
            shell.node()
        ),
    }
}

async fn answer(
    shell: &Shell,
    request: Request,
    held: &mut BTreeSet<(String, ResourceId)>,
    owners: &mut BTreeSet<(String, u64, u64)>,
) -> Response {
    let no_volume = |v: &str| no_volume(shell, v);
    match request {
        Request::Status => Response::Status(NodeStatus {
            node: shell.node().to_string(),
            id: shell.id(),
            pid: std::process::id(),
            volumes: shell.status(),
        }),
        Request::Acquire {
            volume,
            resource,
            exclusive,
            timeout_ms,
        } => {
            let Some(v) = shell.volume(&volume) else {
                return no_volume(&volume);
            };
            let res = resource_id(&resource);
            let mode = if exclusive {
                Mode::Exclusive
            } else {
                Mode::Shared
            };
            match v
                .acquire(
                    res,
                    mode,
                    true,
                    Duration::from_millis(timeout_ms.min(MAX_WAIT_MS)),
                )
                .await
            {
                Ok(epoch) => {
                    held.insert((volume, res));
                    Response::Granted { epoch }
                }
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            }
        }
        Request::Release { volume, resource } => {
            let Some(v) = shell.volume(&volume) else {
                return no_volume(&volume);
            };
            let res = resource_id(&resource);
            v.release(res);
            held.remove(&(volume, res));
            Response::Done
        }
        Request::Move {
            volume,
            to,
            timeout_ms,
        } => {
            let Some(v) = shell.volume(&volume) else {
                return no_volume(&volume);
            };
            let within = Duration::from_millis(timeout_ms.min(MAX_WAIT_MS));
            match move_role(&volume, v, Some(to), within).await {
                Ok(m) => Response::Moved {
                    moves: vec![m],
                    errors: Vec::new(),
                },
                Err(message) => Response::Error { message },
            }
        }
        Request::Drain { node, timeout_ms } => {
            let within = Duration::from_millis(timeout_ms.min(MAX_WAIT_MS));
            let (mut moves, mut errors) = (Vec::new(), Vec::new());
            for st in shell.status() {
                let Some(v) = shell.volume(&st.label) else {
                    continue;
                };
                if st.coordinator.is_none() {
                    errors.push(format!(
                        "volume {}: no coordinator now ({}); run the drain again in a few seconds",
                        st.label, st.role
                    ));
                    continue;
                }
                if st.coordinator != Some(node) {
                    continue;
                }
                match move_role(&st.label, v, None, within).await {
                    Ok(m) => moves.push(m),
                    Err(e) => errors.push(e),
                }
            }
            Response::Moved { moves, errors }
        }
        Request::Evict { node, timeout_ms } => {
            let within = Duration::from_millis(timeout_ms.min(MAX_WAIT_MS));
            let (mut volumes, mut errors) = (Vec::new(), Vec::new());
            for st in shell.status() {
                let Some(v) = shell.volume(&st.label) else {
                    continue;
                };
                match evict_on(v, node, within).await {
                    Ok(()) => volumes.push(st.label),
                    Err(e) => errors.push(format!("volume {}: {e}", st.label)),
                }
            }
            Response::Evicted { volumes, errors }
        }
        Request::Redirect { volume, on } => {
            let Some(control) = shell.redirect_controls().get(&volume) else {
                return no_volume(&volume);
            };
            let nodes = control(on)
                .await
                .into_iter()
                .map(|(n, r)| (n, r.err()))
                .collect();
            Response::Redirected { nodes }
        }
        Request::Range {
            volume,
            file,
            owner,
            lock,
            timeout_ms,
        } => {
            let Some(v) = shell.volume(&volume) else {
                return no_volume(&volume);
            };
            owners.insert((volume.clone(), file, owner));
            let within = Some(Duration::from_millis(timeout_ms.min(MAX_WAIT_MS)));
            match v.range(file, owner, lock.op(), within).await {
                Ok(o) => Response::Lock { answer: o.into() },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            }
        }
    }
}

/// A blocking client of a node's control socket.
pub struct Client {
    reader: BufReader<std::os::unix::net::UnixStream>,
    path: PathBuf,
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error(
        "cannot reach the node daemon at {path}: {source} (is `csvfs node` running on this host?)"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The conversation broke off.
    #[error("the node daemon at {path} stopped answering: {what}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        what: String,
    },
    /// The daemon said no.
    #[error("{0}")]
    Refused(String),
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
            ClientError::Connect {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Client {
            reader: BufReader::new(stream),
            path: path.to_path_buf(),
        })
    }

    /// Sends one request and reads its response; an `Error` response is
    /// [`ClientError::Refused`].
    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        let io = |what: String| ClientError::Io {
            path: self.path.clone(),
            what,
        };
        let mut line = serde_json::to_string(request).map_err(|e| io(e.to_string()))?;
        line.push('\n');
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| io(e.to_string()))?;
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(|e| io(e.to_string()))?;
        if n == 0 {
            return Err(io("connection closed".into()));
        }
        match serde_json::from_str(&answer).map_err(|e| io(format!("bad answer: {e}")))? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            r => Ok(r),
        }
    }

    /// A byte-range lock operation.
    pub fn lock(
        &mut self,
        volume: &str,
        file: u64,
        owner: u64,
        lock: LockRequest,
        timeout: Duration,
    ) -> Result<LockAnswer, ClientError> {
        match self.request(&Request::Range {
            volume: volume.to_string(),
            file,
            owner,
            lock,
            timeout_ms: timeout.as_millis() as u64,
        })? {
            Response::Lock { answer } => Ok(answer),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// The node's state.
    pub fn status(&mut self) -> Result<NodeStatus, ClientError> {
        match self.request(&Request::Status)? {
            Response::Status(s) => Ok(s),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::IoReport;

    #[test]
    fn a_status_with_everything_filled_in_reads_back() {
        let status = Response::Status(NodeStatus {
            node: "n1".into(),
            id: 1,
            pid: 7,
            volumes: vec![VolumeStatus {
                label: "Volume1".into(),
                role: "coordinator, epoch 3".into(),
                coordinator: Some(1),
                epoch: 3,
                incarnation: 2,
                key: 0x0102,
                serving: true,
                handing_over: None,
                hand_over_failure: None,
                coordinator_serving: false,
                leases: 1,
                lockspace: Some(4),
                since_ms: 5,
                io: Some(IoReport {
                    state: "BlockRedirected".into(),
                    reason: Some("NoDiskConnectivity".into()),
                    ..IoReport::default()
                }),
                refused: vec![(2, 9), (3, u32::MAX)],
                evicted: vec![3],
            }],
        });
        let line = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), status);
        let redirected = Response::Redirected {
            nodes: vec![(1, None), (2, Some("no answer".into()))],
        };
        let line = serde_json::to_string(&redirected).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), redirected);
    }
}
