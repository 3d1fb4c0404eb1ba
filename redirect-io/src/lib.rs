//! Redirected I/O: how a node that lost its own path to a LUN keeps working through a
//! node that still has one (DESIGN.md, "I/O layer").
//!
//! - [`wire`]: the frames of the block service (read, write, flush; answers and
//!   refusals), with a checked decoder.
//! - [`server`]: serves other nodes' block I/O on this node's direct path, refusing a
//!   sender that is fenced or speaks for another epoch.
//! - [`client`]: [`RedirectedDevice`], a [`blockdev::BlockDevice`] whose I/O goes over
//!   QUIC to a node with a direct path, pipelined, large I/O streamed in pieces.
//! - [`monitor`]: [`PathMonitor`], the device a node uses: direct while the path
//!   works, redirected when it fails (the failed I/O goes again through the peer, so
//!   the caller sees latency, not an error), back to direct when probes find the
//!   path healthy again.
//! - [`cluster`]: the block service wired to a running node's lock manager (where to
//!   send, whom to admit).

pub mod client;
pub mod cluster;
pub mod monitor;
pub mod server;
pub mod wire;

pub use client::{RedirectedDevice, Route, Target};
pub use monitor::{PathMonitor, PathReport, PathState, Reason};
pub use server::{Gate, Refusal};

/// The service number of redirected block I/O on the peer links (the metadata
/// service is 1).
pub const BLOCK_SERVICE: u8 = 2;
