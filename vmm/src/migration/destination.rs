//! The receiving side of a live migration: the VM process `vmm migrate` starts on
//! the destination node with `--incoming-from`. It builds the VM when the source says
//! hello and writes the pages straight into its memory as they arrive; once the
//! source has paused the VM and flushed the disk, it opens the VHD (only then, so its
//! block table is current), puts the state and devices in, takes the VM lease when
//! the source hands it over, and starts the VM.

use std::net::SocketAddr;
use std::path::Path;

use lockmgr::{Config, Endpoint, FramedStream};

use super::wire::{Message, PAGE, borrow_pages};
use super::{MigrationError, STEP_TIMEOUT, failed, prepare, recv, recv_frame, send};
use crate::devices::Devices;
use crate::devices::serial::ConsoleSink;
use crate::machine::memory::snapshot;
use crate::machine::{Machine, state_codec};
use crate::runner::lease::VmLease;
use crate::vhd::VhdImage;
use vm_memory::{Bytes, GuestAddress};

/// What the destination needs to build the VM.
pub struct Incoming<'a> {
    /// The VM's name and memory, from its vm.toml.
    pub vm: &'a str,
    pub memory_bytes: u64,
    /// The VM's directory and disk, as this node mounts them.
    pub vm_dir: &'a Path,
    pub disk: &'a Path,
    /// This node, and the node the VM comes from.
    pub node: &'a str,
    pub from: &'a str,
}

/// A migration endpoint waiting for the source.
pub struct Listener {
    rt: tokio::runtime::Runtime,
    endpoint: Endpoint,
}

impl Listener {
    /// Binds this node's migration endpoint.
    pub fn bind(cluster: &Config, node: &str) -> Result<Listener, MigrationError> {
        let rt = super::runtime().map_err(failed)?;
        let endpoint = rt
            .block_on(async { Endpoint::bind_service(cluster, node) })
            .map_err(|e| failed(format!("cannot open a migration endpoint: {e}")))?;
        Ok(Listener { rt, endpoint })
    }

    /// Where the source should dial.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Receives the VM and starts it; returns it running, with its lease.
    pub fn receive(
        self,
        inc: &Incoming,
        console: ConsoleSink,
    ) -> Result<(Machine, VmLease), MigrationError> {
        let Listener { rt, endpoint } = self;
        let r = rt.block_on(async {
            let conn = match tokio::time::timeout(STEP_TIMEOUT, endpoint.accept()).await {
                Err(_) => {
                    return Err(failed(format!(
                        "node {} did not connect within {STEP_TIMEOUT:?}",
                        inc.from
                    )));
                }
                Ok(None) => return Err(failed("the migration endpoint closed")),
                Ok(Some(Err(e))) => return Err(failed(format!("a connection was refused: {e}"))),
                Ok(Some(Ok(c))) => c,
            };
            if conn.peer() != inc.from {
                conn.close(1, "not the expected source node");
                return Err(failed(format!(
                    "node {} connected, not {}",
                    conn.peer(),
                    inc.from
                )));
            }
            let mut stream = conn
                .accept_stream()
                .await
                .map_err(|e| failed(format!("no stream from {}: {e}", inc.from)))?;
            prepare(&mut stream);
            let r = run(inc, console, &mut stream).await;
            if let Err(e) = &r
                && !matches!(e, MigrationError::PeerFailed(_))
            {
                let _ = send(&mut stream, &Message::Failed(e.to_string())).await;
            }
            let _ = stream.send.finish();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            r
        });
        endpoint.close();
        r
    }
}

async fn run(
    inc: &Incoming<'_>,
    console: ConsoleSink,
    stream: &mut FramedStream,
) -> Result<(Machine, VmLease), MigrationError> {
    match recv(stream, "the source's hello").await? {
        Message::Hello {
            vm, memory_bytes, ..
        } => {
            if vm != inc.vm || memory_bytes != inc.memory_bytes {
                return Err(failed(format!(
                    "the source sends VM {vm} with {memory_bytes} bytes of memory; this is VM {} with {}",
                    inc.vm, inc.memory_bytes
                )));
            }
        }
        other => {
            return Err(failed(format!(
                "the source began with {other:?}, not Hello"
            )));
        }
    }
    // The VM is built now, and the pages go straight into its memory as they come:
    // at the switch-over only the state and the devices remain to be put in. Its
    // disk until then is a read-only view; the real one is opened once the source
    // has paused and flushed (a dynamic VHD's block table changes while the guest
    // runs).
    let early_disk = VhdImage::open_path(inc.disk, true)
        .map_err(|e| failed(format!("cannot open the disk {}: {e}", inc.disk.display())))?;
    let mut machine =
        Machine::new(inc.memory_bytes, Box::new(std::io::sink()), early_disk).map_err(failed)?;
    let zeros = [0u8; PAGE];
    let mut expected_hash = None;
    let state = loop {
        // Pages are most of what comes: written into guest memory from the frame.
        let frame = recv_frame(stream, "memory pages").await?;
        if let Some(pages) = borrow_pages(&frame).map_err(failed)? {
            for (p, data) in pages {
                let at = p
                    .checked_mul(PAGE as u64)
                    .filter(|&a| a + PAGE as u64 <= inc.memory_bytes)
                    .ok_or_else(|| failed(format!("page {p} is outside the VM's memory")))?;
                machine
                    .ram()
                    .write_slice(data.unwrap_or(&zeros), GuestAddress(at))
                    .map_err(|e| failed(format!("cannot write guest page {p}: {e}")))?;
            }
            continue;
        }
        match Message::decode(&frame).map_err(failed)? {
            Message::Verify(hash) => expected_hash = Some(hash),
            Message::RoundEnd(n) => send(stream, &Message::RoundReceived(n)).await?,
            Message::State(s) => break s,
            Message::Failed(why) => return Err(MigrationError::PeerFailed(why)),
            other => {
                return Err(failed(format!("the source sent {other:?} during the copy")));
            }
        }
    };
    if let Some(expected) = expected_hash {
        let have = blake3::hash(&snapshot(machine.ram()));
        if have.as_bytes() != &expected {
            return Err(failed(format!(
                "the memory received hashes to {}, the source's to {}",
                have.to_hex(),
                blake3::Hash::from_bytes(expected).to_hex()
            )));
        }
    }
    let state = state_codec::decode(&state).map_err(failed)?;
    let disk = VhdImage::open_path(inc.disk, false)
        .map_err(|e| failed(format!("cannot open the disk {}: {e}", inc.disk.display())))?;
    let devices = Devices::from_state(&state.devices, console, disk).map_err(failed)?;
    machine.restore_state(&state, devices).map_err(failed)?;
    send(stream, &Message::Ready).await?;
    match recv(stream, "the VM lease").await? {
        Message::LeaseReleased => {}
        other => {
            return Err(failed(format!(
                "the source sent {other:?} instead of LeaseReleased"
            )));
        }
    }
    let lease = VmLease::take(inc.vm_dir, inc.vm, inc.node).map_err(failed)?;
    machine.start().map_err(failed)?;
    send(stream, &Message::Running).await?;
    Ok((machine, lease))
}
