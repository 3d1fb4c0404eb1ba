//! The rustls side of the transport: mutual TLS 1.3 against the cluster CA, the
//! ALPN that carries the protocol version, and plain words for TLS failures.
//!
//! Both directions trust exactly one root, the cluster CA. The server requires a
//! client certificate (`WebPkiClientVerifier`); the client checks the server's
//! certificate for the DNS name of the node it dialled (`<node>.<cluster>.csvfs`).
//! Which node a client is, the server reads from its certificate after the
//! handshake (`super::Endpoint` does that).
//!
//! Versions: a client offers only its own `csvfs/<n>`. A server lists its own
//! first and then every other `csvfs/1` to `csvfs/255`, so that a client of
//! another version still completes the handshake and can be told, in words, which
//! version the server speaks (rustls alone would only send a bare
//! `no_application_protocol` alert). The server closes such a connection at once;
//! nothing else is exchanged.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, RootCertStore};

use crate::identity::NodeIdentity;

/// The ALPN protocol id of a protocol version: `csvfs/<version>`.
pub fn alpn(version: u8) -> Vec<u8> {
    format!("csvfs/{version}").into_bytes()
}

/// An ALPN protocol id for messages: lossy UTF-8.
pub(crate) fn alpn_text(alpn: &[u8]) -> String {
    String::from_utf8_lossy(alpn).into_owned()
}

/// ring only: aws-lc-rs (rustls' default) needs a C toolchain and cmake.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The server half: requires a client certificate issued by the cluster CA.
pub(crate) fn server_config(
    ca: &CertificateDer<'static>,
    identity: &NodeIdentity,
    version: u8,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.alpn_protocols = std::iter::once(version)
        .chain((1..=u8::MAX).filter(|v| *v != version))
        .map(alpn)
        .collect();
    Ok(config)
}

/// The client half: presents this node's certificate, trusts the cluster CA only,
/// and offers only this node's version.
pub(crate) fn client_config(
    ca: &CertificateDer<'static>,
    identity: &NodeIdentity,
    version: u8,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.alpn_protocols = vec![alpn(version)];
    Ok(config)
}

/// The TLS alert carried in a QUIC crypto error code (0x100 + alert), if it is one.
pub(crate) fn alert_of(code: quinn::TransportErrorCode) -> Option<AlertDescription> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then(|| AlertDescription::from((code & 0xff) as u8))
}

/// What a TLS alert means for a cluster connection, in words; `detail` is rustls'
/// own text when there is one (the side that raised the alert has it).
pub(crate) fn describe_alert(alert: AlertDescription, detail: &str) -> String {
    let words = match alert {
        AlertDescription::CertificateRequired => "no client certificate was presented".to_string(),
        AlertDescription::UnknownCA => {
            "the certificate is not issued by this cluster's CA".to_string()
        }
        AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => {
            "the certificate was rejected".to_string()
        }
        // webpki found an issuer of the right name whose key did not sign it.
        AlertDescription::DecryptError => {
            "the certificate's signature does not verify against this cluster's CA".to_string()
        }
        AlertDescription::CertificateExpired => "the certificate has expired".to_string(),
        AlertDescription::NoApplicationProtocol => {
            "no protocol version in common (ALPN)".to_string()
        }
        other => format!("TLS alert {other:?}"),
    };
    if detail.is_empty() {
        words
    } else {
        format!("{words} ({detail})")
    }
}
