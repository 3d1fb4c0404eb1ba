//! The thin shell around the sans-IO protocol: a node's QUIC endpoint, its links to
//! the peers, and one service per volume that drives a [`Node`](crate::protocol::Node)
//! with real time, real messages and real disk operations on the LUN.
//!
//! ```text
//!  peers ──QUIC──▶ accept_loop ──(label)──▶ volume task ◀── VolumeHandle (fs, control)
//!                                          │   ▲
//!                     Peers (per-peer ◀────┘   │ replies
//!                     sending tasks)      disk thread ── LunDisk ── LUN
//! ```

pub mod io_report;
pub mod lun_disk;
pub mod peers;
pub mod redirect_control;
pub mod role_move;
pub mod services;
pub mod volume;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

pub use io_report::{IoReport, Reporter, Reporters};
pub use lun_disk::{LunDisk, RESERVATION_TYPE};
pub use redirect_control::{RedirectControl, RedirectControls, RedirectOutcome};
pub use services::{ServiceError, ServiceHandler, Services};
pub use volume::{LeaseError, LeaseEvent, VolumeHandle, VolumeStatus};

use crate::config::Config;
use crate::transport::Endpoint;

/// A running node: its endpoint and its volumes' services.
pub struct Shell {
    node: String,
    id: u8,
    endpoint: Arc<Endpoint>,
    volumes: HashMap<String, VolumeHandle>,
    services: Services,
    links: services::ServiceLinks,
    reporters: Reporters,
    redirect_controls: RedirectControls,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The node is not in the configuration.
    #[error("node {0} is not in the cluster configuration")]
    UnknownNode(String),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// A peer's configuration differs.
    #[error("refusing to join: {0}")]
    Configuration(String),
    /// The state directory could not be written.
    #[error("state directory {dir}: {source}")]
    State {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

impl Shell {
    /// Starts node `me` of `config` with the LUN of each volume, keeping its
    /// incarnations under `state_dir`. Must run inside a tokio runtime.
    pub async fn start(
        config: &Config,
        me: &str,
        volumes: Vec<(String, Arc<LunDisk>)>,
        state_dir: &Path,
    ) -> Result<Shell, ShellError> {
        let id = config
            .node(me)
            .ok_or_else(|| ShellError::UnknownNode(me.to_string()))?
            .id;
        let endpoint = Arc::new(Endpoint::bind(config, me)?);
        // Answer the peers first: they check their configuration against this node's
        // while this node checks its own against theirs.
        let mut inboxes = HashMap::new();
        let mut receivers = Vec::new();
        for (label, disk) in volumes {
            let (tx, rx) = mpsc::unbounded_channel();
            inboxes.insert(label.clone(), tx);
            receivers.push((label, disk, rx));
        }
        let services = Services::default();
        tokio::spawn(peers::accept_loop(
            Arc::new(config.clone()),
            endpoint.clone(),
            Arc::new(inboxes),
            services.clone(),
        ));
        peers::check_configuration(config, me, &endpoint)
            .await
            .map_err(ShellError::Configuration)?;
        let timing = config.timing.protocol();
        let peers = peers::Peers::start(
            config,
            me,
            endpoint.clone(),
            config.timing.heartbeat_interval(),
        );
        let members: Vec<u8> = config.nodes.iter().map(|n| n.id).collect();
        let clock = Instant::now();
        let mut handles = HashMap::new();
        for (label, disk, rx) in receivers {
            let setup = volume::VolumeSetup {
                label: label.clone(),
                node: id,
                members: members.clone(),
                timing,
                disk,
                incarnation_file: state_dir.join(format!("{label}.incarnation")),
            };
            let handle = volume::start(setup, peers.clone(), rx, clock).map_err(|source| {
                ShellError::State {
                    dir: state_dir.to_path_buf(),
                    source,
                }
            })?;
            handles.insert(label, handle);
        }
        Ok(Shell {
            node: me.to_string(),
            id,
            links: services::ServiceLinks::new(config, endpoint.clone()),
            endpoint,
            volumes: handles,
            services,
            reporters: Reporters::default(),
            redirect_controls: RedirectControls::default(),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This node's id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The ids of the other nodes of the cluster.
    pub fn peer_ids(&self) -> Vec<u8> {
        let mut v = self.links.node_ids();
        v.retain(|&n| n != self.id);
        v
    }

    /// A volume's service.
    pub fn volume(&self, label: &str) -> Option<&VolumeHandle> {
        self.volumes.get(label)
    }

    /// The services this node serves to its peers.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Opens a stream to `service` of `volume` on node `to` (see [`services`]).
    pub async fn open_service(
        &self,
        to: u8,
        volume: &str,
        service: u8,
    ) -> Result<crate::transport::FramedStream, ServiceError> {
        self.links.open(to, volume, service).await
    }

    /// Where the file system reports its I/O per volume (shown in status).
    pub fn reporters(&self) -> &Reporters {
        &self.reporters
    }

    /// Where the I/O layer takes `csvctl volume redirect` per volume.
    pub fn redirect_controls(&self) -> &RedirectControls {
        &self.redirect_controls
    }

    /// Every volume's state, by label.
    pub fn status(&self) -> Vec<VolumeStatus> {
        let mut v: Vec<VolumeStatus> = self
            .volumes
            .values()
            .map(|h| {
                let mut s = h.status();
                s.io = self.reporters.report(&s.label);
                s
            })
            .collect();
        v.sort_by(|a, b| a.label.cmp(&b.label));
        v
    }

    /// Closes the endpoint: peers see this node leave.
    pub fn close(&self) {
        self.endpoint.close();
    }
}
