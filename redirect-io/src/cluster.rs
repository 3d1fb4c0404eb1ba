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

/// How long a redirected I/O of the lock manager itself waits (its disk heartbeat, a
/// slot read): a few heartbeats; it retries on its own.
pub const LOCK_MANAGER_PATIENCE: Duration = Duration::from_secs(2);

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

    /// Whether this node coordinates the volume now.
    pub fn coordinates(&self) -> bool {
        self.shell.get().is_some_and(|s| {
            s.volume(&self.label)
                .is_some_and(|h| h.status().coordinator == Some(s.id()))
        })
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
        if st.evicted.contains(&from)
            || st
                .refused
                .iter()
                .any(|&(n, upto)| n == from && who.incarnation <= upto)
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
    let redirected = |patience| {
        Arc::new(RedirectedDevice::new(
            direct.name(),
            direct.capacity(),
            direct.block_size(),
            route.clone(),
            rt.clone(),
            patience,
        ))
    };
    let (patient, quick) = (redirected(PATIENCE), redirected(LOCK_MANAGER_PATIENCE));
    let asks = route.clone();
    PathMonitor::start(
        label,
        direct,
        patient,
        quick,
        Box::new(move || asks.register_again()),
        Box::new(move || route.coordinates()),
    )
}

/// Takes `csvctl volume redirect` for volume `label` on this node: the node that gets
/// the request sets file system redirected mode on `path` and asks every peer to do
/// the same with theirs; peers' requests come as a stream of [`MODE_SERVICE`] with
/// one frame, `[1]` for on or `[0]` for off, answered `[1]` once done. Must run inside
/// the node's runtime.
pub fn control_user_redirect(shell: &Arc<Shell>, label: &str, path: Arc<PathMonitor>) {
    let local = path.clone();
    shell.services().register(
        label,
        MODE_SERVICE,
        Arc::new(move |_from, mut stream| {
            let path = local.clone();
            tokio::spawn(async move {
                if let Ok(Some(frame)) = stream.recv().await
                    && let [on @ (0 | 1)] = frame[..]
                {
                    path.set_user_redirect(on == 1);
                    let _ = stream.send(&[1]).await;
                }
            });
        }),
    );
    let shell_w = Arc::downgrade(shell);
    let label = label.to_string();
    shell.redirect_controls().set(
        &label.clone(),
        Arc::new(move |on| {
            let shell = shell_w.clone();
            let path = path.clone();
            let label = label.clone();
            Box::pin(async move {
                let Some(shell) = shell.upgrade() else {
                    return Vec::new();
                };
                path.set_user_redirect(on);
                let mut outcome = vec![(shell.id(), Ok(()))];
                for peer in shell.peer_ids() {
                    let asked = tokio::time::timeout(MODE_TIMEOUT, async {
                        let mut s = shell
                            .open_service(peer, &label, MODE_SERVICE)
                            .await
                            .map_err(|e| e.to_string())?;
                        s.send(&[u8::from(on)]).await.map_err(|e| e.to_string())?;
                        match s.recv().await {
                            Ok(Some(a)) if a == [1] => Ok(()),
                            Ok(_) => Err("it did not confirm".to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    })
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {MODE_TIMEOUT:?}")));
                    outcome.push((peer, asked));
                }
                outcome
            })
        }),
    );
}

/// The service number of `csvctl volume redirect` between the nodes.
pub const MODE_SERVICE: u8 = 3;

/// How long a peer may take to confirm a change of mode.
const MODE_TIMEOUT: Duration = Duration::from_secs(10);

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
            handing_over: None,
            hand_over_failure: None,
            coordinator_serving: false,
            leases: 0,
            lockspace: None,
            since_ms: 0,
            io: None,
            refused: vec![(3, 4)],
            evicted: vec![5],
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
            admit(&st, 5, who(5, 99)).unwrap_err().kind,
            RefusalKind::Fenced,
            "an evicted node, whatever its life"
        );
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
