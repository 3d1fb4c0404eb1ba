//! The serving side of redirected I/O: a node with a direct path carries out another
//! node's reads, writes and flushes on it. Every request passes the [`Gate`] first: a
//! fenced sender's writes must never land (the LUN would refuse them on the sender's
//! own path; here the serving node refuses them for it), and a sender that speaks for
//! another epoch is told to find the current one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use blockdev::BlockDevice;
use lockmgr::transport::FramedStream;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::wire::{self, Answer, Credentials, MAX_FRAME, Op, RefusalKind, Request};

/// Why a request was refused, with the serving node's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub kind: RefusalKind,
    /// The serving node's epoch.
    pub epoch: u64,
}

/// Decides whom a serving node admits.
pub trait Gate: Send + Sync {
    /// Admits node `from` speaking as `who`, or says why not.
    fn admit(&self, from: u8, who: Credentials) -> Result<(), Refusal>;
}

/// What a serving node did for others.
#[derive(Debug, Default)]
pub struct ServedCounters {
    /// Requests carried out.
    pub requests: AtomicU64,
    /// Bytes read and written for others.
    pub bytes: AtomicU64,
    /// Requests refused (fenced, wrong epoch, not serving).
    pub refused: AtomicU64,
}

/// How many requests of one stream are carried out at once. The pieces of one I/O
/// come back to back on a stream: carried out together, the LUN reads piece k+1 while
/// piece k is on the wire.
const DEPTH: usize = 8;

/// Serves the block requests of `from` on `stream` until the stream ends, on `lun`
/// (this node's direct path: never a redirected one). Up to [`DEPTH`] requests are
/// carried out at once; the answers go back in the order of the requests. A sender
/// waits for every answer of one I/O before it sends the next on the same stream, and
/// the pieces of one I/O are disjoint, so requests carried out together never
/// overlap, and a flush covers every write answered before it was sent, as on the
/// LUN itself.
pub async fn serve(
    from: u8,
    mut stream: FramedStream,
    lun: Arc<dyn BlockDevice>,
    gate: Arc<dyn Gate>,
    counters: Arc<ServedCounters>,
) {
    stream.set_max_frame_len(MAX_FRAME);
    let (send, recv) = (&mut stream.send, &mut stream.recv);
    let (answers, mut in_order) = tokio::sync::mpsc::channel::<JoinHandle<Vec<u8>>>(DEPTH);
    let receiving = async move {
        while let Ok(Some(bytes)) = recv.recv().await {
            let req = match Request::decode(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    warn!(lun = lun.name(), from, error = %e, "refusing a redirected request; closing its stream");
                    return;
                }
            };
            let answer = match gate.admit(from, req.from) {
                Err(r) => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    if r.kind == RefusalKind::Fenced {
                        warn!(
                            lun = lun.name(),
                            from,
                            incarnation = req.from.incarnation,
                            "refused redirected I/O of a fenced node"
                        );
                    }
                    let frame = Answer::Refused {
                        kind: r.kind,
                        epoch: r.epoch,
                    }
                    .encode();
                    tokio::spawn(async move { frame })
                }
                Ok(()) => tokio::spawn(carry_out(lun.clone(), req.op, counters.clone())),
            };
            if answers.send(answer).await.is_err() {
                return;
            }
        }
    };
    let sending = async move {
        while let Some(answer) = in_order.recv().await {
            let frame = answer.await.unwrap_or_else(|e| {
                Answer::Failed {
                    errno: libc::EIO,
                    message: format!("the serving node's I/O task failed: {e}"),
                }
                .encode()
            });
            if send.send(&frame).await.is_err() {
                // The stream is gone: dropping `in_order` ends the receiving side.
                return;
            }
        }
    };
    tokio::join!(receiving, sending);
}

/// Carries out one admitted request on the direct path; returns the answer's frame
/// (a read's data is read straight into it).
async fn carry_out(lun: Arc<dyn BlockDevice>, op: Op, counters: Arc<ServedCounters>) -> Vec<u8> {
    let moved = match &op {
        Op::Read { len, .. } => u64::from(*len),
        Op::Write { data, .. } => data.len() as u64,
        Op::Flush => 0,
    };
    let done = tokio::task::spawn_blocking(move || match op {
        Op::Read { offset, len } => {
            let mut frame = wire::data_frame(len as usize);
            lun.read_at(&mut frame[1..], offset).map(|()| frame)
        }
        Op::Write { offset, data } => lun.write_at(&data, offset).map(|()| Answer::Done.encode()),
        Op::Flush => lun.flush().map(|()| Answer::Done.encode()),
    })
    .await;
    match done {
        Ok(Ok(frame)) => {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(moved, Ordering::Relaxed);
            frame
        }
        Ok(Err(e)) => Answer::Failed {
            errno: e.errno(),
            message: format!("on the serving node: {e}"),
        }
        .encode(),
        Err(e) => Answer::Failed {
            errno: libc::EIO,
            message: format!("the serving node's I/O task failed: {e}"),
        }
        .encode(),
    }
}
