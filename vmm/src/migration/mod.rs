//! Live migration: pre-copy of a running VM's memory from the VM process on one node
//! to a VM process on another, over QUIC with the cluster's mutual TLS (lockmgr's
//! service endpoints), while the VM's disk stays on the shared volume.
//!
//! The source sends every page, then in rounds the pages dirtied meanwhile (KVM's
//! dirty log, and the VMM's own writes to guest memory from vm-memory's bitmap,
//! which KVM does not log; zero pages as markers), until the estimated downtime fits
//! the limit, slowing the guest down (auto-converge) when rounds do not converge.
//! Then it pauses the VM, sends the last pages and the vCPU and device
//! state, flushes the disk, and once the destination has the VM built, hands the
//! VM lease over; the destination takes it and resumes the VM. Until the lease is
//! handed over any failure leaves the VM running on the source.

pub mod destination;
pub mod source;
pub mod throttle;
pub mod wire;

use std::time::Duration;

use lockmgr::FramedStream;
use wire::{MAX_FRAME, Message};

/// How long either side waits for the other's next step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{0}")]
    Failed(String),
    #[error("the peer gave up: {0}")]
    PeerFailed(String),
}

fn failed(what: impl std::fmt::Display) -> MigrationError {
    MigrationError::Failed(what.to_string())
}

/// Sends one message.
async fn send(stream: &mut FramedStream, m: &Message) -> Result<(), MigrationError> {
    stream
        .send(&m.encode())
        .await
        .map_err(|e| failed(format!("cannot send to the peer: {e}")))
}

/// Receives one message, within [`STEP_TIMEOUT`]; a `Failed` from the peer is an error.
async fn recv(stream: &mut FramedStream, waiting_for: &str) -> Result<Message, MigrationError> {
    let frame = recv_frame(stream, waiting_for).await?;
    match Message::decode(&frame).map_err(failed)? {
        Message::Failed(why) => Err(MigrationError::PeerFailed(why)),
        m => Ok(m),
    }
}

/// Receives the next frame, undecoded, within [`STEP_TIMEOUT`].
async fn recv_frame(
    stream: &mut FramedStream,
    waiting_for: &str,
) -> Result<Vec<u8>, MigrationError> {
    match tokio::time::timeout(STEP_TIMEOUT, stream.recv()).await {
        Err(_) => Err(failed(format!(
            "the peer sent nothing for {STEP_TIMEOUT:?} (waiting for {waiting_for})"
        ))),
        Ok(Err(e)) => Err(failed(format!(
            "the connection failed waiting for {waiting_for}: {e}"
        ))),
        Ok(Ok(None)) => Err(failed(format!(
            "the peer closed the stream before {waiting_for}"
        ))),
        Ok(Ok(Some(f))) => Ok(f),
    }
}

/// Sets a stream up for migration frames.
fn prepare(stream: &mut FramedStream) {
    stream.set_max_frame_len(MAX_FRAME);
}

/// A runtime for one migration (the VM process is otherwise synchronous).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
