//! The cluster configuration, `cluster.toml`: who the nodes are, where they listen,
//! which volumes the cluster serves, its timing, and where its certificates live.
//!
//! Every node of a cluster carries the same file (default
//! [`DEFAULT_CONFIG_PATH`]); [`Config::fingerprint`] is what nodes compare so that a
//! node whose configuration differs from its peers' refuses to join. An example:
//!
//! ```toml
//! name = "prod"              # the cluster's name
//! protocol_version = 1       # the lock manager's wire protocol, in the QUIC ALPN
//! cert_dir = "certs"         # relative to this file
//!
//! [timing]
//! heartbeat_interval_ms = 200
//! lease_ms = 1500            # T_lease
//! fence_ms = 2000            # T_fence
//! drain_ms = 300
//!
//! [[node]]
//! name = "n1"
//! id = 1
//! address = "10.0.0.1:7001"
//!
//! [[volume]]
//! label = "Volume1"
//! lun = "iscsi://10.0.0.5/iqn.2026-11.com.example:storage/1"
//! ```
//!
//! Loading checks everything that can be checked without the network; each problem
//! is reported on one line, naming the file and the key.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where node daemons and `csvctl` look for the configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/csvfs/cluster.toml";

/// The certificate directory's default name, beside the configuration file.
pub const DEFAULT_CERT_DIR: &str = "certs";

/// The protocol version a new cluster starts with.
pub const DEFAULT_PROTOCOL_VERSION: u8 = 1;

/// The lowest and highest node ids. An id fits a byte because it goes into the
/// SCSI reservation key with the node's incarnation.
pub const NODE_ID_RANGE: std::ops::RangeInclusive<u8> = 1..=255;

/// The whole `cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `name`: the cluster's name, a DNS label (lowercase letters, digits and `-`,
    /// 1 to 63 characters, no `-` at either end). It is part of every node
    /// certificate's name (`<node>.<cluster>.csvfs`).
    pub name: String,
    /// `protocol_version`: the version of the lock manager's wire protocol this
    /// cluster speaks, 1 to 255. It is announced in the QUIC ALPN as `csvfs/<n>`;
    /// nodes with different versions refuse each other. Default 1.
    #[serde(default = "default_protocol_version")]
    pub protocol_version: u8,
    /// `cert_dir`: the directory holding `ca.pem` (the cluster CA), `<node>.pem` and
    /// `<node>.key`; a relative path is taken from the configuration file's
    /// directory. Default `certs`. Not part of the fingerprint: it is a local path.
    #[serde(default = "default_cert_dir")]
    pub cert_dir: PathBuf,
    /// `[timing]`: the liveness and failover intervals.
    #[serde(default)]
    pub timing: Timing,
    /// `[[node]]`: the nodes, at least one.
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeConfig>,
    /// `[[volume]]`: the volumes the cluster serves; may be empty.
    #[serde(rename = "volume", default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeConfig>,
    /// The file this configuration was read from (empty for one built in memory);
    /// `cert_dir` is relative to its directory.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[timing]`: intervals in milliseconds. They must satisfy
/// `3 × heartbeat_interval_ms <= lease_ms < fence_ms - heartbeat_interval_ms`: a node
/// stops granting leases and serving cached data (T_lease) at least a heartbeat
/// before its peers may fence it (T_fence), and a lease outlives at least three
/// heartbeats, so that one lost heartbeat does not cost a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// `heartbeat_interval_ms`: how often a node sends a heartbeat to each peer.
    /// Default 200.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// `lease_ms` (T_lease): a node that has heard from none of its peers for this
    /// long stops granting leases and serving cached data. Default 1500.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// `fence_ms` (T_fence): a node silent to its peers for this long is fenced.
    /// Default 2000.
    #[serde(default = "default_fence_ms")]
    pub fence_ms: u64,
    /// `drain_ms`: how long a node that took over a volume waits after its PREEMPT
    /// before its first write, for writes of the old holder still in flight (tgtd
    /// has no PREEMPT AND ABORT). Default 300.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval_ms: default_heartbeat_ms(),
            lease_ms: default_lease_ms(),
            fence_ms: default_fence_ms(),
            drain_ms: default_drain_ms(),
        }
    }
}

impl Timing {
    /// The protocol's timing from these settings. A recalled lease may be kept for two
    /// leases before its holder is fenced; a new coordinator waits five heartbeats for
    /// the nodes' holdings.
    pub fn protocol(&self) -> crate::protocol::Timing {
        crate::protocol::Timing {
            heartbeat: self.heartbeat_interval_ms,
            lease: self.lease_ms,
            fence: self.fence_ms,
            drain: self.drain_ms,
            recall: 2 * self.lease_ms,
            report: 5 * self.heartbeat_interval_ms,
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    /// T_lease.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    /// T_fence.
    pub fn fence(&self) -> Duration {
        Duration::from_millis(self.fence_ms)
    }
    /// The drain interval after a PREEMPT.
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

/// `[[node]]`: one node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `name`: the node's name, a DNS label like the cluster's, unique. Its
    /// certificate is `<cert_dir>/<name>.pem`, its control socket
    /// `/run/csvfs/<name>.sock`.
    pub name: String,
    /// `id`: the node's number, 1 to 255, unique; it goes into the node's SCSI
    /// reservation key.
    pub id: u8,
    /// `address`: the IP address and UDP port of the node's QUIC endpoint, e.g.
    /// `"10.0.0.1:7001"` or `"[fd00::1]:7001"`; unique, and a concrete address (not
    /// `0.0.0.0`), because peers dial it and a node's connections come from it.
    pub address: SocketAddr,
}

/// `[[volume]]`: one volume of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// `label`: the volume's label, mounted at `/ClusterStorage/<label>` on every
    /// node: 1 to 63 bytes, a plain directory name without spaces; unique.
    pub label: String,
    /// `lun`: the LUN, as `mkfs.csvfs` and `csvfs mount` take it: an image file, a
    /// block device, or `iscsi://HOST[:PORT]/TARGET-IQN/LUN`.
    pub lun: String,
}

fn default_protocol_version() -> u8 {
    DEFAULT_PROTOCOL_VERSION
}
fn default_cert_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CERT_DIR)
}
fn default_heartbeat_ms() -> u64 {
    200
}
fn default_lease_ms() -> u64 {
    1500
}
fn default_fence_ms() -> u64 {
    2000
}
fn default_drain_ms() -> u64 {
    300
}

/// Why a configuration could not be loaded. Each displays as one line that names
/// the file and, where there is one, the key; for `Io` the OS's reason is the
/// error's source (anyhow's `{:#}` prints `path: reason`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// There is no file at the path.
    #[error(
        "{path}: no cluster configuration there: make one with `csvctl cluster init`, or give its path with --config",
        path = .path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML or does not have the expected keys and types.
    #[error("{path}:{line}:{column}: {message}", path = .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// The parser's message, on one line.
        message: String,
    },
    /// The file parses but breaks a rule.
    #[error("{path}: {problem}", path = .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The broken rule.
        problem: Problem,
    },
}

/// A rule a parsed configuration breaks. The display names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `name` (or a node's name) is not a DNS label.
    #[error("{key} {value:?} is not a valid name: {why}")]
    BadName {
        /// Which key, e.g. `name` or `node[1].name`.
        key: String,
        /// The value.
        value: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// `protocol_version` is 0.
    #[error("protocol_version must be 1 to 255, not 0")]
    ProtocolVersionZero,
    /// `cert_dir` is empty.
    #[error("cert_dir must not be empty")]
    EmptyCertDir,
    /// `timing.heartbeat_interval_ms` is 0.
    #[error("timing.heartbeat_interval_ms must be at least 1")]
    HeartbeatZero,
    /// `timing.lease_ms` is shorter than three heartbeats.
    #[error(
        "timing.lease_ms ({lease_ms}) must be at least three times timing.heartbeat_interval_ms ({heartbeat_ms})"
    )]
    LeaseTooShort {
        /// T_lease.
        lease_ms: u64,
        /// The heartbeat interval.
        heartbeat_ms: u64,
    },
    /// `timing.fence_ms` is not after `timing.lease_ms` plus a heartbeat.
    #[error(
        "timing.fence_ms ({fence_ms}) must be more than timing.lease_ms plus timing.heartbeat_interval_ms ({lease_ms} + {heartbeat_ms}): a node must stop serving before it can be fenced"
    )]
    FenceNotAfterLease {
        /// T_fence.
        fence_ms: u64,
        /// T_lease.
        lease_ms: u64,
        /// The heartbeat interval.
        heartbeat_ms: u64,
    },
    /// There is no `[[node]]`.
    #[error("no [[node]]: a cluster has at least one node")]
    NoNodes,
    /// A node's `id` is 0.
    #[error("node[{index}] {name:?}: id must be 1 to 255, not 0")]
    NodeIdZero {
        /// Position in the file, from 0.
        index: usize,
        /// The node's name.
        name: String,
    },
    /// Two nodes have the same name.
    #[error("node[{index}]: the name {name:?} is already used by node[{first}]")]
    DuplicateNodeName {
        /// Position of the second, from 0.
        index: usize,
        /// Position of the first.
        first: usize,
        /// The name.
        name: String,
    },
    /// Two nodes have the same id.
    #[error("node[{index}] {name:?}: id {id} is already used by node {other:?}")]
    DuplicateNodeId {
        /// Position of the second, from 0.
        index: usize,
        /// Its name.
        name: String,
        /// The id.
        id: u8,
        /// The first node with that id.
        other: String,
    },
    /// Two nodes have the same address.
    #[error("node[{index}] {name:?}: address {address} is already used by node {other:?}")]
    DuplicateAddress {
        /// Position of the second, from 0.
        index: usize,
        /// Its name.
        name: String,
        /// The address.
        address: SocketAddr,
        /// The first node with that address.
        other: String,
    },
    /// A node's address cannot be dialled: unspecified IP or port 0.
    #[error(
        "node[{index}] {name:?}: address {address} must be a concrete IP address and a port other than 0"
    )]
    UnusableAddress {
        /// Position, from 0.
        index: usize,
        /// The node's name.
        name: String,
        /// The address.
        address: SocketAddr,
    },
    /// A volume's label is not a plain directory name.
    #[error("volume[{index}].label {label:?} is not valid: {why}")]
    BadLabel {
        /// Position, from 0.
        index: usize,
        /// The label.
        label: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// Two volumes have the same label.
    #[error("volume[{index}]: the label {label:?} is already used by volume[{first}]")]
    DuplicateLabel {
        /// Position of the second, from 0.
        index: usize,
        /// Position of the first.
        first: usize,
        /// The label.
        label: String,
    },
    /// A volume's `lun` is empty.
    #[error("volume[{index}] {label:?}: lun must not be empty")]
    EmptyLun {
        /// Position, from 0.
        index: usize,
        /// The label.
        label: String,
    },
}

impl Config {
    /// A configuration with the defaults, the given name and nodes, and no volumes;
    /// not yet validated.
    pub fn new(name: &str, nodes: Vec<NodeConfig>) -> Config {
        Config {
            name: name.to_string(),
            protocol_version: DEFAULT_PROTOCOL_VERSION,
            cert_dir: default_cert_dir(),
            timing: Timing::default(),
            nodes,
            volumes: Vec::new(),
            path: PathBuf::new(),
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is where it came from, for messages and
    /// for `cert_dir`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: one_line(e.message()),
            }
        })?;
        config.path = path.to_path_buf();
        config.validate().map_err(|problem| ConfigError::Invalid {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(config)
    }

    /// Checks every rule; the first broken one is returned.
    pub fn validate(&self) -> Result<(), Problem> {
        check_dns_label("name", &self.name)?;
        if self.protocol_version == 0 {
            return Err(Problem::ProtocolVersionZero);
        }
        if self.cert_dir.as_os_str().is_empty() {
            return Err(Problem::EmptyCertDir);
        }
        let t = &self.timing;
        if t.heartbeat_interval_ms == 0 {
            return Err(Problem::HeartbeatZero);
        }
        if t.lease_ms < t.heartbeat_interval_ms.saturating_mul(3) {
            return Err(Problem::LeaseTooShort {
                lease_ms: t.lease_ms,
                heartbeat_ms: t.heartbeat_interval_ms,
            });
        }
        if t.fence_ms <= t.lease_ms.saturating_add(t.heartbeat_interval_ms) {
            return Err(Problem::FenceNotAfterLease {
                fence_ms: t.fence_ms,
                lease_ms: t.lease_ms,
                heartbeat_ms: t.heartbeat_interval_ms,
            });
        }
        if self.nodes.is_empty() {
            return Err(Problem::NoNodes);
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ids: HashMap<u8, &str> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, &str> = HashMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            check_dns_label(&format!("node[{index}].name"), &node.name)?;
            if let Some(&first) = names.get(node.name.as_str()) {
                return Err(Problem::DuplicateNodeName {
                    index,
                    first,
                    name: node.name.clone(),
                });
            }
            names.insert(&node.name, index);
            if node.id == 0 {
                return Err(Problem::NodeIdZero {
                    index,
                    name: node.name.clone(),
                });
            }
            if let Some(other) = ids.insert(node.id, &node.name) {
                return Err(Problem::DuplicateNodeId {
                    index,
                    name: node.name.clone(),
                    id: node.id,
                    other: other.to_string(),
                });
            }
            if node.address.ip().is_unspecified() || node.address.port() == 0 {
                return Err(Problem::UnusableAddress {
                    index,
                    name: node.name.clone(),
                    address: node.address,
                });
            }
            if let Some(other) = addresses.insert(node.address, &node.name) {
                return Err(Problem::DuplicateAddress {
                    index,
                    name: node.name.clone(),
                    address: node.address,
                    other: other.to_string(),
                });
            }
        }
        let mut labels: HashMap<&str, usize> = HashMap::new();
        for (index, volume) in self.volumes.iter().enumerate() {
            check_label(&volume.label).map_err(|why| Problem::BadLabel {
                index,
                label: volume.label.clone(),
                why,
            })?;
            if let Some(&first) = labels.get(volume.label.as_str()) {
                return Err(Problem::DuplicateLabel {
                    index,
                    first,
                    label: volume.label.clone(),
                });
            }
            labels.insert(&volume.label, index);
            if volume.lun.trim().is_empty() {
                return Err(Problem::EmptyLun {
                    index,
                    label: volume.label.clone(),
                });
            }
        }
        Ok(())
    }

    /// The node called `name`, if the cluster has one.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The certificate directory, resolved against the configuration file's
    /// directory when relative.
    pub fn cert_dir(&self) -> PathBuf {
        if self.cert_dir.is_absolute() {
            return self.cert_dir.clone();
        }
        match self.path.parent() {
            Some(dir) => dir.join(&self.cert_dir),
            None => self.cert_dir.clone(),
        }
    }

    /// The lowest node id no node has yet, if any is left.
    pub fn free_node_id(&self) -> Option<u8> {
        NODE_ID_RANGE
            .into_iter()
            .find(|id| self.nodes.iter().all(|n| n.id != *id))
    }

    /// The file's text: a header comment, then the keys.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("a Config always serialises to TOML");
        format!(
            "# csvfs cluster configuration: the same file on every node of cluster {:?}.\n\
             # Keys are documented in the lockmgr crate (lockmgr/src/config.rs).\n\n{body}",
            self.name
        )
    }

    /// Writes [`Config::to_toml`] to `path` (through a temporary file and a rename,
    /// so a reader never sees half a file).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, self.to_toml()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// A digest of everything the nodes of a cluster must agree on: the name, the
    /// protocol version, the timing, the nodes (by id) and the volumes (by label).
    /// `cert_dir` and the file's path are local and left out; so are the order of
    /// the entries and the file's formatting and comments.
    ///
    /// The encoding is this crate's own (not a TOML writer's output), so that nodes
    /// built with different library versions still agree: a domain string, then
    /// each field in a fixed order, integers little-endian, strings and lists
    /// prefixed with their u32 length.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = blake3::Hasher::new();
        let str_ = |h: &mut blake3::Hasher, s: &str| {
            h.update(&(s.len() as u32).to_le_bytes());
            h.update(s.as_bytes());
        };
        h.update(b"csvfs cluster configuration v1\0");
        str_(&mut h, &self.name);
        h.update(&[self.protocol_version]);
        let t = &self.timing;
        for ms in [t.heartbeat_interval_ms, t.lease_ms, t.fence_ms, t.drain_ms] {
            h.update(&ms.to_le_bytes());
        }
        let mut nodes: Vec<&NodeConfig> = self.nodes.iter().collect();
        nodes.sort_by_key(|n| n.id);
        h.update(&(nodes.len() as u32).to_le_bytes());
        for n in nodes {
            h.update(&[n.id]);
            str_(&mut h, &n.name);
            str_(&mut h, &n.address.to_string());
        }
        let mut volumes: Vec<&VolumeConfig> = self.volumes.iter().collect();
        volumes.sort_by(|a, b| a.label.cmp(&b.label));
        h.update(&(volumes.len() as u32).to_le_bytes());
        for v in volumes {
            str_(&mut h, &v.label);
            str_(&mut h, &v.lun);
        }
        Fingerprint(*h.finalize().as_bytes())
    }
}

/// The digest [`Config::fingerprint`] returns; displays as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Checks a cluster or node name: a DNS label, lowercase, because it becomes part
/// of a certificate's DNS name and the names are compared byte for byte.
pub fn check_dns_label(key: &str, value: &str) -> Result<(), Problem> {
    let bad = |why| {
        Err(Problem::BadName {
            key: key.to_string(),
            value: value.to_string(),
            why,
        })
    };
    if value.is_empty() || value.len() > 63 {
        return bad("it must be 1 to 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lowercase letters, digits and '-' are allowed");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return bad("it must not begin or end with '-'");
    }
    Ok(())
}

/// The rule `mkfs.csvfs` applies to labels (metadata's `check_label`), repeated
/// here because lockmgr does not depend on metadata.
fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() || label.len() > 63 {
        return Err("it must be 1 to 63 bytes");
    }
    if label == "."
        || label == ".."
        || label.contains('/')
        || label.contains('\0')
        || label.contains(char::is_whitespace)
    {
        return Err("it must be a plain directory name without spaces");
    }
    Ok(())
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "prod"

[[node]]
name = "n1"
id = 1
address = "127.0.0.1:7001"

[[node]]
name = "n2"
id = 2
address = "127.0.0.1:7002"

[[volume]]
label = "Volume1"
lun = "/var/tmp/v1.img"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/csvfs/cluster.toml"))
    }

    fn problem(text: &str) -> Problem {
        match parse(text) {
            Err(ConfigError::Invalid { problem, .. }) => problem,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn with_nodes(nodes: &str) -> String {
        format!("name = \"prod\"\n{nodes}")
    }

    #[test]
    fn parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.name, "prod");
        assert_eq!(c.protocol_version, 1);
        assert_eq!(c.timing, Timing::default());
        assert!(c.timing.lease() < c.timing.fence());
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[1].address, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(c.volumes[0].label, "Volume1");
        assert_eq!(c.cert_dir(), Path::new("/etc/csvfs/certs"));
        assert_eq!(c.node("n2").unwrap().id, 2);
        assert!(c.node("n3").is_none());
        assert_eq!(c.free_node_id(), Some(3));
    }

    #[test]
    fn parses_every_key() {
        let c = parse(
            r#"
name = "c-1"
protocol_version = 7
cert_dir = "/srv/pki"
[timing]
heartbeat_interval_ms = 100
lease_ms = 1000
fence_ms = 1500
drain_ms = 250
[[node]]
name = "a"
id = 9
address = "[::1]:7001"
"#,
        )
        .unwrap();
        assert_eq!(c.protocol_version, 7);
        assert_eq!(c.cert_dir(), Path::new("/srv/pki"));
        assert_eq!(c.timing.drain(), Duration::from_millis(250));
        assert_eq!(c.timing.heartbeat_interval(), Duration::from_millis(100));
        assert!(c.volumes.is_empty());
    }

    #[test]
    fn round_trips_through_to_toml() {
        let c = parse(GOOD).unwrap();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(c, again);
        assert_eq!(c.fingerprint(), again.fingerprint());
    }

    #[test]
    fn fingerprint_ignores_order_and_local_paths_but_not_content() {
        let a = parse(GOOD).unwrap();
        let mut b = a.clone();
        b.nodes.reverse();
        b.cert_dir = PathBuf::from("/elsewhere");
        b.path = PathBuf::from("/tmp/x.toml");
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.timing.drain_ms += 1;
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut d = a.clone();
        d.nodes[0].address = "127.0.0.1:7009".parse().unwrap();
        assert_ne!(a.fingerprint(), d.fingerprint());
        let mut e = a.clone();
        e.protocol_version = 2;
        assert_ne!(a.fingerprint(), e.fingerprint());
        assert_eq!(a.fingerprint().to_string().len(), 64);
    }

    #[test]
    fn syntax_errors_name_file_line_and_column_on_one_line() {
        let e = parse(
            "name = \"prod\"\n[[node]]\nname = \"n1\"\nid = 300\naddress = \"127.0.0.1:1\"\n",
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/csvfs/cluster.toml:4:"), "{s}");
        assert!(!s.contains('\n'), "{s}");
        let e = parse("name = \"prod\"\nnodes = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("nodes"), "{e}");
        let e = parse("name = \"prod\"\n[[node]]\nname = \"n1\"\nid = 1\naddress = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":5:"), "{e}");
        let e = parse("name = \n").unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
        let e = parse("[[node]]\nname = \"n1\"\nid = 1\naddress = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("name"), "{e}");
    }

    #[test]
    fn rejects_bad_cluster_names() {
        for bad in ["", "Prod", "a_b", "-a", "a-", &"x".repeat(64)] {
            let p = problem(&GOOD.replace("name = \"prod\"", &format!("name = {bad:?}")));
            assert!(
                matches!(p, Problem::BadName { ref key, .. } if key == "name"),
                "{p}"
            );
        }
    }

    #[test]
    fn rejects_bad_node_names() {
        let p = problem(&GOOD.replace("\"n2\"", "\"N2\""));
        assert!(p.to_string().starts_with("node[1].name \"N2\""), "{p}");
    }

    #[test]
    fn rejects_protocol_version_zero() {
        let p = problem(&format!("protocol_version = 0\n{GOOD}"));
        assert_eq!(p, Problem::ProtocolVersionZero);
    }

    #[test]
    fn rejects_empty_cert_dir() {
        assert_eq!(
            problem(&format!("cert_dir = \"\"\n{GOOD}")),
            Problem::EmptyCertDir
        );
    }

    #[test]
    fn rejects_bad_timing() {
        let timing = |h: u64, l: u64, f: u64| {
            format!(
                "{GOOD}\n[timing]\nheartbeat_interval_ms = {h}\nlease_ms = {l}\nfence_ms = {f}\n"
            )
        };
        assert_eq!(problem(&timing(0, 10, 20)), Problem::HeartbeatZero);
        let p = problem(&timing(100, 200, 300));
        assert_eq!(
            p,
            Problem::LeaseTooShort {
                lease_ms: 200,
                heartbeat_ms: 100
            }
        );
        assert!(p.to_string().contains("timing.lease_ms"), "{p}");
        let p = problem(&timing(100, 1000, 1100));
        assert!(matches!(p, Problem::FenceNotAfterLease { .. }), "{p}");
        assert!(p.to_string().contains("timing.fence_ms (1100)"), "{p}");
        assert!(matches!(
            problem(&timing(100, 1000, 900)),
            Problem::FenceNotAfterLease { .. }
        ));
        assert!(parse(&timing(100, 300, 401)).is_ok());
    }

    #[test]
    fn rejects_no_nodes() {
        assert_eq!(problem("name = \"prod\"\n"), Problem::NoNodes);
    }

    #[test]
    fn rejects_node_id_zero() {
        let p = problem(&GOOD.replace("id = 2", "id = 0"));
        assert!(matches!(p, Problem::NodeIdZero { index: 1, .. }), "{p}");
    }

    #[test]
    fn rejects_duplicate_node_names() {
        let p = problem(&GOOD.replace("\"n2\"", "\"n1\""));
        assert!(
            matches!(
                p,
                Problem::DuplicateNodeName {
                    index: 1,
                    first: 0,
                    ..
                }
            ),
            "{p}"
        );
    }

    #[test]
    fn rejects_duplicate_node_ids() {
        let p = problem(&GOOD.replace("id = 2", "id = 1"));
        assert_eq!(
            p.to_string(),
            "node[1] \"n2\": id 1 is already used by node \"n1\""
        );
    }

    #[test]
    fn rejects_duplicate_addresses() {
        let p = problem(&GOOD.replace("7002", "7001"));
        assert!(
            matches!(p, Problem::DuplicateAddress { index: 1, .. }),
            "{p}"
        );
    }

    #[test]
    fn rejects_unusable_addresses() {
        for addr in ["0.0.0.0:7002", "127.0.0.1:0", "[::]:7002"] {
            let p = problem(&GOOD.replace("127.0.0.1:7002", addr));
            assert!(
                matches!(p, Problem::UnusableAddress { index: 1, .. }),
                "{p}"
            );
        }
    }

    #[test]
    fn rejects_bad_labels() {
        for bad in ["", "a b", "a/b", "..", &"v".repeat(64)] {
            let p = problem(&GOOD.replace("\"Volume1\"", &format!("{bad:?}")));
            assert!(matches!(p, Problem::BadLabel { index: 0, .. }), "{p}");
        }
    }

    #[test]
    fn rejects_duplicate_labels() {
        let text = format!("{GOOD}\n[[volume]]\nlabel = \"Volume1\"\nlun = \"/x\"\n");
        let p = problem(&text);
        assert!(
            matches!(
                p,
                Problem::DuplicateLabel {
                    index: 1,
                    first: 0,
                    ..
                }
            ),
            "{p}"
        );
    }

    #[test]
    fn rejects_empty_lun() {
        let p = problem(&GOOD.replace("\"/var/tmp/v1.img\"", "\"\""));
        assert!(matches!(p, Problem::EmptyLun { index: 0, .. }), "{p}");
    }

    #[test]
    fn invalid_errors_name_the_file_on_one_line() {
        let e = parse(&with_nodes("")).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/csvfs/cluster.toml: no [[node]]: a cluster has at least one node"
        );
    }

    #[test]
    fn a_missing_file_says_how_to_make_one() {
        let e = Config::load(Path::new("/nonexistent/cluster.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/cluster.toml: no cluster configuration there"),
            "{e}"
        );
        assert!(
            e.contains("csvctl cluster init") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn the_default_timing_satisfies_the_protocol() {
        let t = Timing::default().protocol();
        t.check().unwrap();
        assert_eq!(t.lease, 1500);
    }
}
