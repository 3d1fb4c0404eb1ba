//! A node's side of a shared volume: the coordinator's metadata service and the other
//! nodes' calls to it (over the lock manager's QUIC links), following the
//! coordinator role as the lock manager hands it around; the metadata leases under
//! which the nodes' kernels cache attributes and entries; the changes a node replays
//! to a new coordinator.

pub mod change_counters;
pub mod lease_cache;
pub mod leases;
pub mod mount;
pub mod recall;
pub mod stream_pool;
pub mod unconfirmed;
pub mod volume;
pub mod wire;

pub use volume::ClusterVolume;
