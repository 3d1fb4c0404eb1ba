//! The cluster's QUIC transport: one endpoint per node, mutually authenticated
//! connections between the nodes of `cluster.toml`, framed messages on streams.
//!
//! It owns who may talk to whom; it knows no message types (the protocol core
//! does) and keeps no liveness state of its own beyond QUIC's.
//!
//! A node binds one UDP socket, on its configured address, and uses it both to
//! answer and to dial; so a peer's connections come from the peer's configured
//! address.
//!
//! Establishing a connection, client `A` dialling server `B`:
//!
//! ```text
//! A                                               B
//! | -- TLS 1.3 ClientHello, ALPN csvfs/<a> -----> |
//! | <- B's certificate (B.<cluster>.csvfs) ------ |  A: issued by the cluster CA?
//! |                                               |     names the node A dialled?
//! | -- A's certificate ------------------------>  |  B: issued by the cluster CA?
//! |                                               |  B: ALPN = its version?
//! |                                               |     names one node of the config,
//! |                                               |     not B, dialling from that
//! |                                               |     node's configured address?
//! | <- uni stream "csvfs admit" ----------------- |  (or CONNECTION_CLOSE with
//! |                                               |   the reason in words)
//! ```
//!
//! The client sends nothing but its certificate: which node it is, the server
//! reads from the certificate's DNS name. The admission stream exists because a
//! QUIC client's handshake completes before the server has judged the client's
//! certificate; without it `connect` could return a connection the server is
//! about to close. A refusal closes the connection with an application code
//! (below) and the reason as text, so the refused side can say why.

mod stream;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use rustls::AlertDescription;
use rustls::pki_types::CertificateDer;
use tokio::sync::{Mutex, mpsc};
use tracing::{Instrument, info, info_span, warn};

pub use stream::{
    DEFAULT_MAX_FRAME_LEN, FRAME_HEADER_LEN, FramedRecv, FramedSend, FramedStream, StreamError,
    decode_header, encode_header,
};
pub use tls::alpn;

use crate::config::Config;
use crate::identity::{self, IdentityError, NodeIdentity};

/// How long dialling, the handshake and the admission may take together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Application close codes 0 to 15 belong to the transport; the protocol core
/// uses codes from 16 up.
pub mod close_code {
    /// A normal close.
    pub const NORMAL: u32 = 0;
    /// The peers speak different protocol versions; the reason is the closing
    /// side's ALPN (`csvfs/<n>`).
    pub const VERSION_MISMATCH: u32 = 1;
    /// The server refused the client's identity; the reason says why.
    pub const REFUSED: u32 = 2;
    /// The peer broke the transport's protocol (e.g. a malformed admission).
    pub const PROTOCOL: u32 = 3;
}

/// What the server sends on the admission stream.
const ADMIT: &[u8] = b"csvfs admit";

/// How many finished handshakes may wait for `accept`.
const ACCEPT_QUEUE: usize = 64;

/// Why the transport could not connect, accept, or be set up. Every variant names
/// the peer (node name and address, or the address alone while the server does
/// not know who it is yet) and says why in words.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The node is not in the configuration.
    #[error("node {node:?} is not in the cluster configuration")]
    UnknownNode {
        /// The name asked for.
        node: String,
    },
    /// This node's certificate or the CA could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rustls or quinn refused the TLS setup.
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC endpoint to {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// quinn could not start a connection (endpoint closed, bad address).
    #[error("cannot connect to {peer}")]
    Connect {
        /// The peer.
        peer: String,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The handshake and admission did not finish in time.
    #[error("{peer}: no completed handshake within {secs} s", secs = HANDSHAKE_TIMEOUT.as_secs())]
    Timeout {
        /// The peer.
        peer: String,
    },
    /// This node refused the peer (its certificate, its name, its address).
    #[error("refused {peer}: {why}")]
    Refused {
        /// The peer.
        peer: String,
        /// Why.
        why: String,
    },
    /// The peer refused this node.
    #[error("{peer} refused this node: {why}")]
    RefusedByPeer {
        /// The peer.
        peer: String,
        /// Why, as the peer said or as its TLS alert means.
        why: String,
    },
    /// The two nodes speak different protocol versions.
    #[error("{peer} speaks {theirs}, this node {ours}")]
    VersionMismatch {
        /// The peer.
        peer: String,
        /// The peer's ALPN, e.g. `csvfs/2`, or words when it did not say.
        theirs: String,
        /// This node's ALPN.
        ours: String,
    },
    /// The peer broke the transport's protocol.
    #[error("{peer}: protocol violation: {what}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What it did.
        what: String,
    },
    /// The connection failed for a reason that is not a refusal.
    #[error("connection with {peer} lost")]
    ConnectionLost {
        /// The peer.
        peer: String,
        /// quinn's reason.
        source: ConnectionError,
    },
}

/// What both the acceptor task and `connect` need.
#[derive(Debug)]
struct Local {
    config: Config,
    node: String,
    alpn: Vec<u8>,
    /// A service endpoint (on another port than the node's configured one, such as
    /// the VMM's migration endpoint): peers are checked by certificate and IP
    /// address, not port, since they dial from their own service endpoints.
    service: bool,
}

impl Local {
    fn ours(&self) -> String {
        tls::alpn_text(&self.alpn)
    }
}

/// A node's QUIC endpoint: answers its peers and dials them.
#[derive(Debug)]
pub struct Endpoint {
    quic: quinn::Endpoint,
    local: Arc<Local>,
    client: quinn::ClientConfig,
    admitted: Mutex<mpsc::Receiver<Result<Connection, TransportError>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

/// An authenticated connection to one peer node. Clones share the connection.
#[derive(Debug, Clone)]
pub struct Connection {
    quic: quinn::Connection,
    peer: Arc<str>,
}

impl Endpoint {
    /// Binds node `node` of `config` on its configured address, with the
    /// certificate, key and CA from the configuration's certificate directory.
    /// Must be called inside a tokio runtime.
    pub fn bind(config: &Config, node: &str) -> Result<Endpoint, TransportError> {
        let dir = config.cert_dir();
        let identity = NodeIdentity::load(&dir, &config.name, node)?;
        let ca = identity::load_ca(&dir)?;
        Endpoint::bind_with(config, node, identity, ca)
    }

    /// Binds node `node` of `config` with the given identity and CA, as they are:
    /// whether the certificate names `node` is not checked here (peers check it).
    pub fn bind_with(
        config: &Config,
        node: &str,
        identity: NodeIdentity,
        ca: CertificateDer<'static>,
    ) -> Result<Endpoint, TransportError> {
        let addr = node_address(config, node)?;
        Endpoint::bind_inner(config, node, identity, ca, addr, false)
    }

    /// Binds a service endpoint of node `node`: on the node's configured IP address
    /// and a port the system picks, with the node's certificate, admitting the
    /// cluster's nodes from any port of their configured addresses. Other services
    /// than the lock manager (the VMM's live migration) use it.
    pub fn bind_service(config: &Config, node: &str) -> Result<Endpoint, TransportError> {
        let dir = config.cert_dir();
        let identity = NodeIdentity::load(&dir, &config.name, node)?;
        let ca = identity::load_ca(&dir)?;
        let addr = SocketAddr::new(node_address(config, node)?.ip(), 0);
        Endpoint::bind_inner(config, node, identity, ca, addr, true)
    }

    fn bind_inner(
        config: &Config,
        node: &str,
        identity: NodeIdentity,
        ca: CertificateDer<'static>,
        addr: SocketAddr,
        service: bool,
    ) -> Result<Endpoint, TransportError> {
        let version = config.protocol_version;
        let setup = |e: &dyn std::fmt::Display| TransportError::TlsSetup(e.to_string());
        let transport = Arc::new(transport_config(config).map_err(|e| setup(&e))?);

        let server_tls = tls::server_config(&ca, &identity, version).map_err(|e| setup(&e))?;
        let server_quic = QuicServerConfig::try_from(server_tls).map_err(|e| setup(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server.transport_config(transport.clone());
        // A peer is identified by its address as well as its certificate: it may not
        // move to another one mid-connection.
        server.migration(false);

        let client_tls = tls::client_config(&ca, &identity, version).map_err(|e| setup(&e))?;
        let client_quic = QuicClientConfig::try_from(client_tls).map_err(|e| setup(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_quic));
        client.transport_config(transport);

        let bind = |source| TransportError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(MAX_UDP_PAYLOAD)
            .map_err(|e| setup(&e))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| setup(&"no async runtime for the QUIC endpoint"))?;
        let quic =
            quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(bind)?;
        let local = Arc::new(Local {
            config: config.clone(),
            node: node.to_string(),
            alpn: tls::alpn(version),
            service,
        });
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = tokio::spawn(run_acceptor(quic.clone(), local.clone(), tx));
        info!(node, %addr, alpn = %local.ours(), "QUIC endpoint bound");
        Ok(Endpoint {
            quic,
            local,
            client,
            admitted: Mutex::new(rx),
            acceptor,
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.local.node
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.local_addr()
    }

    /// Dials `peer`, checks it is that node of this cluster, and waits until it has
    /// admitted this node.
    pub async fn connect(&self, peer: &str) -> Result<Connection, TransportError> {
        let addr = node_address(&self.local.config, peer)?;
        self.connect_at(peer, addr).await
    }

    /// Dials node `peer` at `addr` (one of its service endpoints), checks it is that
    /// node of this cluster, and waits until it has admitted this node.
    pub async fn connect_at(
        &self,
        peer: &str,
        addr: SocketAddr,
    ) -> Result<Connection, TransportError> {
        node_address(&self.local.config, peer)?;
        let who = format!("{peer} at {addr}");
        let server_name = identity::node_dns_name(&self.local.config.name, peer);
        let span = info_span!("connect", peer, %addr);
        let connecting = self
            .quic
            .connect_with(self.client.clone(), addr, &server_name)
            .map_err(|source| TransportError::Connect {
                peer: who.clone(),
                source,
            })?;
        let dial = async {
            let quic = connecting.await.map_err(|e| self.local.failure(&who, e))?;
            await_admission(&quic).await.map_err(|e| match e {
                AdmissionError::Connection(e) => self.local.failure(&who, e),
                AdmissionError::Malformed(what) => {
                    quic.close(VarInt::from_u32(close_code::PROTOCOL), what.as_bytes());
                    TransportError::Protocol {
                        peer: who.clone(),
                        what,
                    }
                }
            })?;
            Ok(Connection {
                quic,
                peer: peer.into(),
            })
        };
        let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, dial)
            .instrument(span.clone())
            .await
        {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout { peer: who }),
        };
        let _enter = span.enter();
        match &result {
            Ok(_) => info!("connected"),
            Err(e) => warn!(error = %e, "connect failed"),
        }
        result
    }

    /// The next peer that connected and was admitted, or why one was refused (a
    /// refusal does not stop the endpoint: call again). `None` once the endpoint is
    /// closed.
    pub async fn accept(&self) -> Option<Result<Connection, TransportError>> {
        self.admitted.lock().await.recv().await
    }

    /// Closes every connection and stops answering.
    pub fn close(&self) {
        self.quic
            .close(VarInt::from_u32(close_code::NORMAL), b"node shutting down");
    }

    /// Waits until every connection's close has been sent.
    pub async fn wait_idle(&self) {
        self.quic.wait_idle().await;
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// The configured address of node `node`.
fn node_address(config: &Config, node: &str) -> Result<SocketAddr, TransportError> {
    Ok(config
        .node(node)
        .ok_or_else(|| TransportError::UnknownNode {
            node: node.to_string(),
        })?
        .address)
}

fn transport_config(
    config: &Config,
) -> Result<quinn::TransportConfig, quinn::VarIntBoundsExceeded> {
    let mut t = quinn::TransportConfig::default();
    // A peer silent for T_fence is gone for the transport too; keep-alives at the
    // heartbeat interval keep a quiet but live connection open.
    t.max_idle_timeout(Some(config.timing.fence().try_into()?));
    t.keep_alive_interval(Some(config.timing.heartbeat_interval()));
    // Bulk transfers (redirected I/O, VM memory) need few, large packets: search for
    // up to jumbo-frame (and loopback) sizes; a path that drops them stays at what works.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // A stream may have 16 MiB in flight (quinn's default, 1.25 MB, is sized for
    // 100 Mbit/s at 100 ms): a bulk stream between nodes busy with other work stalls
    // on the window while the receiver is scheduled out. 1 MiB frames of bulk data on
    // one stream went from a median 315 to 395 MiB/s on loopback here.
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.send_window(4 * u64::from(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(4 * STREAM_WINDOW));
    Ok(t)
}

/// The bytes a stream may have in flight.
const STREAM_WINDOW: u32 = 16 << 20;

/// The largest UDP payload a node sends or accepts: a 9000-byte jumbo frame less the
/// IPv4 and UDP headers.
const MAX_UDP_PAYLOAD: u16 = 9000 - 28;

async fn run_acceptor(
    quic: quinn::Endpoint,
    local: Arc<Local>,
    admitted: mpsc::Sender<Result<Connection, TransportError>>,
) {
    while let Some(incoming) = quic.accept().await {
        let local = local.clone();
        let admitted = admitted.clone();
        let remote = incoming.remote_address();
        // One task per handshake, so a slow or silent peer does not hold up others.
        tokio::spawn(
            async move {
                let result =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, admit(incoming, &local)).await {
                        Ok(r) => r,
                        Err(_) => Err(TransportError::Timeout {
                            peer: remote.to_string(),
                        }),
                    };
                match result {
                    Ok(conn) => {
                        info!(peer = %conn.peer, "admitted");
                        let _ = admitted.send(Ok(conn)).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "peer refused");
                        // Refusals are reported if someone is listening, never queued
                        // without bound.
                        let _ = admitted.try_send(Err(e));
                    }
                }
            }
            .instrument(info_span!("accept", %remote)),
        );
    }
}

/// The server's side: the handshake, then the checks of the description at the top.
async fn admit(incoming: quinn::Incoming, local: &Local) -> Result<Connection, TransportError> {
    let remote = incoming.remote_address();
    let who = remote.to_string();
    let quic = incoming.await.map_err(|e| local.failure(&who, e))?;

    let theirs = negotiated_alpn(&quic);
    if theirs.as_deref() != Some(local.alpn.as_slice()) {
        quic.close(VarInt::from_u32(close_code::VERSION_MISMATCH), &local.alpn);
        return Err(TransportError::VersionMismatch {
            peer: who,
            theirs: theirs
                .map_or_else(|| "no protocol version".to_string(), |a| tls::alpn_text(&a)),
            ours: local.ours(),
        });
    }

    let refuse = |who: String, why: String| {
        quic.close(VarInt::from_u32(close_code::REFUSED), why.as_bytes());
        TransportError::Refused { peer: who, why }
    };
    let Some(cert) = peer_certificate(&quic) else {
        return Err(refuse(who, "no client certificate was presented".into()));
    };
    let cluster = &local.config.name;
    let name = match identity::node_name_of(&cert, cluster) {
        Ok(name) => name,
        Err(e) => return Err(refuse(who, e.to_string())),
    };
    let who = format!("{name} at {remote}");
    if name == local.node {
        return Err(refuse(
            who,
            format!("it presents this node's own certificate ({name})"),
        ));
    }
    let Some(node) = local.config.node(&name) else {
        return Err(refuse(
            who,
            format!("node {name:?} is not in this node's cluster configuration"),
        ));
    };
    let same_place = if local.service {
        node.address.ip() == remote.ip()
    } else {
        node.address == remote
    };
    if !same_place {
        return Err(refuse(
            who,
            format!(
                "it presents the certificate of node {name}, whose configured address is {}, from {remote}",
                node.address
            ),
        ));
    }

    let admitted = async {
        let mut s = quic.open_uni().await?;
        s.write_all(ADMIT).await?;
        s.finish()?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    if let Err(e) = admitted.await {
        return Err(TransportError::RefusedByPeer {
            peer: who,
            why: format!("it left during admission: {e}"),
        });
    }
    Ok(Connection {
        quic,
        peer: name.into(),
    })
}

/// Why the admission did not arrive.
enum AdmissionError {
    Connection(ConnectionError),
    Malformed(String),
}

/// The client's side: the server's word that it admitted this node.
async fn await_admission(quic: &quinn::Connection) -> Result<(), AdmissionError> {
    let mut recv = quic
        .accept_uni()
        .await
        .map_err(AdmissionError::Connection)?;
    match recv.read_to_end(ADMIT.len()).await {
        Ok(m) if m == ADMIT => Ok(()),
        Ok(_) | Err(quinn::ReadToEndError::TooLong) => Err(AdmissionError::Malformed(
            "the admission message is not csvfs's".to_string(),
        )),
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => {
            Err(AdmissionError::Connection(e))
        }
        Err(quinn::ReadToEndError::Read(e)) => {
            Err(AdmissionError::Malformed(format!("admission stream: {e}")))
        }
    }
}

fn negotiated_alpn(quic: &quinn::Connection) -> Option<Vec<u8>> {
    quic.handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

fn peer_certificate(quic: &quinn::Connection) -> Option<CertificateDer<'static>> {
    quic.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .into_iter()
        .next()
}

impl Local {
    /// Turns a failed handshake or admission into words: who refused whom, why.
    fn failure(&self, who: &str, e: ConnectionError) -> TransportError {
        let peer = who.to_string();
        match e {
            ConnectionError::ApplicationClosed(close) => {
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                match close.error_code.into_inner() {
                    c if c == u64::from(close_code::VERSION_MISMATCH) => {
                        TransportError::VersionMismatch {
                            peer,
                            theirs: reason,
                            ours: self.ours(),
                        }
                    }
                    c if c == u64::from(close_code::REFUSED) => {
                        TransportError::RefusedByPeer { peer, why: reason }
                    }
                    _ => TransportError::ConnectionLost {
                        peer,
                        source: ConnectionError::ApplicationClosed(close),
                    },
                }
            }
            // The peer's TLS stack refused this node.
            ConnectionError::ConnectionClosed(close) => match tls::alert_of(close.error_code) {
                Some(AlertDescription::NoApplicationProtocol) => TransportError::VersionMismatch {
                    peer,
                    theirs: format!(
                        "another protocol version (it refused {} with TLS no_application_protocol)",
                        self.ours()
                    ),
                    ours: self.ours(),
                },
                Some(alert) => TransportError::RefusedByPeer {
                    peer,
                    why: tls::describe_alert(alert, &String::from_utf8_lossy(&close.reason)),
                },
                None => TransportError::ConnectionLost {
                    peer,
                    source: ConnectionError::ConnectionClosed(close),
                },
            },
            // This node's TLS stack refused the peer.
            ConnectionError::TransportError(t) => match tls::alert_of(t.code) {
                Some(AlertDescription::NoApplicationProtocol) => TransportError::VersionMismatch {
                    peer,
                    theirs: "no csvfs protocol version (no ALPN in common)".to_string(),
                    ours: self.ours(),
                },
                Some(alert) => TransportError::Refused {
                    peer,
                    why: tls::describe_alert(alert, &t.reason),
                },
                None => TransportError::ConnectionLost {
                    peer,
                    source: ConnectionError::TransportError(t),
                },
            },
            other => TransportError::ConnectionLost {
                peer,
                source: other,
            },
        }
    }
}

impl Connection {
    /// The peer's node name, as its certificate says.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.quic.remote_address()
    }

    /// Opens a bidirectional stream. The peer's `accept_stream` sees it once this
    /// side has sent its first message.
    pub async fn open_stream(&self) -> Result<FramedStream, TransportError> {
        let (send, recv) = self.quic.open_bi().await.map_err(|e| self.lost(e))?;
        Ok(FramedStream::new(send, recv))
    }

    /// The next stream the peer opened.
    pub async fn accept_stream(&self) -> Result<FramedStream, TransportError> {
        let (send, recv) = self.quic.accept_bi().await.map_err(|e| self.lost(e))?;
        Ok(FramedStream::new(send, recv))
    }

    /// Closes the connection with a code (16 and up are the protocol core's, see
    /// [`close_code`]) and a reason for the peer.
    pub fn close(&self, code: u32, reason: &str) {
        self.quic.close(VarInt::from_u32(code), reason.as_bytes());
    }

    /// Waits until the connection is closed, and says why.
    pub async fn closed(&self) -> ConnectionError {
        self.quic.closed().await
    }

    /// The QUIC connection, for what this wrapper does not cover (datagrams,
    /// statistics).
    pub fn quic(&self) -> &quinn::Connection {
        &self.quic
    }

    fn lost(&self, source: ConnectionError) -> TransportError {
        TransportError::ConnectionLost {
            peer: format!("{} at {}", self.peer, self.quic.remote_address()),
            source,
        }
    }
}
