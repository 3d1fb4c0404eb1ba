//! Redirected I/O wired to a running node's lock manager.
//!
//! - Sending ([`VolumeRoute`]): to the volume's coordinator, as the incarnation and
//!   epoch the lock manager has now; a coordinator that lost its own path sends to
//!   the lowest-numbered other node.
//! - Serving ([`serve_volume`], [`admit`]): the coordinator serves anyone it has not
//!   fenced who speaks for its epoch; another node serves only its coordinator (whose
//!   path failed). A node being fenced, or fenced, is refused: its writes would land
//!   after the coordinator gave its locks away.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blockdev::BlockDevice;
use lockmgr::shell::{Shell, VolumeStatus};

use crate::BLOCK_SERVICE;
use crate::client::{Opening, RedirectedDevice, Route, Target};
use crate::monitor::PathMonitor;
use crate::server::{self, Gate, Refusal, ServedCounters};
use crate::wire::{Credentials, RefusalKind};

/// How long a redirected I/O waits for a node to carry it out (through coordinator
/// changes) before it fails.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Where a volume's redirected I/O goes: its coordinator.
pub struct VolumeRoute {
    label: String,
    shell: OnceLock<Arc<Shell>>,
}

impl VolumeRoute {
    /// The route of volume `label`; it knows nowhere to go until [`Self::attach`].
    pub fn new(label: &str) -> Arc<VolumeRoute> {
        Arc::new(VolumeRoute {
            label: label.to_string(),
            shell: OnceLock::new(),
        })
    }

    /// Follows `shell`'s lock manager from now on.
    pub fn attach(&self, shell: Arc<Shell>) {
        let _ = self.shell.set(shell);
    }

    /// Asks the lock manager to register this node again (see
    /// [`lockmgr::shell::VolumeHandle::register_again`]).
    pub fn register_again(&self) {
        if let Some(h) = self.shell.get().and_then(|s| s.volume(&self.label)) {
            h.register_again();
        }
    }
}

impl Route for VolumeRoute {
    fn target(&self) -> Option<Target> {
        let shell = self.shell.get()?;
        let st = shell.volume(&self.label)?.status();
        let c = st.coordinator?;
        let node = if c != shell.id() {
            c
        } else {
            *shell.peer_ids().first()?
        };
        Some(Target {
            node,
            from: Credentials {
                epoch: st.epoch,
                incarnation: st.incarnation,
            },
        })
    }

    fn open(&self, to: u8) -> Opening<'_> {
        Box::pin(async move {
            let shell = self.shell.get().ok_or("the node is still starting")?;
            shell
                .open_service(to, &self.label, BLOCK_SERVICE)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Whether a node that sees its volume as `st` serves node `from` speaking as `who`.
pub fn admit(st: &VolumeStatus, from: u8, who: Credentials) -> Result<(), Refusal> {
    let refuse = |kind| {
        Err(Refusal {
            kind,
            epoch: st.epoch,
        })
    };
    if st.serving {
        if st
            .refused
            .get(&from)
            .is_some_and(|&upto| who.incarnation <= upto)
        {
            return refuse(RefusalKind::Fenced);
        }
        if who.epoch != st.epoch {
            return refuse(RefusalKind::WrongEpoch);
        }
        return Ok(());
    }
    if st.coordinator == Some(from) {
        if who.epoch != st.epoch {
            return refuse(RefusalKind::WrongEpoch);
        }
        return Ok(());
    }
    refuse(RefusalKind::NotServing)
}

struct VolumeGate {
    shell: Arc<Shell>,
    label: String,
}

impl Gate for VolumeGate {
    fn admit(&self, from: u8, who: Credentials) -> Result<(), Refusal> {
        match self.shell.volume(&self.label) {
            Some(h) => admit(&h.status(), from, who),
            None => Err(Refusal {
                kind: RefusalKind::NotServing,
                epoch: 0,
            }),
        }
    }
}

/// Serves the other nodes' redirected I/O of volume `label` on `direct`, this node's
/// own path. Must run inside the node's runtime.
pub fn serve_volume(
    shell: &Arc<Shell>,
    label: &str,
    direct: Arc<dyn BlockDevice>,
) -> Arc<ServedCounters> {
    let counters = Arc::new(ServedCounters::default());
    let gate: Arc<dyn Gate> = Arc::new(VolumeGate {
        shell: shell.clone(),
        label: label.to_string(),
    });
    let c = counters.clone();
    shell.services().register(
        label,
        BLOCK_SERVICE,
        Arc::new(move |from, stream| {
            tokio::spawn(server::serve(
                from,
                stream,
                direct.clone(),
                gate.clone(),
                c.clone(),
            ));
        }),
    );
    counters
}

/// The device a node uses for volume `label`: `direct` while it works, else through
/// the coordinator along `route`, with the runtime `rt` (see [`PathMonitor`]).
pub fn monitored_device(
    label: &str,
    direct: Arc<dyn BlockDevice>,
    route: Arc<VolumeRoute>,
    rt: tokio::runtime::Handle,
) -> Arc<PathMonitor> {
    let redirected = Arc::new(RedirectedDevice::new(
        direct.name(),
        direct.capacity(),
        direct.block_size(),
        route.clone(),
        rt,
        PATIENCE,
    ));
    PathMonitor::start(
        label,
        direct,
        redirected,
        Box::new(move || route.register_again()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(serving: bool, coordinator: u8, epoch: u64) -> VolumeStatus {
        VolumeStatus {
            label: "Volume1".into(),
            role: String::new(),
            coordinator: Some(coordinator),
            epoch,
            incarnation: 1,
            key: 0,
            serving,
            leases: 0,
            lockspace: None,
            since_ms: 0,
            io: None,
            refused: [(3, 4)].into_iter().collect(),
        }
    }

    fn who(epoch: u64, incarnation: u32) -> Credentials {
        Credentials { epoch, incarnation }
    }

    #[test]
    fn the_coordinator_refuses_fenced_lives_and_other_epochs() {
        let st = status(true, 1, 5);
        assert_eq!(admit(&st, 2, who(5, 9)), Ok(()));
        let fenced = admit(&st, 3, who(5, 4)).unwrap_err();
        assert_eq!(fenced.kind, RefusalKind::Fenced);
        assert_eq!(admit(&st, 3, who(5, 5)), Ok(()), "a newer life is served");
        assert_eq!(
            admit(&st, 2, who(4, 9)).unwrap_err().kind,
            RefusalKind::WrongEpoch
        );
    }

    #[test]
    fn a_follower_serves_only_its_coordinator() {
        let st = status(false, 1, 5);
        assert_eq!(admit(&st, 1, who(5, 2)), Ok(()));
        assert_eq!(
            admit(&st, 2, who(5, 2)).unwrap_err().kind,
            RefusalKind::NotServing
        );
        assert_eq!(
            admit(&st, 1, who(6, 2)).unwrap_err().kind,
            RefusalKind::WrongEpoch
        );
    }
}
