//! The protocol's disk operations carried out on a real LUN: persistent reservations
//! through the `BlockDevice` reservation API, the coordinator record and heartbeat
//! slots in the volume's cluster region.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use blockdev::{BlockDevice, BlockError, PrOut, ReservationType};
use tracing::warn;

use crate::cluster_region::{ClusterRegion, CoordinatorRecord, HeartbeatSlot, RegionError};
use crate::protocol::{DiskOp, DiskReply, NodeId};

/// The reservation type csvfs holds: every registered node writes (data I/O goes
/// straight to the LUN from every node), the coordinator is the holder, and a node
/// whose key is preempted can no longer write.
pub const RESERVATION_TYPE: ReservationType = ReservationType::WriteExclusiveRegistrantsOnly;

/// Carries out one volume's disk operations for one node.
pub struct LunDisk {
    dev: Arc<dyn BlockDevice>,
    region_offset: u64,
    node: NodeId,
}

impl LunDisk {
    /// The LUN `dev`, whose cluster region starts at byte `region_offset`, used by node
    /// `node`.
    pub fn new(dev: Arc<dyn BlockDevice>, region_offset: u64, node: NodeId) -> LunDisk {
        LunDisk {
            dev,
            region_offset,
            node,
        }
    }

    /// The LUN.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// The cluster region.
    pub fn region(&self) -> ClusterRegion<'_> {
        ClusterRegion::new(self.dev.as_ref(), self.region_offset)
    }

    /// Runs `op` for this node in `incarnation` (written into its heartbeat slot).
    pub fn run(&self, op: &DiskOp, incarnation: u32) -> DiskReply {
        let pr = |a: PrOut| {
            reply(
                self.dev
                    .persistent_reserve_out(&a)
                    .map(|()| DiskReply::Done),
            )
        };
        match op {
            DiskOp::Register { key } => pr(PrOut::RegisterIgnoreExisting { new_key: *key }),
            DiskOp::Reserve { key } => pr(PrOut::Reserve {
                key: *key,
                kind: RESERVATION_TYPE,
            }),
            DiskOp::Preempt { key, victim } => pr(PrOut::Preempt {
                key: *key,
                victim: *victim,
                kind: RESERVATION_TYPE,
                abort: false,
            }),
            DiskOp::ReadKeys => reply(self.dev.read_keys().map(|k| DiskReply::Keys(k.keys))),
            DiskOp::ReadReservation => reply(
                self.dev
                    .read_reservation()
                    .map(|h| DiskReply::Holder(h.map(|h| h.key))),
            ),
            DiskOp::ReadRecord => match self.region().read_record() {
                Ok(r) => DiskReply::Record {
                    epoch: r.map_or(0, |r| r.epoch),
                },
                Err(RegionError::Device(e)) => reply(Err(e)),
                Err(e) => {
                    // A damaged record must not be read as epoch 0: the protocol retries
                    // after a rejoin, and status shows the error.
                    warn!(lun = self.dev.name(), error = %e, "coordinator record unreadable");
                    DiskReply::PossiblyFenced
                }
            },
            DiskOp::WriteRecord { epoch, node } => reply(
                self.region()
                    .write_record(&CoordinatorRecord {
                        epoch: *epoch,
                        node: *node,
                    })
                    .map(|()| DiskReply::Done),
            ),
            DiskOp::ReadSlot { node } => match self.region().read_slot(*node) {
                Ok(s) => DiskReply::Slot(s.map(|s| (s.incarnation, s.counter))),
                Err(RegionError::Device(e)) => reply(Err(e)),
                // A damaged slot is no sign of life; a live writer mends it.
                Err(_) => DiskReply::Slot(None),
            },
            // A refusal (ILLEGAL REQUEST: the receiver's key or port is not what the
            // target knows) changed nothing: the hand-over is given up, the holder
            // keeps the role.
            DiskOp::Move {
                key,
                to_key,
                to_port,
            } => match self.dev.persistent_reserve_out(&PrOut::RegisterAndMove {
                key: *key,
                new_key: *to_key,
                to_initiator: to_port.clone(),
                unregister: false,
            }) {
                Ok(()) => DiskReply::Done,
                Err(e @ BlockError::Refused { .. }) => {
                    warn!(lun = self.dev.name(), error = %e, "REGISTER AND MOVE refused");
                    DiskReply::Refused
                }
                Err(e) => reply(Err(e)),
            },
            DiskOp::Heartbeat { counter } => reply(
                self.region()
                    .write_slot(&HeartbeatSlot {
                        node: self.node,
                        incarnation,
                        counter: *counter,
                        written_ms: wall_clock_ms(),
                    })
                    .map(|()| DiskReply::Done),
            ),
        }
    }
}

/// How long the disk thread pauses after a failed operation before it answers.
const FAILURE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A reservation conflict is a conflict; anything else that failed (a lost path, a
/// reconnect, a timeout) may have cost this node its registration.
fn reply(r: Result<DiskReply, BlockError>) -> DiskReply {
    match r {
        Ok(r) => r,
        Err(BlockError::Fenced { .. }) => DiskReply::Conflict,
        Err(e) => {
            warn!(error = %e, "disk operation failed");
            // The protocol asks again at once (a new registration): a path that fails
            // fast must not turn that into a busy loop.
            std::thread::sleep(FAILURE_PAUSE);
            DiskReply::PossiblyFenced
        }
    }
}
