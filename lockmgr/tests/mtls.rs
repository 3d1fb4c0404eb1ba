//! Mutual TLS between cluster nodes, over real QUIC on 127.0.0.1: who is admitted,
//! who is refused, and that each refusal says why, on both sides where both know.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;

use lockmgr::config::NodeConfig;
use lockmgr::identity::{self, NodeIdentity};
use lockmgr::transport::{StreamError, alpn};
use lockmgr::{Config, Endpoint, TransportError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;

/// A UDP port free on 127.0.0.1 a moment ago.
fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A cluster "test" with the given nodes on free ports, its config file and
/// certificates written under `dir` as `csvctl cluster init` would.
fn make_cluster(dir: &Path, nodes: &[&str]) -> Config {
    let mut config = Config::new(
        "test",
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeConfig {
                name: n.to_string(),
                id: i as u8 + 1,
                address: free_addr(),
            })
            .collect(),
    );
    let path = dir.join("cluster.toml");
    config.path = path.clone();
    identity::init(&config.cert_dir(), "test", nodes, false).unwrap();
    config.save(&path).unwrap();
    Config::load(&path).unwrap()
}

fn err<T>(r: Result<T, TransportError>) -> TransportError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

async fn accept_err(ep: &Endpoint) -> TransportError {
    err(ep.accept().await.expect("endpoint open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_connect_and_exchange_framed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1", "n2"]);
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    let n2 = Endpoint::bind(&config, "n2").unwrap();
    assert_eq!(n1.local_addr().unwrap(), config.node("n1").unwrap().address);

    let to_n1 = n2.connect("n1").await.unwrap();
    assert_eq!(to_n1.peer(), "n1");
    let to_n2 = n1.accept().await.unwrap().unwrap();
    assert_eq!(to_n2.peer(), "n2");
    assert_eq!(to_n2.remote_address(), config.node("n2").unwrap().address);

    let mut s = to_n1.open_stream().await.unwrap();
    s.send(b"hello").await.unwrap();
    s.send(b"").await.unwrap();
    let mut r = to_n2.accept_stream().await.unwrap();
    assert_eq!(r.recv().await.unwrap().unwrap(), b"hello");
    assert_eq!(r.recv().await.unwrap().unwrap(), b"");
    r.send(&vec![7u8; 100_000]).await.unwrap();
    r.send.finish().unwrap();
    assert_eq!(s.recv().await.unwrap().unwrap(), vec![7u8; 100_000]);
    assert!(
        s.recv().await.unwrap().is_none(),
        "finished after one frame"
    );

    // Either side can dial: the reverse connection works the same way.
    let back = n1.connect("n2").await.unwrap();
    assert_eq!(back.peer(), "n2");
    assert_eq!(n2.accept().await.unwrap().unwrap().peer(), "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_are_refused_by_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1", "n2"]);
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    let n2 = Endpoint::bind(&config, "n2").unwrap();
    let to_n1 = n2.connect("n1").await.unwrap();
    let to_n2 = n1.accept().await.unwrap().unwrap();

    let mut s = to_n1.open_stream().await.unwrap();
    s.send(&[1u8; 64]).await.unwrap();
    let mut r = to_n2.accept_stream().await.unwrap();
    r.set_max_frame_len(63);
    let e = r.recv().await.unwrap_err();
    assert!(
        matches!(e, StreamError::TooLarge { len: 64, max: 63 }),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "frame of 64 bytes is longer than the limit of 63"
    );

    s.set_max_frame_len(10);
    let e = s.send(&[0u8; 11]).await.unwrap_err();
    assert!(
        matches!(e, StreamError::TooLarge { len: 11, max: 10 }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1", "n2"]);
    // Another cluster of the same name and nodes: its own CA.
    let other = tempfile::tempdir().unwrap();
    identity::init(other.path(), "test", &["n2"], false).unwrap();
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    // n2 trusts this cluster's CA (so it accepts n1) but presents the other CA's
    // certificate for n2.
    let foreign = NodeIdentity::from_files(
        &identity::node_cert_path(other.path(), "n2"),
        &identity::node_key_path(other.path(), "n2"),
    )
    .unwrap();
    let ca = identity::load_ca(&config.cert_dir()).unwrap();
    let n2 = Endpoint::bind_with(&config, "n2", foreign, ca).unwrap();

    let e = err(n2.connect("n1").await);
    let n1_addr = config.node("n1").unwrap().address;
    assert!(matches!(e, TransportError::RefusedByPeer { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "n1 at {n1_addr} refused this node: the certificate is not issued by this cluster's CA (invalid peer certificate: UnknownIssuer)"
        )
    );

    let e = accept_err(&n1).await;
    let n2_addr = config.node("n2").unwrap().address;
    assert!(matches!(e, TransportError::Refused { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "refused {n2_addr}: the certificate is not issued by this cluster's CA (invalid peer certificate: UnknownIssuer)"
        )
    );
}

/// A raw QUIC client that trusts the cluster CA and speaks csvfs/1 but presents no
/// certificate.
fn anonymous_client(ca: CertificateDer<'static>) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn(1)];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1"]);
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    let n1_addr = config.node("n1").unwrap().address;

    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let ca = identity::load_ca(&config.cert_dir()).unwrap();
    let connecting = client
        .connect_with(anonymous_client(ca), n1_addr, "n1.test.csvfs")
        .unwrap();
    // The client's handshake may complete before the server has judged it: then
    // the refusal arrives as the close.
    let close = match connecting.await {
        Ok(conn) => conn.closed().await,
        Err(e) => e,
    };
    let quinn::ConnectionError::ConnectionClosed(close) = close else {
        panic!("expected a TLS refusal, got {close:?}");
    };
    assert_eq!(
        u64::from(close.error_code),
        0x100 + u64::from(u8::from(rustls::AlertDescription::CertificateRequired)),
        "{close}"
    );

    let e = accept_err(&n1).await;
    assert!(matches!(e, TransportError::Refused { .. }), "{e:?}");
    let client_addr = client.local_addr().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "refused {client_addr}: no client certificate was presented (peer sent no certificates)"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_to_be_another_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1", "n2", "n3"]);
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    let cert_dir = config.cert_dir();
    // A process that claims to be n3 (binds n3's address) with n2's certificate.
    let stolen = NodeIdentity::from_files(
        &identity::node_cert_path(&cert_dir, "n2"),
        &identity::node_key_path(&cert_dir, "n2"),
    )
    .unwrap();
    let ca = identity::load_ca(&cert_dir).unwrap();
    let impostor = Endpoint::bind_with(&config, "n3", stolen, ca).unwrap();

    let [n1_addr, n2_addr, n3_addr] = ["n1", "n2", "n3"].map(|n| config.node(n).unwrap().address);
    let why = format!(
        "it presents the certificate of node n2, whose configured address is {n2_addr}, from {n3_addr}"
    );
    let e = err(impostor.connect("n1").await);
    assert!(matches!(e, TransportError::RefusedByPeer { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("n1 at {n1_addr} refused this node: {why}")
    );
    let e = accept_err(&n1).await;
    assert!(matches!(e, TransportError::Refused { .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("refused n2 at {n3_addr}: {why}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_must_not_present_the_servers_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1", "n2"]);
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    let cert_dir = config.cert_dir();
    let copy = NodeIdentity::from_files(
        &identity::node_cert_path(&cert_dir, "n1"),
        &identity::node_key_path(&cert_dir, "n1"),
    )
    .unwrap();
    let n2 =
        Endpoint::bind_with(&config, "n2", copy, identity::load_ca(&cert_dir).unwrap()).unwrap();
    let e = err(n2.connect("n1").await);
    assert!(
        e.to_string()
            .ends_with("refused this node: it presents this node's own certificate (n1)"),
        "{e}"
    );
    let e = accept_err(&n1).await;
    assert!(e.to_string().starts_with("refused n1 at "), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_a_node_that_answers_with_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1", "n2", "n3"]);
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    // n3's configuration wrongly puts n2 at n1's address: n3 dials n1 expecting n2.
    let n1_addr = config.node("n1").unwrap().address;
    let mut wrong = config.clone();
    wrong.nodes[1].address = n1_addr;
    let n3 = Endpoint::bind(&wrong, "n3").unwrap();

    let e = err(n3.connect("n2").await);
    assert!(matches!(e, TransportError::Refused { .. }), "{e:?}");
    let s = e.to_string();
    assert!(
        s.starts_with(&format!("refused n2 at {n1_addr}: the certificate was rejected (invalid peer certificate: certificate not valid for name \"n2.test.csvfs\"")),
        "{s}"
    );
    assert!(s.contains("n1.test.csvfs"), "names what was presented: {s}");

    // n1 learns that its certificate was turned down.
    let e = accept_err(&n1).await;
    assert!(matches!(e, TransportError::RefusedByPeer { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("refused this node: the certificate was rejected"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_protocol_version_is_refused_with_both_versions_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1", "n2"]);
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    let mut v2 = config.clone();
    v2.protocol_version = 2;
    let n2 = Endpoint::bind(&v2, "n2").unwrap();
    let [n1_addr, n2_addr] = ["n1", "n2"].map(|n| config.node(n).unwrap().address);

    let e = err(n2.connect("n1").await);
    assert!(matches!(e, TransportError::VersionMismatch { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("n1 at {n1_addr} speaks csvfs/1, this node csvfs/2")
    );
    let e = accept_err(&n1).await;
    assert_eq!(
        e.to_string(),
        format!("{n2_addr} speaks csvfs/2, this node csvfs/1")
    );

    // And the other way round: the v1 node dialling the v2 node.
    let e = err(n1.connect("n2").await);
    assert_eq!(
        e.to_string(),
        format!("n2 at {n2_addr} speaks csvfs/2, this node csvfs/1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_only_knows_its_own_version_still_gives_a_clear_error() {
    // A server that lists only csvfs/9 in its ALPN (as a build that predates the
    // version list would): rustls refuses csvfs/1 with a bare alert.
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1", "n2"]);
    let cert_dir = config.cert_dir();
    let id = NodeIdentity::load(&cert_dir, "test", "n1").unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
        .unwrap();
    tls.alpn_protocols = vec![alpn(9)];
    let server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let n1_addr = config.node("n1").unwrap().address;
    let server = quinn::Endpoint::server(server_config, n1_addr).unwrap();
    let accepting = tokio::spawn(async move {
        let incoming = server.accept().await.unwrap();
        let _ = incoming.await;
    });

    let n2 = Endpoint::bind(&config, "n2").unwrap();
    let e = err(n2.connect("n1").await);
    assert!(matches!(e, TransportError::VersionMismatch { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "n1 at {n1_addr} speaks another protocol version (it refused csvfs/1 with TLS no_application_protocol), this node csvfs/1"
        )
    );
    accepting.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_node_not_in_the_configuration_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_cluster(dir.path(), &["n1"]);
    let n1 = Endpoint::bind(&config, "n1").unwrap();
    let e = err(n1.connect("n7").await);
    assert_eq!(
        e.to_string(),
        "node \"n7\" is not in the cluster configuration"
    );
    let e = err(Endpoint::bind(&config, "n7"));
    assert!(e.to_string().contains("n7.pem"), "{e}");
}
