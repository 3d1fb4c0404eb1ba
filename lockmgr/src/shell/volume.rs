//! One volume's lock manager on one node: the task that drives the sans-IO
//! [`Node`] with the clock, the peers' messages and the disk's replies, and carries
//! out what it asks; the disk thread that runs its disk operations one at a time;
//! and the handle through which the node's users (the file system, the control
//! socket) acquire and release leases and watch the role.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{error, info};

use super::lun_disk::LunDisk;
use super::peers::{Inbound, Peers};
use crate::protocol::{
    Action, DiskOp, DiskReply, Epoch, Event, Millis, Mode, Node, NodeId, RangeOp, RangeOutcome,
    ResourceId, Role, Timing,
};
use crate::wire::Frame;

/// What a volume's users are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The coordinator wants this lease back: flush, drop caches, release.
    Recall(ResourceId),
    /// Every lease is gone: drop every cache.
    LostAll,
}

/// A volume's state as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// The label.
    pub label: String,
    /// The role, in words.
    pub role: String,
    /// The coordinating node, if known.
    pub coordinator: Option<NodeId>,
    /// The epoch this node knows.
    pub epoch: Epoch,
    /// This node's incarnation.
    pub incarnation: u32,
    /// This node's reservation key.
    pub key: u64,
    /// True while this node coordinates and may write the metadata.
    pub serving: bool,
    /// On the coordinator: the node a planned hand-over gives the role to, and the
    /// hand-over's number.
    #[serde(default)]
    pub handing_over: Option<(NodeId, u64)>,
    /// Why the last hand-over this node began was given up or refused, with its
    /// number.
    #[serde(default)]
    pub hand_over_failure: Option<(u64, String)>,
    /// A coordinator serves this node now (itself, or one that acknowledged its
    /// heartbeats in this epoch within a lease).
    #[serde(default)]
    pub coordinator_serving: bool,
    /// Leases this node may rely on now.
    pub leases: usize,
    /// Leases in the lockspace (on the coordinator).
    pub lockspace: Option<usize>,
    /// When the role last changed, ms since the Unix epoch.
    pub since_ms: u64,
    /// The node's I/O on the volume, when its file system reports it.
    #[serde(default)]
    pub io: Option<super::IoReport>,
    /// On the coordinator: nodes whose redirected I/O is refused, with the highest
    /// incarnation refused (they are fenced or being fenced), by node id. (A list, not
    /// a map: JSON map keys are strings.)
    #[serde(default)]
    pub refused: Vec<(NodeId, u32)>,
    /// Nodes evicted from the cluster (`csvctl node evict`), as far as this node knows.
    #[serde(default)]
    pub evicted: Vec<NodeId>,
}

/// Tells the asker whether a request was taken; its actions, if it was.
fn answered(
    done: oneshot::Sender<Result<(), String>>,
    result: Result<Vec<Action>, String>,
) -> Vec<Action> {
    match result {
        Ok(actions) => {
            let _ = done.send(Ok(()));
            actions
        }
        Err(e) => {
            let _ = done.send(Err(e));
            Vec::new()
        }
    }
}

enum Command {
    Acquire {
        res: ResourceId,
        mode: Mode,
        auto_release: bool,
        done: oneshot::Sender<Epoch>,
    },
    Release {
        res: ResourceId,
    },
    Range {
        file: u64,
        owner: u64,
        op: RangeOp,
        done: oneshot::Sender<RangeOutcome>,
    },
    RegisterAgain,
    HandOver {
        to: Option<NodeId>,
        done: oneshot::Sender<Result<(), String>>,
    },
    StoreClosed {
        epoch: Epoch,
        seq: u64,
    },
    KeepStore,
    Evict {
        node: NodeId,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The handle of a running volume service.
#[derive(Clone)]
pub struct VolumeHandle {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<VolumeStatus>,
    events: broadcast::Sender<LeaseEvent>,
}

/// Why a lease was not granted.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The volume's service stopped.
    #[error("the lock manager of this volume stopped")]
    Stopped,
    /// No grant in time.
    #[error(
        "no grant within {0:?}: the volume has no serving coordinator, or the lease is held elsewhere"
    )]
    Timeout(Duration),
}

impl VolumeHandle {
    /// Asks for a lease on `res` and waits for it; returns the epoch of the grant (the
    /// fencing token). With `auto_release` the service gives the lease back as soon as
    /// it is recalled (for holders with nothing to flush).
    pub async fn acquire(
        &self,
        res: ResourceId,
        mode: Mode,
        auto_release: bool,
        within: Duration,
    ) -> Result<Epoch, LeaseError> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Acquire {
                res,
                mode,
                auto_release,
                done,
            })
            .map_err(|_| LeaseError::Stopped)?;
        // Until granted, this caller counts as a user of the lease: a timeout, or the
        // caller giving up (dropping this future), lets go of it.
        let mut user = UserGuard {
            handle: self,
            res,
            armed: true,
        };
        let r = match tokio::time::timeout(within, rx).await {
            Ok(Ok(epoch)) => Ok(epoch),
            Ok(Err(_)) => Err(LeaseError::Stopped),
            Err(_) => Err(LeaseError::Timeout(within)),
        };
        user.armed = r.is_err();
        r
    }

    /// A byte-range lock operation of lock owner `owner` on `file`, answered by the
    /// coordinator. A waiting F_SETLKW is given up when this future is dropped (or
    /// `within` passes).
    pub async fn range(
        &self,
        file: u64,
        owner: u64,
        op: RangeOp,
        within: Option<Duration>,
    ) -> Result<RangeOutcome, LeaseError> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Range {
                file,
                owner,
                op,
                done,
            })
            .map_err(|_| LeaseError::Stopped)?;
        match within {
            Some(d) => match tokio::time::timeout(d, rx).await {
                Ok(r) => r.map_err(|_| LeaseError::Stopped),
                Err(_) => Err(LeaseError::Timeout(d)),
            },
            None => rx.await.map_err(|_| LeaseError::Stopped),
        }
    }

    /// Gives a lease back.
    pub fn release(&self, res: ResourceId) {
        let _ = self.commands.send(Command::Release { res });
    }

    /// Registers this node again as a new incarnation (its direct path came back on a
    /// new connection: see [`Node::register_again`]).
    pub fn register_again(&self) {
        let _ = self.commands.send(Command::RegisterAgain);
    }

    /// Asks for a planned hand-over of the coordinator role to `to` (`None`: any other
    /// live node); the coordinator carries it out. Returns once asked: the role moves
    /// when the coordinator in the status changes. The error says why it cannot be
    /// asked now.
    pub async fn hand_over(&self, to: Option<NodeId>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::HandOver { to, done })
            .map_err(|_| LeaseError::Stopped.to_string())?;
        rx.await.map_err(|_| LeaseError::Stopped.to_string())?
    }

    /// Evicts `node` from the cluster (on the coordinator; asked of it from elsewhere).
    pub async fn evict(&self, node: NodeId) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Evict { node, done })
            .map_err(|_| LeaseError::Stopped.to_string())?;
        rx.await.map_err(|_| LeaseError::Stopped.to_string())?
    }

    /// The user keeps the volume's metadata store while this node coordinates: a
    /// hand-over waits for [`VolumeHandle::store_closed`].
    pub fn keep_store(&self) {
        let _ = self.commands.send(Command::KeepStore);
    }

    /// The user closed the metadata store it had opened for `epoch` (everything is
    /// on the LUN), or has none open, having seen hand-over `seq` in the status.
    pub fn store_closed(&self, epoch: Epoch, seq: u64) {
        let _ = self.commands.send(Command::StoreClosed { epoch, seq });
    }

    /// The volume's state now.
    pub fn status(&self) -> VolumeStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch(&self) -> watch::Receiver<VolumeStatus> {
        self.status.clone()
    }

    /// A receiver of recalls and losses.
    pub fn events(&self) -> broadcast::Receiver<LeaseEvent> {
        self.events.subscribe()
    }
}

/// Releases a lease request whose caller did not get it.
struct UserGuard<'a> {
    handle: &'a VolumeHandle,
    res: ResourceId,
    armed: bool,
}

impl Drop for UserGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.handle.release(self.res);
        }
    }
}

/// What a volume service needs to start.
pub struct VolumeSetup {
    /// The label.
    pub label: String,
    /// This node's id.
    pub node: NodeId,
    /// Every node's id.
    pub members: Vec<NodeId>,
    /// The protocol's timing.
    pub timing: Timing,
    /// The LUN.
    pub disk: Arc<LunDisk>,
    /// Where this node keeps the volume's last incarnation.
    pub incarnation_file: PathBuf,
}

/// Starts a volume's service: reads and raises the incarnation (the larger of the
/// file's and the LUN slot's, plus one), and spawns the task and the disk thread.
pub fn start(
    setup: VolumeSetup,
    peers: Peers,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    clock: Instant,
) -> std::io::Result<VolumeHandle> {
    let from_file = std::fs::read_to_string(&setup.incarnation_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    // A slot that cannot be read must not be taken for "never written": the
    // incarnation could repeat one the node used before.
    let from_lun = match setup.disk.region().read_slot(setup.node) {
        Ok(slot) => slot.map_or(0, |s| s.incarnation),
        Err(crate::cluster_region::RegionError::Device(e)) => {
            return Err(std::io::Error::other(format!(
                "volume {}: cannot read this node's heartbeat slot: {e}",
                setup.label
            )));
        }
        // A damaged slot: the file's number (and the rewrite that follows) decide.
        Err(_) => 0,
    };
    let incarnation = from_file.max(from_lun) + 1;
    save_incarnation(&setup.incarnation_file, incarnation)?;

    let now = millis(clock);
    let mut node = Node::new(
        setup.node,
        incarnation,
        setup.members.clone(),
        setup.timing,
        now,
    );
    node.set_reservation_port(setup.disk.device().reservation_port());
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (disk_tx, disk_rx) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(256);
    let (status_tx, status) = watch::channel(VolumeStatus {
        label: setup.label.clone(),
        role: Role::Joining.to_string(),
        coordinator: None,
        epoch: 0,
        incarnation,
        key: node.key(),
        serving: false,
        handing_over: None,
        hand_over_failure: None,
        coordinator_serving: false,
        leases: 0,
        lockspace: None,
        since_ms: super::lun_disk::wall_clock_ms(),
        io: None,
        refused: Default::default(),
        evicted: Vec::new(),
    });
    let (op_tx, op_rx) = std::sync::mpsc::channel::<(u64, DiskOp, u32)>();
    let disk = setup.disk.clone();
    let label = setup.label.clone();
    std::thread::Builder::new()
        .name(format!("disk-{label}"))
        .spawn(move || {
            while let Ok((id, op, incarnation)) = op_rx.recv() {
                let reply = disk.run(&op, incarnation);
                if disk_tx.send((id, reply)).is_err() {
                    return;
                }
            }
        })?;
    let task = VolumeTask {
        label: setup.label,
        node,
        clock,
        peers,
        disk_ops: op_tx,
        incarnation_file: setup.incarnation_file,
        saved_incarnation: incarnation,
        users: BTreeMap::new(),
        waiting: BTreeMap::new(),
        ranges_waiting: BTreeMap::new(),
        auto_release: BTreeSet::new(),
        events: events.clone(),
        status: status_tx,
        coordinator: None,
    };
    tokio::spawn(task.run(command_rx, inbox, disk_rx));
    Ok(VolumeHandle {
        commands,
        status,
        events,
    })
}

fn save_incarnation(path: &PathBuf, incarnation: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{incarnation}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn millis(clock: Instant) -> Millis {
    clock.elapsed().as_millis() as Millis
}

struct VolumeTask {
    label: String,
    node: Node,
    clock: Instant,
    peers: Peers,
    disk_ops: std::sync::mpsc::Sender<(u64, DiskOp, u32)>,
    incarnation_file: PathBuf,
    saved_incarnation: u32,
    /// How many users of this node hold or wait for each lease.
    users: BTreeMap<ResourceId, usize>,
    /// Users waiting for a grant, with the mode each wants.
    waiting: BTreeMap<ResourceId, Vec<(Mode, oneshot::Sender<Epoch>)>>,
    ranges_waiting: BTreeMap<u64, oneshot::Sender<RangeOutcome>>,
    auto_release: BTreeSet<ResourceId>,
    events: broadcast::Sender<LeaseEvent>,
    status: watch::Sender<VolumeStatus>,
    coordinator: Option<NodeId>,
}

impl VolumeTask {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut inbox: mpsc::UnboundedReceiver<Inbound>,
        mut disk: mpsc::UnboundedReceiver<(u64, DiskReply)>,
    ) {
        let tick = Duration::from_millis(TICK_MS);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                _ = ticker.tick() => {
                    let mut a = self.cancel_abandoned_ranges();
                    a.extend(self.node.handle(self.now(), Event::Tick));
                    a
                }
                Some(m) = inbox.recv() => self.node.handle(self.now(), Event::Message {
                    from: m.from,
                    incarnation: m.incarnation,
                    msg: m.msg,
                }),
                Some((id, reply)) = disk.recv() => {
                    self.node.handle(self.now(), Event::Disk { id, reply })
                }
                c = commands.recv() => match c {
                    Some(c) => self.command(c),
                    None => return,
                },
            };
            self.carry_out(actions);
        }
    }

    fn now(&self) -> Millis {
        millis(self.clock)
    }

    fn command(&mut self, c: Command) -> Vec<Action> {
        let now = self.now();
        match c {
            Command::Acquire {
                res,
                mode,
                auto_release,
                done,
            } => {
                if auto_release {
                    self.auto_release.insert(res);
                }
                *self.users.entry(res).or_default() += 1;
                let held = self.node.valid_leases(now);
                if held.contains(&(res, mode)) || held.contains(&(res, Mode::Exclusive)) {
                    let _ = done.send(self.node.epoch());
                    return Vec::new();
                }
                self.waiting.entry(res).or_default().push((mode, done));
                self.node.acquire(now, res, mode).1
            }
            Command::Release { res } => {
                // The lease is the node's: it goes when its last user lets go.
                let users = self.users.entry(res).or_default();
                *users = users.saturating_sub(1);
                if *users > 0 {
                    return Vec::new();
                }
                self.users.remove(&res);
                self.auto_release.remove(&res);
                self.waiting.remove(&res);
                self.node.release(now, res)
            }
            Command::Range {
                file,
                owner,
                op,
                done,
            } => {
                let (req, actions) = self.node.range_request(now, file, owner, op);
                self.ranges_waiting.insert(req, done);
                actions
            }
            Command::RegisterAgain => {
                tracing::info!(volume = self.label, "registering again on the direct path");
                self.node.register_again(now)
            }
            Command::HandOver { to, done } => answered(done, self.node.hand_over(now, to)),
            Command::StoreClosed { epoch, seq } => {
                self.node.store_closed(epoch, seq);
                self.node.handle(now, Event::Tick)
            }
            Command::KeepStore => {
                self.node.set_store_keeper(true);
                Vec::new()
            }
            Command::Evict { node, done } => answered(done, self.node.evict(now, node)),
        }
    }

    /// Gives up the byte-range requests whose callers stopped waiting.
    fn cancel_abandoned_ranges(&mut self) -> Vec<Action> {
        let gone: Vec<u64> = self
            .ranges_waiting
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(req, _)| *req)
            .collect();
        let now = self.now();
        let mut actions = Vec::new();
        for req in gone {
            self.ranges_waiting.remove(&req);
            actions.extend(self.node.range_cancel(now, req));
        }
        actions
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        let mut more = actions;
        while !more.is_empty() {
            let mut next = Vec::new();
            for a in more {
                next.extend(self.action(a));
            }
            more = next;
        }
        self.publish();
    }

    fn action(&mut self, a: Action) -> Vec<Action> {
        match a {
            Action::Send { to, msg } => {
                self.peers.send(
                    to,
                    &Frame::Volume {
                        volume: self.label.clone(),
                        incarnation: self.node.incarnation(),
                        msg,
                    },
                );
            }
            Action::Disk { id, op } => {
                let incarnation = self.node.incarnation();
                if incarnation != self.saved_incarnation {
                    // A new incarnation is on disk before it is used: a restart must
                    // never use it again.
                    if let Err(e) = save_incarnation(&self.incarnation_file, incarnation) {
                        error!(
                            volume = self.label,
                            file = %self.incarnation_file.display(),
                            error = %e,
                            "cannot record the new incarnation: this node stays out of the volume"
                        );
                        return Vec::new();
                    }
                    self.saved_incarnation = incarnation;
                }
                let _ = self.disk_ops.send((id, op, incarnation));
            }
            Action::Granted { res, mode, .. } => {
                let epoch = self.node.epoch();
                if let Some(ws) = self.waiting.remove(&res) {
                    let (served, rest): (Vec<_>, Vec<_>) = ws
                        .into_iter()
                        .partition(|(want, _)| *want == mode || mode == Mode::Exclusive);
                    for (_, w) in served {
                        let _ = w.send(epoch);
                    }
                    if !rest.is_empty() {
                        self.waiting.insert(res, rest);
                    }
                }
            }
            Action::Recall { res } => {
                if self.auto_release.remove(&res) {
                    return self.node.release(self.now(), res);
                }
                let _ = self.events.send(LeaseEvent::Recall(res));
            }
            Action::RangeAnswer { req, outcome } => {
                if let Some(tx) = self.ranges_waiting.remove(&req) {
                    let _ = tx.send(outcome);
                }
            }
            Action::LostAll => {
                self.auto_release.clear();
                let _ = self.events.send(LeaseEvent::LostAll);
            }
            Action::Role(role) => {
                self.coordinator = match role {
                    Role::Follower(c) => Some(c),
                    Role::Coordinator(_) => Some(self.node.id()),
                    _ => None,
                };
                info!(volume = self.label, incarnation = self.node.incarnation(), %role, "role");
                self.status.send_modify(|s| {
                    s.since_ms = super::lun_disk::wall_clock_ms();
                });
            }
        }
        Vec::new()
    }

    fn publish(&self) {
        let now = self.now();
        let node = &self.node;
        let next = VolumeStatus {
            label: self.label.clone(),
            role: node.role().to_string(),
            coordinator: self.coordinator,
            epoch: node.epoch(),
            incarnation: node.incarnation(),
            key: node.key(),
            serving: node.serving_epoch(now).is_some(),
            handing_over: node.handing_over_to(),
            hand_over_failure: node.hand_over_failure().cloned(),
            coordinator_serving: node.coordinator_serving(now),
            leases: node.valid_leases(now).len(),
            lockspace: node.lockspace_holdings().map(|h| h.len()),
            since_ms: self.status.borrow().since_ms,
            io: None,
            refused: node.refused_writers().into_iter().collect(),
            evicted: node.evicted(),
        };
        self.status.send_if_modified(|s| {
            if *s != next {
                *s = next;
                true
            } else {
                false
            }
        });
    }
}

/// How often the task gives the state machine the time: well under a heartbeat, so
/// that its timers fire close to when it wants them.
const TICK_MS: u64 = 20;
