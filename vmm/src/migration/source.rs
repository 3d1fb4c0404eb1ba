//! The sending side of a live migration, run by the source VM process when `vmm
//! migrate` asks it to.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lockmgr::{Config, Endpoint, FramedStream};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use super::throttle::Throttle;
use super::wire::{MAX_PAGES_PER_MESSAGE, Message, PAGE, PagesFrame};
use super::{MigrationError, failed, prepare, recv, send};
use crate::machine::memory::{ram_size, snapshot, take_vmm_dirty};
use crate::machine::{Machine, state_codec};
use crate::runner::lease::VmLease;

/// Rounds after which the source stops waiting for the dirty set to shrink.
const MAX_ROUNDS: u32 = 30;
/// Auto-converge: the throttle rises by this much after each round that does not
/// converge, up to the most.
const THROTTLE_STEP: u32 = 20;
const MAX_THROTTLE: u32 = 95;
/// Auto-converge: from this round on, any round that does not bring the estimate
/// under the limit raises the throttle.
const THROTTLE_AFTER_ROUNDS: u32 = 5;

/// Where to send the VM, and the downtime allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateTo {
    pub node: String,
    pub addr: SocketAddr,
    pub downtime_ms: u64,
    /// Hash all of memory while paused and have the destination check it (costs
    /// downtime: a hash of the whole memory on each side).
    #[serde(default)]
    pub verify_memory: bool,
}

/// One round's figures, for the progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub round: u32,
    /// Pages sent this round.
    pub pages: u64,
    /// Bytes sent so far.
    pub bytes_sent: u64,
    /// Pages the guest dirtied per second during the round.
    pub dirty_pages_per_s: f64,
    /// Bytes per second the stream carried during the round.
    pub bandwidth: f64,
    /// What the next round would send, and how long that would take.
    pub remaining_bytes: u64,
    pub estimated_ms: u64,
    pub elapsed_ms: u64,
    /// Auto-converge: the share of time the vCPU is held paused, in percent.
    #[serde(default)]
    pub throttle_percent: u32,
}

/// What a finished migration did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// From the pause on the source to the VM running on the destination.
    pub downtime_ms: u64,
    pub total_ms: u64,
    /// Pre-copy rounds, the final one (with the VM paused) included.
    pub rounds: u32,
    pub bytes_sent: u64,
    pub pages_sent: u64,
    /// Auto-converge: the most the vCPU was throttled, in percent (0: not at all).
    #[serde(default)]
    pub throttle_percent: u32,
    /// The blake3 hash of memory at the switch-over, equal on both sides, when the
    /// migration was asked to verify it.
    #[serde(default)]
    pub memory_hash: Option<String>,
}

/// Sends the VM of `machine` (running) to `to`. `lease` is the VM's lease, handed
/// over (taken out of the option) at the end. `retake` takes it again if the
/// destination fails after the hand-over. On an error the VM runs on the source.
#[allow(clippy::too_many_arguments)]
pub fn migrate_out(
    machine: &Machine,
    lease: &mut Option<VmLease>,
    retake: &dyn Fn() -> Option<VmLease>,
    cluster: &Config,
    node: &str,
    vm: &str,
    to: &MigrateTo,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome, MigrationError> {
    let rt = super::runtime().map_err(failed)?;
    let endpoint = rt
        .block_on(async { Endpoint::bind_service(cluster, node) })
        .map_err(|e| failed(format!("cannot open a migration endpoint: {e}")))?;
    let result = std::thread::scope(|scope| {
        let mut throttle = Throttle::start(scope, machine);
        let r = rt.block_on(async {
            let conn = endpoint.connect_at(&to.node, to.addr).await.map_err(|e| {
                failed(format!("cannot reach node {} at {}: {e}", to.node, to.addr))
            })?;
            let mut stream = conn
                .open_stream()
                .await
                .map_err(|e| failed(format!("cannot open a stream to {}: {e}", to.node)))?;
            prepare(&mut stream);
            let mut sending = Sending {
                machine,
                lease,
                retake,
                to,
                progress,
                throttle: &mut throttle,
            };
            let r = run(&mut sending, vm, &mut stream).await;
            if let Err(e) = &r {
                let _ = send(&mut stream, &Message::Failed(e.to_string())).await;
            }
            let _ = stream.send.finish();
            // Let the last message go before the endpoint closes.
            tokio::time::sleep(Duration::from_millis(50)).await;
            r
        });
        throttle.finish();
        r
    });
    endpoint.close();
    result
}

/// What the sending side works with.
struct Sending<'a, 's> {
    machine: &'a Machine,
    lease: &'a mut Option<VmLease>,
    retake: &'a dyn Fn() -> Option<VmLease>,
    to: &'a MigrateTo,
    progress: &'a mut dyn FnMut(&Progress),
    throttle: &'a mut Throttle<'s>,
}

async fn run(
    s: &mut Sending<'_, '_>,
    vm: &str,
    stream: &mut FramedStream,
) -> Result<Outcome, MigrationError> {
    let (machine, to) = (s.machine, s.to);
    let start = Instant::now();
    let memory_bytes = ram_size(machine.ram());
    let pages = memory_bytes / PAGE as u64;
    send(
        stream,
        &Message::Hello {
            vm: vm.to_string(),
            memory_bytes,
            downtime_ms: to.downtime_ms,
        },
    )
    .await?;
    machine.log_dirty_pages(true).map_err(failed)?;
    let r = precopy_and_hand_over(s, stream, pages, start).await;
    s.throttle.finish();
    let _ = machine.log_dirty_pages(false);
    if r.is_err() && s.lease.is_some() {
        // Not handed over: the VM goes on here.
        let _ = machine.resume();
    }
    r
}

async fn precopy_and_hand_over(
    s: &mut Sending<'_, '_>,
    stream: &mut FramedStream,
    pages: u64,
    start: Instant,
) -> Result<Outcome, MigrationError> {
    let (machine, to, retake) = (s.machine, s.to, s.retake);
    // Start the logs afresh, then send everything once: pages of zeros need not go,
    // the destination's memory starts zeroed.
    machine.take_guest_dirty().map_err(failed)?;
    take_vmm_dirty(machine.ram());
    let mut bytes_sent = 0u64;
    let mut pages_sent = 0u64;
    let mut round = 0u32;
    let mut todo: Vec<u64> = (0..pages).collect();
    let mut skip_zero = true;
    let mut max_throttle = 0u32;
    loop {
        round += 1;
        let t = Instant::now();
        let (n, bytes) = send_pages(machine, stream, &todo, skip_zero).await?;
        send(stream, &Message::RoundEnd(round)).await?;
        match recv(stream, "the destination to receive the round").await? {
            Message::RoundReceived(r) if r == round => {}
            other => {
                return Err(failed(format!(
                    "the destination answered round {round} with {other:?}"
                )));
            }
        }
        skip_zero = false;
        bytes_sent += bytes;
        pages_sent += n;
        let secs = t.elapsed().as_secs_f64().max(1e-3);
        todo = dirty_pages(machine)?;
        let bandwidth = (bytes as f64 / secs).max(1.0);
        let remaining_bytes = todo.len() as u64 * PAGE as u64;
        // Compared unrounded: a limit of 0 ms is met only by an empty dirty set.
        let estimate_ms = remaining_bytes as f64 / bandwidth * 1000.0;
        let estimated_ms = estimate_ms.ceil() as u64;
        (s.progress)(&Progress {
            round,
            pages: n,
            bytes_sent,
            dirty_pages_per_s: todo.len() as f64 / secs,
            bandwidth,
            remaining_bytes,
            estimated_ms,
            elapsed_ms: start.elapsed().as_millis() as u64,
            throttle_percent: s.throttle.share(),
        });
        if estimate_ms <= to.downtime_ms as f64 || round >= MAX_ROUNDS {
            break;
        }
        // Auto-converge: a round that leaves more than half of what it sent dirty
        // again is not converging, nor is a fifth round whose estimate still exceeds
        // the limit; hold the vCPU back more.
        if round >= 2 && (remaining_bytes * 2 > bytes || round >= THROTTLE_AFTER_ROUNDS) {
            let share = (s.throttle.share() + THROTTLE_STEP).min(MAX_THROTTLE);
            max_throttle = max_throttle.max(share);
            s.throttle.set(share);
        }
    }
    s.throttle.finish();

    // Stop and copy: the last pages, the state, the disk flushed.
    machine.pause().map_err(failed)?;
    let paused = Instant::now();
    let mut last = dirty_pages(machine)?;
    last.extend(todo);
    last.sort_unstable();
    last.dedup();
    let (n, bytes) = send_pages(machine, stream, &last, false).await?;
    round += 1;
    bytes_sent += bytes;
    pages_sent += n;
    let memory_hash = if to.verify_memory {
        let hash = blake3::hash(&snapshot(machine.ram()));
        send(stream, &Message::Verify(*hash.as_bytes())).await?;
        Some(hash.to_hex().to_string())
    } else {
        None
    };
    let state = state_codec::encode(&machine.save().map_err(failed)?);
    bytes_sent += state.len() as u64;
    send(stream, &Message::State(state)).await?;
    machine
        .devices()
        .blk
        .disk()
        .flush()
        .map_err(|e| failed(format!("cannot flush the disk: {e}")))?;
    match recv(stream, "the destination to be ready").await? {
        Message::Ready => {}
        other => {
            return Err(failed(format!(
                "the destination sent {other:?} instead of Ready"
            )));
        }
    }

    // The hand-over.
    drop(s.lease.take());
    let handed = async {
        send(stream, &Message::LeaseReleased).await?;
        match recv(stream, "the VM to run on the destination").await? {
            Message::Running => Ok(()),
            other => Err(failed(format!(
                "the destination sent {other:?} instead of Running"
            ))),
        }
    }
    .await;
    if let Err(e) = handed {
        return match retake() {
            Some(l) => {
                *s.lease = Some(l);
                Err(failed(format!("{e}; the VM goes on on the source")))
            }
            None => Err(failed(format!(
                "{e}, after the VM lease was handed over, and the lease could not be taken back: \
                 the VM is on neither node (its disk is intact)"
            ))),
        };
    }
    (s.progress)(&Progress {
        round,
        pages: n,
        bytes_sent,
        dirty_pages_per_s: 0.0,
        bandwidth: 0.0,
        remaining_bytes: 0,
        estimated_ms: 0,
        elapsed_ms: start.elapsed().as_millis() as u64,
        throttle_percent: 0,
    });
    Ok(Outcome {
        downtime_ms: paused.elapsed().as_millis() as u64,
        total_ms: start.elapsed().as_millis() as u64,
        rounds: round,
        bytes_sent,
        pages_sent,
        throttle_percent: max_throttle,
        memory_hash,
    })
}

/// The pages dirtied since the last call, by the guest or by the VMM.
fn dirty_pages(machine: &Machine) -> Result<Vec<u64>, MigrationError> {
    let guest = machine.take_guest_dirty().map_err(failed)?;
    let vmm = take_vmm_dirty(machine.ram());
    let mut out = Vec::new();
    for w in 0..guest.len().max(vmm.len()) {
        let bits = guest.get(w).copied().unwrap_or(0) | vmm.get(w).copied().unwrap_or(0);
        for b in 0..64 {
            if bits & (1 << b) != 0 {
                out.push(w as u64 * 64 + b);
            }
        }
    }
    Ok(out)
}

/// Sends pages `list` (zero pages as markers, or not at all if `skip_zero`);
/// returns the pages and bytes sent.
async fn send_pages(
    machine: &Machine,
    stream: &mut FramedStream,
    list: &[u64],
    skip_zero: bool,
) -> Result<(u64, u64), MigrationError> {
    let ram = machine.ram();
    let mut frame = PagesFrame::new();
    let (mut n, mut bytes) = (0u64, 0u64);
    for &p in list {
        frame.push(p, skip_zero, |buf| {
            ram.read_slice(buf, GuestAddress(p * PAGE as u64))
                .map_err(|e| failed(format!("cannot read guest page {p}: {e}")))
        })?;
        if frame.len() == MAX_PAGES_PER_MESSAGE {
            let full = std::mem::take(&mut frame);
            n += full.len() as u64;
            let e = full.finish();
            bytes += e.len() as u64;
            stream
                .send(&e)
                .await
                .map_err(|e| failed(format!("cannot send pages: {e}")))?;
        }
    }
    if !frame.is_empty() {
        n += frame.len() as u64;
        let e = frame.finish();
        bytes += e.len() as u64;
        stream
            .send(&e)
            .await
            .map_err(|e| failed(format!("cannot send pages: {e}")))?;
    }
    Ok((n, bytes))
}
