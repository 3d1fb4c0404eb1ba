//! How `csvctl volume redirect` reaches the I/O layer: the lock manager serves the
//! control socket, the I/O layer above it knows how to send a volume's I/O through
//! the coordinator on every node; each volume's control, registered by that layer,
//! does it and says how each node took it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::protocol::NodeId;

/// How each node took a change of mode: by node id, `Err` with why it did not.
pub type RedirectOutcome = Vec<(NodeId, Result<(), String>)>;

/// Turns file system redirected mode of a volume on (`true`) or off on every node.
pub type RedirectControl =
    Arc<dyn Fn(bool) -> Pin<Box<dyn Future<Output = RedirectOutcome> + Send>> + Send + Sync>;

/// The redirect controls of a node's volumes, by label.
#[derive(Clone, Default)]
pub struct RedirectControls(Arc<RwLock<HashMap<String, RedirectControl>>>);

impl RedirectControls {
    /// Sets the control of volume `label`.
    pub fn set(&self, label: &str, control: RedirectControl) {
        self.0.write().insert(label.to_string(), control);
    }

    /// Volume `label`'s control, if it has one.
    pub fn get(&self, label: &str) -> Option<RedirectControl> {
        self.0.read().get(label).cloned()
    }
}
