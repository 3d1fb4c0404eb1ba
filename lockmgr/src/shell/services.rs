//! Services of a volume over the peer links: a stream that opens with a `Service`
//! frame belongs to the handler that the node registered for that volume and service
//! (the coordinator's metadata service is one). The dialling side keeps one QUIC
//! connection per peer for its service streams and opens a fresh stream per exchange,
//! so that a slow exchange never holds up another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::protocol::NodeId;
use crate::transport::{Connection, Endpoint, FramedStream};
use crate::wire::Frame;

/// Serves one stream of a service: called with the peer and the stream, after the
/// `Service` frame. It runs inside the node's runtime and must not block.
pub type ServiceHandler = Arc<dyn Fn(NodeId, FramedStream) + Send + Sync>;

/// The handlers a node serves, by volume and service.
#[derive(Clone, Default)]
pub struct Services {
    handlers: Arc<RwLock<HashMap<(String, u8), ServiceHandler>>>,
}

impl Services {
    /// Serves `service` of `volume` with `handler` (replacing an earlier one).
    pub fn register(&self, volume: &str, service: u8, handler: ServiceHandler) {
        self.handlers
            .write()
            .insert((volume.to_string(), service), handler);
    }

    /// Stops serving `service` of `volume`.
    pub fn unregister(&self, volume: &str, service: u8) {
        self.handlers.write().remove(&(volume.to_string(), service));
    }

    /// The handler of `service` of `volume`, if served.
    pub fn get(&self, volume: &str, service: u8) -> Option<ServiceHandler> {
        self.handlers
            .read()
            .get(&(volume.to_string(), service))
            .cloned()
    }
}

/// Why a service stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The peer is not in the configuration.
    #[error("node {0} is not in the cluster configuration")]
    UnknownNode(NodeId),
    /// The peer could not be reached, or the link broke.
    #[error("node {peer}: {reason}")]
    Link {
        /// The peer.
        peer: String,
        /// What went wrong.
        reason: String,
    },
}

/// The dialling side of service streams.
pub struct ServiceLinks {
    endpoint: Arc<Endpoint>,
    names: HashMap<NodeId, String>,
    hello: Vec<u8>,
    conns: Mutex<HashMap<NodeId, Connection>>,
}

/// How long opening a stream (with its hello) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

impl ServiceLinks {
    /// Service links of this node's `endpoint`.
    pub fn new(config: &Config, endpoint: Arc<Endpoint>) -> ServiceLinks {
        ServiceLinks {
            endpoint,
            names: config
                .nodes
                .iter()
                .map(|n| (n.id, n.name.clone()))
                .collect(),
            hello: Frame::Hello {
                fingerprint: config.fingerprint().0,
            }
            .encode(),
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// The ids of the cluster's nodes, lowest first.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.names.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Opens a stream to `service` of `volume` on node `to`, greeted and ready for the
    /// service's own frames.
    pub async fn open(
        &self,
        to: NodeId,
        volume: &str,
        service: u8,
    ) -> Result<FramedStream, ServiceError> {
        let peer = self.names.get(&to).ok_or(ServiceError::UnknownNode(to))?;
        let link = |reason: String| ServiceError::Link {
            peer: peer.clone(),
            reason,
        };
        let conn = self.connection(to, peer).await.map_err(link)?;
        let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
            let mut stream = conn.open_stream().await.map_err(|e| e.to_string())?;
            stream.send(&self.hello).await.map_err(|e| e.to_string())?;
            let frame = Frame::Service {
                volume: volume.to_string(),
                service,
            };
            stream
                .send(&frame.encode())
                .await
                .map_err(|e| e.to_string())?;
            match stream.recv().await {
                Ok(Some(h)) if h == self.hello => Ok(stream),
                Ok(Some(_)) => Err("its cluster configuration differs".to_string()),
                Ok(None) => Err("it closed the stream".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {OPEN_TIMEOUT:?}")));
        if opened.is_err() {
            // The next attempt dials afresh.
            self.conns.lock().await.remove(&to);
        }
        opened.map_err(link)
    }

    async fn connection(&self, to: NodeId, peer: &str) -> Result<Connection, String> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&to)
            && c.quic().close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let c = self
            .endpoint
            .connect(peer)
            .await
            .map_err(|e| e.to_string())?;
        conns.insert(to, c.clone());
        Ok(c)
    }
}
