//! The links between one node and its peers: a sending task per peer that dials it
//! and keeps one stream open, and an accepting side that reads every peer's streams
//! and hands each volume's messages to that volume.
//!
//! Every stream starts with a `Hello` each way carrying the configuration's
//! fingerprint; a node whose configuration differs is refused (connection closed with
//! [`CONFIG_MISMATCH`]), and a node that is refused at start-up does not join.
//! Messages are best effort: the protocol is built for loss, so while a peer is
//! unreachable its messages are dropped rather than queued without bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::services::Services;
use crate::config::Config;
use crate::protocol::{Msg, NodeId};
use crate::transport::{Connection, Endpoint, FramedStream, TransportError};
use crate::wire::Frame;

/// The close code of a connection refused because the configurations differ.
pub const CONFIG_MISMATCH: u32 = 16;

/// How long a peer has to answer the hello of the start-up check.
const GREETING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a node waits before it dials again a peer whose configuration differs.
const MISMATCH_RETRY: Duration = Duration::from_secs(30);

/// How many frames may wait for one peer.
const QUEUE: usize = 1024;

/// A message for a volume, from a peer.
#[derive(Debug)]
pub struct Inbound {
    /// The sender.
    pub from: NodeId,
    /// The sender's incarnation in the volume.
    pub incarnation: u32,
    /// The message.
    pub msg: Msg,
}

/// Where each volume's inbound messages go, by label.
pub type Inboxes = HashMap<String, mpsc::UnboundedSender<Inbound>>;

/// The sending side: one queue per peer.
#[derive(Clone)]
pub struct Peers {
    queues: Arc<HashMap<NodeId, mpsc::Sender<Vec<u8>>>>,
}

impl Peers {
    /// Starts a sending task per peer of `config` (every node but `me`).
    pub fn start(config: &Config, me: &str, endpoint: Arc<Endpoint>, retry: Duration) -> Peers {
        let mut queues = HashMap::new();
        let hello = Frame::Hello {
            fingerprint: config.fingerprint().0,
        }
        .encode();
        for n in config.nodes.iter().filter(|n| n.name != me) {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.insert(n.id, tx);
            tokio::spawn(send_loop(
                endpoint.clone(),
                n.name.clone(),
                hello.clone(),
                rx,
                retry,
            ));
        }
        Peers {
            queues: Arc::new(queues),
        }
    }

    /// Queues a frame for `to`; dropped if that peer's queue is full.
    pub fn send(&self, to: NodeId, frame: &Frame) {
        if let Some(q) = self.queues.get(&to)
            && q.try_send(frame.encode()).is_err()
        {
            debug!(to, "peer queue full: message dropped");
        }
    }
}

/// Exchanges `Hello`s on a fresh stream as the dialling side.
async fn greet(stream: &mut FramedStream, hello: &[u8], peer: &str) -> Result<(), String> {
    stream.send(hello).await.map_err(|e| e.to_string())?;
    let answer = stream
        .recv()
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{peer} closed the stream before its hello"))?;
    match (Frame::decode(&answer), Frame::decode(hello)) {
        (Ok(Frame::Hello { fingerprint }), Ok(Frame::Hello { fingerprint: ours }))
            if fingerprint == ours =>
        {
            Ok(())
        }
        (Ok(Frame::Hello { .. }), _) => Err(format!(
            "{peer}'s cluster configuration differs from this node's: make cluster.toml the same on every node"
        )),
        (Ok(_), _) => Err(format!("{peer} answered the hello with another frame")),
        (Err(e), _) => Err(format!("{peer}: {e}")),
    }
}

/// Dials every reachable peer once and checks its configuration is this node's. A
/// node refused by a peer must not join: its view of the cluster is not the others'.
pub async fn check_configuration(
    config: &Config,
    me: &str,
    endpoint: &Endpoint,
) -> Result<(), String> {
    let hello = Frame::Hello {
        fingerprint: config.fingerprint().0,
    }
    .encode();
    for n in config.nodes.iter().filter(|n| n.name != me) {
        let conn = match endpoint.connect(&n.name).await {
            Ok(c) => c,
            // Not running (or not reachable): nothing to compare with.
            Err(TransportError::Timeout { .. } | TransportError::Connect { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        };
        let result = tokio::time::timeout(GREETING_TIMEOUT, async {
            let mut stream = conn.open_stream().await.map_err(|e| e.to_string())?;
            greet(&mut stream, &hello, &n.name).await
        })
        .await
        .unwrap_or_else(|_| Err(format!("{}: no hello in time", n.name)));
        conn.close(0, "configuration checked");
        match result {
            Err(e) if e.contains("differs") => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

async fn send_loop(
    endpoint: Arc<Endpoint>,
    peer: String,
    hello: Vec<u8>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    retry: Duration,
) {
    let mut logged_down = false;
    loop {
        let attempt = async {
            let conn = endpoint.connect(&peer).await.map_err(|e| e.to_string())?;
            let mut stream = conn.open_stream().await.map_err(|e| e.to_string())?;
            greet(&mut stream, &hello, &peer).await?;
            Ok::<_, String>((conn, stream))
        };
        let (conn, mut stream) = match attempt.await {
            Ok(s) => s,
            Err(e) => {
                let mismatch = e.contains("differs");
                if !logged_down {
                    warn!(peer, error = %e, "peer unreachable; retrying");
                    logged_down = true;
                }
                // What was queued while the peer was away is stale: drop it.
                while rx.try_recv().is_ok() {}
                // A peer with another configuration stays so until someone fixes it.
                let wait = if mismatch { MISMATCH_RETRY } else { retry };
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        info!(peer, "link up");
        logged_down = false;
        loop {
            let Some(frame) = rx.recv().await else {
                conn.close(0, "node shutting down");
                return;
            };
            if let Err(e) = stream.send(&frame).await {
                warn!(peer, error = %e, "link lost");
                break;
            }
        }
    }
}

/// Accepts the peers' connections and streams and delivers their messages.
pub async fn accept_loop(
    config: Arc<Config>,
    endpoint: Arc<Endpoint>,
    inboxes: Arc<Inboxes>,
    services: Services,
) {
    let ids: Arc<HashMap<String, NodeId>> = Arc::new(
        config
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.id))
            .collect(),
    );
    let hello = Frame::Hello {
        fingerprint: config.fingerprint().0,
    }
    .encode();
    while let Some(conn) = endpoint.accept().await {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "peer refused");
                continue;
            }
        };
        let Some(&from) = ids.get(conn.peer()) else {
            continue;
        };
        tokio::spawn(serve_connection(
            conn,
            from,
            hello.clone(),
            inboxes.clone(),
            services.clone(),
        ));
    }
}

async fn serve_connection(
    conn: Connection,
    from: NodeId,
    hello: Vec<u8>,
    inboxes: Arc<Inboxes>,
    services: Services,
) {
    loop {
        match conn.accept_stream().await {
            Ok(stream) => {
                tokio::spawn(serve_stream(
                    conn.clone(),
                    stream,
                    from,
                    hello.clone(),
                    inboxes.clone(),
                    services.clone(),
                ));
            }
            Err(_) => return,
        }
    }
}

async fn serve_stream(
    conn: Connection,
    mut stream: FramedStream,
    from: NodeId,
    hello: Vec<u8>,
    inboxes: Arc<Inboxes>,
    services: Services,
) {
    let peer = conn.peer().to_string();
    let first = match stream.recv().await {
        Ok(Some(f)) => f,
        _ => return,
    };
    let _ = stream.send(&hello).await;
    if first != hello {
        error!(
            peer,
            "refused: its cluster configuration differs from this node's"
        );
        // Let the hello reach the peer before the close, so that it can say why.
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.close(CONFIG_MISMATCH, "cluster configuration differs");
        return;
    }
    loop {
        let bytes = match stream.recv().await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                debug!(peer, error = %e, "stream ended");
                return;
            }
        };
        match Frame::decode(&bytes) {
            Ok(Frame::Volume {
                volume,
                incarnation,
                msg,
            }) => {
                if let Some(inbox) = inboxes.get(&volume) {
                    let _ = inbox.send(Inbound {
                        from,
                        incarnation,
                        msg,
                    });
                }
            }
            Ok(Frame::Service { volume, service }) => {
                // The rest of the stream is the service's; a service this node does
                // not serve (now) ends the stream, and the peer tries again later.
                if let Some(handler) = services.get(&volume, service) {
                    handler(from, stream);
                } else {
                    debug!(peer, volume, service, "no such service here");
                }
                return;
            }
            Ok(Frame::Hello { .. }) => {}
            Err(e) => {
                warn!(peer, error = %e, "closing the link");
                conn.close(CONFIG_MISMATCH + 1, "malformed frame");
                return;
            }
        }
    }
}
