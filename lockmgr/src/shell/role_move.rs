//! Planned moves of a volume's coordinator role as the control socket asks for them
//! (`csvctl volume move`, `csvctl node drain`): ask the lock manager, then watch this
//! node's view of the volume until another node coordinates it in a newer epoch and
//! serves this node.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::VolumeHandle;
use crate::protocol::NodeId;

/// A move as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleMove {
    /// The volume's label.
    pub volume: String,
    /// The coordinator before.
    pub from: NodeId,
    /// The coordinator after.
    pub to: NodeId,
    /// The new coordinator's epoch.
    pub epoch: u64,
    /// From the request until the new coordinator served this node, in milliseconds.
    pub ms: u64,
}

/// Moves the coordinator role of `volume` to `to` (`None`: to any other live node)
/// and waits up to `within` for it to happen.
pub async fn move_role(
    volume: &str,
    handle: &VolumeHandle,
    to: Option<NodeId>,
    within: Duration,
) -> Result<RoleMove, String> {
    let start = Instant::now();
    let mut watch = handle.watch();
    let before = watch.borrow_and_update().clone();
    let Some(from) = before.coordinator else {
        return Err(format!(
            "volume {volume} has no coordinator now ({}): try again in a few seconds",
            before.role
        ));
    };
    if to == Some(from) {
        return Ok(RoleMove {
            volume: volume.to_string(),
            from,
            to: from,
            epoch: before.epoch,
            ms: 0,
        });
    }
    handle
        .hand_over(to)
        .await
        .map_err(|e| format!("volume {volume}: {e}"))?;
    let failed_before = before.hand_over_failure.as_ref().map(|(seq, _)| *seq);
    let moved = async {
        loop {
            {
                let st = watch.borrow_and_update();
                // Given up or refused on this node (when it is the coordinator): say
                // why now rather than at the timeout.
                if let Some((seq, why)) = &st.hand_over_failure
                    && Some(*seq) != failed_before
                    && st.coordinator == Some(from)
                {
                    return Err(format!("volume {volume}: {why}"));
                }
                if let Some(c) = st.coordinator
                    && c != from
                    && to.is_none_or(|t| t == c)
                    && st.epoch > before.epoch
                    && st.coordinator_serving
                {
                    return Ok(RoleMove {
                        volume: volume.to_string(),
                        from,
                        to: c,
                        epoch: st.epoch,
                        ms: start.elapsed().as_millis() as u64,
                    });
                }
            }
            if watch.changed().await.is_err() {
                return Err(format!("volume {volume}: the lock manager stopped"));
            }
        }
    };
    match tokio::time::timeout(within, moved).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "volume {volume}: the coordinator role did not move from node {from} within {within:?} \
             (`csvctl volume status` shows where it is; node {from}'s log says why a hand-over \
             was given up)"
        )),
    }
}
