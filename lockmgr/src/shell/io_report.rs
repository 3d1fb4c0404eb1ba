//! How a node's file system reports its I/O on each volume to status: the lock manager
//! serves the control socket, the file system above it knows the I/O; a volume's
//! reporter, registered by the file system, fills in the status's `io`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// One node's I/O on one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoReport {
    /// How the node reaches the volume: `Direct`, `BlockRedirected` or
    /// `FileSystemRedirected`.
    pub state: String,
    /// Why, when not `Direct`.
    pub reason: Option<String>,
    /// Bytes this node read and wrote on its own path to the LUN.
    pub bytes_direct: u64,
    /// Bytes it read and wrote through another node.
    pub bytes_redirected: u64,
    /// Metadata calls sent to the coordinator.
    pub metadata_calls: u64,
    /// Metadata calls carried out on this node's store (as the coordinator).
    pub local_calls: u64,
    /// Other nodes' metadata calls this node served.
    pub served_calls: u64,
    /// Metadata commits of this node's store while it coordinates (group commits).
    #[serde(default)]
    pub commits: u64,
    /// Changes in those commits.
    #[serde(default)]
    pub committed_changes: u64,
    /// This node's changes the coordinator acknowledged before they were durable, kept
    /// to be replayed if it dies before they are.
    #[serde(default)]
    pub unconfirmed: u64,
    /// Such changes replayed to a new coordinator since the daemon started.
    #[serde(default)]
    pub replayed: u64,
    /// Of those, the ones that could not be replayed or came out differently (each is
    /// in the log).
    #[serde(default)]
    pub replay_diverged: u64,
}

/// Produces a volume's report on demand.
pub type Reporter = Arc<dyn Fn() -> IoReport + Send + Sync>;

/// The reporters of a node's volumes, by label.
#[derive(Clone, Default)]
pub struct Reporters(Arc<RwLock<HashMap<String, Reporter>>>);

impl Reporters {
    /// Sets the reporter of volume `label`.
    pub fn set(&self, label: &str, reporter: Reporter) {
        self.0.write().insert(label.to_string(), reporter);
    }

    /// Volume `label`'s report now, if it has a reporter.
    pub fn report(&self, label: &str) -> Option<IoReport> {
        let r = self.0.read().get(label).cloned();
        r.map(|f| f())
    }
}
