//! Cluster identity: the cluster CA and a key and certificate per node, made with
//! rcgen, kept as PEM files in the cluster's certificate directory.
//!
//! | file | what | mode |
//! |---|---|---|
//! | `ca.pem` | the cluster CA's certificate (every node needs it) | 0644 |
//! | `ca.key` | the CA's private key (only where `csvctl node add` runs) | 0600 |
//! | `<node>.pem` | the node's certificate, signed by the CA | 0644 |
//! | `<node>.key` | the node's private key (only on that node) | 0600 |
//!
//! A node certificate names its node by one DNS subject alternative name,
//! `<node>.<cluster>.csvfs` ([`node_dns_name`]): the cluster name keeps a certificate
//! of one cluster from naming a node of another even if the two shared a CA, and
//! the `.csvfs` suffix keeps it out of any real DNS zone. It carries both the
//! server and the client extended key usages, since every node both dials and
//! answers. Keys are ECDSA P-256; certificates are valid from 1975 to 4096 (the
//! rcgen defaults), because a cluster has no renewal yet and an expired
//! certificate would stop it; a node is retired by making a new CA (there is no
//! revocation list yet).
//!
//! This module knows nothing of QUIC; the transport loads what it makes.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The CA certificate's file name in the certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in the certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// The DNS name a node's certificate carries: `<node>.<cluster>.csvfs`.
pub fn node_dns_name(cluster: &str, node: &str) -> String {
    format!("{node}.{cluster}.csvfs")
}

/// A node's certificate file in `dir`.
pub fn node_cert_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.pem"))
}

/// A node's key file in `dir`.
pub fn node_key_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}.key"))
}

/// Why identity files could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file or directory could not be read, written or created.
    #[error("{path}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file to be written exists and overwriting was not asked for.
    #[error("{path} already exists", path = .path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot generate {what}")]
    Generate {
        /// What was being made.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: not a PEM {what}: {detail}", path = .path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// A certificate is not an X.509 certificate this code can read.
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    /// A certificate names no node of the cluster, or more than one.
    #[error(
        "the certificate names {found}, not exactly one node of cluster {cluster:?} (<node>.{cluster}.csvfs)"
    )]
    NoNodeName {
        /// The cluster.
        cluster: String,
        /// The DNS names it carries, for the message.
        found: String,
    },
    /// A node's certificate file is another node's.
    #[error("{path} is the certificate of node {found:?}, not of {expected:?}", path = .path.display())]
    WrongNode {
        /// The file.
        path: PathBuf,
        /// The node the file should name.
        expected: String,
        /// The node it names.
        found: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn generate(what: &str) -> impl FnOnce(rcgen::Error) -> IdentityError + '_ {
    move |source| IdentityError::Generate {
        what: what.to_string(),
        source,
    }
}

/// Makes a new cluster CA and a key and certificate for each of `nodes` in `dir`
/// (created if missing). Refuses to replace any existing file unless `overwrite`.
pub fn init(
    dir: &Path,
    cluster: &str,
    nodes: &[&str],
    overwrite: bool,
) -> Result<(), IdentityError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut targets = vec![dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE)];
    for node in nodes {
        targets.push(node_cert_path(dir, node));
        targets.push(node_key_path(dir, node));
    }
    if !overwrite {
        refuse_existing(&targets)?;
    }
    let ca_key = KeyPair::generate().map_err(generate("the CA key"))?;
    let ca_params = ca_params(cluster, &ca_key);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(generate("the CA certificate"))?;
    let issuer = Issuer::new(ca_params, ca_key);
    for node in nodes {
        write_node(dir, cluster, node, &issuer, overwrite)?;
    }
    write_file(&dir.join(CA_CERT_FILE), &ca_cert.pem(), 0o644, overwrite)?;
    // The CA key last: its presence means the directory is complete.
    write_file(
        &dir.join(CA_KEY_FILE),
        &issuer.key().serialize_pem(),
        0o600,
        overwrite,
    )?;
    Ok(())
}

/// Makes a key and a certificate for `node`, signed with the CA key in `dir`.
/// Refuses if the node already has files there.
pub fn add_node(dir: &Path, cluster: &str, node: &str) -> Result<(), IdentityError> {
    refuse_existing(&[node_cert_path(dir, node), node_key_path(dir, node)])?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io_error(&ca_cert_path))?;
    let key_pem = fs::read_to_string(&ca_key_path).map_err(io_error(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::BadPem {
        path: ca_key_path.clone(),
        what: "private key",
        detail: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| IdentityError::BadPem {
        path: ca_cert_path.clone(),
        what: "CA certificate",
        detail: e.to_string(),
    })?;
    write_node(dir, cluster, node, &issuer, false)
}

/// The CA's name carries a digest of its key: two CAs made for clusters of the
/// same name then differ by name too, so a certificate of the other is reported as
/// of an unknown issuer rather than as a bad signature.
fn ca_params(cluster: &str, key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let digest = blake3::hash(key.public_key_raw()).to_hex();
    dn.push(
        DnType::CommonName,
        format!("csvfs cluster {cluster} CA {}", &digest[..16]),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn write_node(
    dir: &Path,
    cluster: &str,
    node: &str,
    issuer: &Issuer<'_, KeyPair>,
    overwrite: bool,
) -> Result<(), IdentityError> {
    let what = format!("the certificate of node {node}");
    let key = KeyPair::generate().map_err(generate(&what))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    let dns = node_dns_name(cluster, node)
        .try_into()
        .map_err(generate(&what))?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer).map_err(generate(&what))?;
    write_file(
        &node_key_path(dir, node),
        &key.serialize_pem(),
        0o600,
        overwrite,
    )?;
    write_file(&node_cert_path(dir, node), &cert.pem(), 0o644, overwrite)
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), IdentityError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(IdentityError::Exists { path: p.clone() }),
        None => Ok(()),
    }
}

/// Writes through a temporary file created with `mode`, so a key is never readable
/// by others, not even for a moment, and a reader never sees half a file.
fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    overwrite: bool,
) -> Result<(), IdentityError> {
    if !overwrite && path.exists() {
        return Err(IdentityError::Exists {
            path: path.to_path_buf(),
        });
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    // The umask may have taken bits away from a certificate's 0644; put them back.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_error(&tmp))?;
    f.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

/// The CA certificate in `dir`.
pub fn load_ca(dir: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    load_cert(&dir.join(CA_CERT_FILE))
}

fn load_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    // Read first so that a missing file is an I/O error naming the OS's reason.
    let pem = fs::read(path).map_err(io_error(path))?;
    CertificateDer::from_pem_slice(&pem).map_err(|e| IdentityError::BadPem {
        path: path.to_path_buf(),
        what: "certificate",
        detail: e.to_string(),
    })
}

/// A node's certificate and private key, as the transport presents them.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The node certificate (the CA is not sent: every peer has it).
    pub cert: CertificateDer<'static>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl NodeIdentity {
    /// Loads `<node>.pem` and `<node>.key` from `dir` and checks that the
    /// certificate names `node` of `cluster`, so a copied file is caught here
    /// rather than as a refusal by every peer.
    pub fn load(dir: &Path, cluster: &str, node: &str) -> Result<NodeIdentity, IdentityError> {
        let cert_path = node_cert_path(dir, node);
        let identity = NodeIdentity::from_files(&cert_path, &node_key_path(dir, node))?;
        let found = node_name_of(&identity.cert, cluster)?;
        if found != node {
            return Err(IdentityError::WrongNode {
                path: cert_path,
                expected: node.to_string(),
                found,
            });
        }
        Ok(identity)
    }

    /// Loads a certificate and a key from PEM files, with no check of the name.
    pub fn from_files(cert: &Path, key: &Path) -> Result<NodeIdentity, IdentityError> {
        let cert = load_cert(cert)?;
        let pem = fs::read(key).map_err(io_error(key))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| IdentityError::BadPem {
            path: key.to_path_buf(),
            what: "private key",
            detail: e.to_string(),
        })?;
        Ok(NodeIdentity { cert, key })
    }
}

/// The node a certificate names: its one DNS name of the form
/// `<node>.<cluster>.csvfs`. The certificate's signature is not checked here (the
/// TLS layer has done it).
pub fn node_name_of(cert: &CertificateDer<'_>, cluster: &str) -> Result<String, IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let dns: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(s) => Some(*s),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let suffix = format!(".{cluster}.csvfs");
    let nodes: Vec<&str> = dns
        .iter()
        .filter_map(|d| d.strip_suffix(&suffix))
        .filter(|n| !n.is_empty() && !n.contains('.'))
        .collect();
    match nodes.as_slice() {
        [one] => Ok(one.to_string()),
        _ => Err(IdentityError::NoNodeName {
            cluster: cluster.to_string(),
            found: if dns.is_empty() {
                "no DNS name".to_string()
            } else {
                dns.join(", ")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_ca_and_node_files_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "prod", &["n1", "n2"], false).unwrap();
        for f in ["ca.pem", "n1.pem", "n2.pem"] {
            assert_eq!(mode(&dir.path().join(f)), 0o644, "{f}");
        }
        for f in ["ca.key", "n1.key", "n2.key"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }
        let id = NodeIdentity::load(dir.path(), "prod", "n2").unwrap();
        assert_eq!(node_name_of(&id.cert, "prod").unwrap(), "n2");
        load_ca(dir.path()).unwrap();
    }

    #[test]
    fn init_refuses_to_overwrite_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "prod", &["n1"], false).unwrap();
        let before = fs::read(dir.path().join("ca.pem")).unwrap();
        let e = init(dir.path(), "prod", &["n1"], false).unwrap_err();
        assert!(e.to_string().ends_with("ca.pem already exists"), "{e}");
        init(dir.path(), "prod", &["n1"], true).unwrap();
        assert_ne!(before, fs::read(dir.path().join("ca.pem")).unwrap());
    }

    #[test]
    fn add_node_signs_with_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "prod", &["n1"], false).unwrap();
        let ca = fs::read(dir.path().join("ca.pem")).unwrap();
        add_node(dir.path(), "prod", "n3").unwrap();
        assert_eq!(ca, fs::read(dir.path().join("ca.pem")).unwrap());
        assert_eq!(mode(&dir.path().join("n3.key")), 0o600);
        let id = NodeIdentity::load(dir.path(), "prod", "n3").unwrap();
        // Issued by the CA: its issuer is the CA's subject and its AKI the CA's SKI.
        let (_, leaf) = x509_parser::parse_x509_certificate(id.cert.as_ref()).unwrap();
        let ca_der = load_ca(dir.path()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref()).unwrap();
        assert_eq!(leaf.issuer(), ca.subject());
        assert!(leaf.verify_signature(Some(ca.public_key())).is_ok());
        let e = add_node(dir.path(), "prod", "n3").unwrap_err();
        assert!(e.to_string().ends_with("n3.pem already exists"), "{e}");
    }

    #[test]
    fn add_node_without_a_ca_says_which_file_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = add_node(dir.path(), "prod", "n1").unwrap_err().to_string();
        assert!(e.ends_with("/ca.pem"), "{e}");
    }

    #[test]
    fn load_refuses_another_nodes_certificate() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "prod", &["n1", "n2"], false).unwrap();
        fs::copy(dir.path().join("n2.pem"), dir.path().join("n3.pem")).unwrap();
        fs::copy(dir.path().join("n2.key"), dir.path().join("n3.key")).unwrap();
        let e = NodeIdentity::load(dir.path(), "prod", "n3").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("n3.pem is the certificate of node \"n2\", not of \"n3\""),
            "{e}"
        );
    }

    #[test]
    fn node_name_is_only_read_within_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "prod", &["n1"], false).unwrap();
        let id = NodeIdentity::load(dir.path(), "prod", "n1").unwrap();
        let e = node_name_of(&id.cert, "test").unwrap_err().to_string();
        assert!(e.contains("n1.prod.csvfs"), "{e}");
        let ca = load_ca(dir.path()).unwrap();
        let e = node_name_of(&ca, "prod").unwrap_err().to_string();
        assert!(e.contains("no DNS name"), "{e}");
    }
}
