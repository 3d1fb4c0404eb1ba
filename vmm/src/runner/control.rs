//! The VM process's control socket (`<root>/run/csvfs/vmm/<vm>.sock`, root only): one
//! JSON request per line, one JSON response per line, for the `vmm` commands of the
//! VM's node.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::migration::source::{MigrateTo, Outcome, Progress};

/// The run directory of VM processes under a node's root.
pub fn run_dir(node_root: &Path) -> PathBuf {
    node_root.join("run/csvfs/vmm")
}

/// The control socket of VM `name`.
pub fn socket_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.sock"))
}

/// The console log of VM `name`.
pub fn console_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.console"))
}

/// Where the VM process waiting for a migration of VM `name` says it listens.
pub fn incoming_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.incoming"))
}

/// The VM process's own log (its errors) of VM `name`.
pub fn log_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.log"))
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// The VM's state.
    Status,
    /// Stop the VM (its disk flushed) and end the process.
    Stop,
    /// Quick migration, first half: pause the VM, write its memory and state beside
    /// its disk, and end the process.
    Save,
    /// Live migration to the VM process waiting on another node: answered by
    /// `Progress` lines, then `Migrated` (the process ends) or `Error` (the VM goes
    /// on here).
    Migrate { to: MigrateTo },
}

/// What the guest reports (the test guest's status block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestReport {
    pub counter: u64,
    pub records: u64,
    pub clock_ms: u64,
    pub pages_dirtied: u64,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Response {
    Status {
        vm: String,
        node: String,
        pid: u32,
        /// "running", "paused", or "stopped: <why>".
        state: String,
        memory_mib: u64,
        guest: GuestReport,
        disk_requests: u64,
    },
    Stopped,
    Saved {
        /// Bytes of memory written (zero pages are not).
        memory_bytes_written: u64,
        /// How long the VM had been paused when its state was on the volume.
        save_ms: u64,
    },
    /// A pre-copy round of a migration.
    Progress(Progress),
    /// The migration is done: the VM runs on the destination.
    Migrated(Outcome),
    Error {
        message: String,
    },
}

/// Sends one request to the VM process at `socket` and reads its answers, passing
/// each `Progress` to `progress`, until the final one.
pub fn call_streaming(
    socket: &Path,
    request: &Request,
    timeout: Duration,
    progress: &mut dyn FnMut(&Progress),
) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the VM process closed its control socket without a final answer",
            ));
        }
        match serde_json::from_str(&answer).map_err(std::io::Error::other)? {
            Response::Progress(p) => progress(&p),
            other => return Ok(other),
        }
    }
}

/// Sends one request to the VM process at `socket` and reads its answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> std::io::Result<Response> {
    // Only a migration answers with progress first; any other answer is the final one.
    call_streaming(socket, request, timeout, &mut |_| {})
}
