//! The csvfs lock manager: who the cluster's nodes are, how they reach each other,
//! and (to come) membership, coordinator election with fencing, and the lock
//! service of each volume.
//!
//! Today it owns:
//! - [`config`]: `cluster.toml`, loaded and validated, and its fingerprint;
//! - [`identity`]: the cluster CA and the node certificates (rcgen);
//! - [`transport`]: QUIC endpoints with mutual TLS against the cluster CA, the
//!   protocol version in the ALPN, framed messages on streams;
//! - [`protocol`]: election, fencing and leases as sans-IO state machines (they take
//!   the time and events and return actions), simulated deterministically by
//!   `tests/simulation.rs`.
//!
//! The transport knows no message types and keeps no protocol state: the protocol
//! core (election, leases) is sans-IO and is driven through it by a thin shell. This
//! crate knows nothing of file system semantics.

pub mod cluster_region;
pub mod config;
pub mod control;
pub mod identity;
pub mod protocol;
pub mod shell;
pub mod transport;
pub mod wire;

pub use config::{
    Config, ConfigError, DEFAULT_CONFIG_PATH, NodeConfig, Problem, Timing, VolumeConfig,
};
pub use identity::{IdentityError, NodeIdentity};
pub use transport::{Connection, Endpoint, FramedStream, StreamError, TransportError};
