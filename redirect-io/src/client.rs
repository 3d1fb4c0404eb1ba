//! [`RedirectedDevice`]: a LUN reached through another node. Each I/O is cut into
//! requests of at most 256 KiB that go out back to back on one stream (the
//! pieces of a large I/O are streamed, not sent one after the other's answer), and
//! callers on many threads use as many streams at once, so the link stays full.
//!
//! Where the I/O goes is the [`Route`]'s business (in a cluster: the volume's
//! coordinator). A request the serving node refuses for a stale epoch, or that a
//! broken link loses, goes again once the route has something new, for up to the
//! device's patience: callers see latency, not errors, while a coordinator changes.
//! A write sent twice is harmless (the same bytes at the same place). A refusal for
//! fencing is final: [`BlockError::Fenced`], as the LUN itself would answer. An I/O
//! belongs to the node's life (incarnation) it began in: if the node has taken a new
//! life before the I/O is carried out, it fails as fenced rather than going out as the
//! new life (the old life's locks are gone: its write could land on data that others
//! wrote since).
//!
//! The device's calls block their thread on the node's runtime: they must not be made
//! from a thread of that runtime.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, BlockError};
use lockmgr::transport::FramedStream;
use parking_lot::Mutex;

use crate::wire::{self, Answer, Credentials, MAX_FRAME, Op, RefusalKind, Request};

/// Where redirected I/O goes now, and as whom it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The node that serves it.
    pub node: u8,
    /// This node as its lock manager sees itself.
    pub from: Credentials,
}

/// A stream being opened.
pub type Opening<'a> = Pin<Box<dyn Future<Output = Result<FramedStream, String>> + Send + 'a>>;

/// How redirected I/O finds its way.
pub trait Route: Send + Sync {
    /// The node to send to now, or `None` while there is none (no coordinator known).
    fn target(&self) -> Option<Target>;
    /// Opens a stream to the block service on node `to`.
    fn open(&self, to: u8) -> Opening<'_>;
}

/// The size of the pieces an I/O is cut into: small enough that the serving node
/// reads the next piece from the LUN while the last one is on its way back.
const PIECE: usize = 256 << 10;

/// How long one exchange (all the pieces of one I/O) may take before the link counts
/// as broken.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause between two attempts of an I/O.
const RETRY: Duration = Duration::from_millis(50);

/// A LUN reached through another node.
pub struct RedirectedDevice {
    name: String,
    capacity: u64,
    block_size: u32,
    route: Arc<dyn Route>,
    rt: tokio::runtime::Handle,
    /// Idle streams, by serving node.
    pool: Mutex<Vec<(u8, FramedStream)>>,
    patience: Duration,
}

impl std::fmt::Debug for RedirectedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedirectedDevice")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// One piece of an I/O, as sent.
enum Piece {
    Read { at: usize, len: usize },
    Write,
    Flush,
}

impl RedirectedDevice {
    /// The LUN `name` of `capacity` bytes in blocks of `block_size`, reached along
    /// `route` with the runtime `rt`; an I/O gives up after `patience` without an
    /// answer.
    pub fn new(
        name: &str,
        capacity: u64,
        block_size: u32,
        route: Arc<dyn Route>,
        rt: tokio::runtime::Handle,
        patience: Duration,
    ) -> RedirectedDevice {
        RedirectedDevice {
            name: format!("{name} (redirected)"),
            capacity,
            block_size,
            route,
            rt,
            pool: Mutex::new(Vec::new()),
            patience,
        }
    }

    /// Carries out one I/O made of `pieces` (built for the credentials of the moment),
    /// copying read data into `out`.
    fn io(
        &self,
        what: &'static str,
        offset: u64,
        build: &dyn Fn(Credentials) -> Vec<(Piece, Vec<u8>)>,
        out: &mut [u8],
    ) -> Result<(), BlockError> {
        let deadline = Instant::now() + self.patience;
        let mut last = String::from("no node with a direct path is known yet");
        let mut life = None;
        loop {
            if let Some(t) = self.route.target() {
                if *life.get_or_insert(t.from.incarnation) != t.from.incarnation {
                    return Err(BlockError::Fenced {
                        op: what,
                        lun: self.name.clone(),
                    });
                }
                let (pieces, frames): (Vec<Piece>, Vec<Vec<u8>>) =
                    build(t.from).into_iter().unzip();
                let answers = self.rt.block_on(async {
                    tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(t.node, frames))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {EXCHANGE_TIMEOUT:?}")))
                });
                match answers {
                    Ok(answers) => match self.deliver(what, offset, t, &pieces, answers, out) {
                        Ok(()) => return Ok(()),
                        Err(Retry::Now(why)) => last = why,
                        Err(Retry::Never(e)) => return Err(e),
                    },
                    Err(e) => last = format!("node {}: {e}", t.node),
                }
            }
            if Instant::now() >= deadline {
                return Err(BlockError::Io {
                    op: what,
                    lun: self.name.clone(),
                    offset,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no node carried it out within {:?} ({last})", self.patience),
                    ),
                });
            }
            std::thread::sleep(RETRY);
        }
    }

    /// Checks the answers of one I/O and copies read data into `out`.
    fn deliver(
        &self,
        what: &'static str,
        offset: u64,
        t: Target,
        pieces: &[Piece],
        answers: Vec<Vec<u8>>,
        out: &mut [u8],
    ) -> Result<(), Retry> {
        for (piece, frame) in pieces.iter().zip(answers) {
            if let Piece::Read { at, len } = piece
                && let Some(d) = wire::data_of(&frame).filter(|d| d.len() == *len)
            {
                out[*at..*at + len].copy_from_slice(d);
                continue;
            }
            let answer = Answer::decode(&frame).map_err(|e| {
                Retry::Never(BlockError::Protocol {
                    lun: self.name.clone(),
                    detail: format!("node {}: {e}", t.node),
                })
            })?;
            match (piece, answer) {
                (Piece::Write | Piece::Flush, Answer::Done) => {}
                (_, Answer::Refused { kind, epoch }) => match kind {
                    RefusalKind::Fenced => {
                        return Err(Retry::Never(BlockError::Fenced {
                            op: what,
                            lun: self.name.clone(),
                        }));
                    }
                    RefusalKind::WrongEpoch | RefusalKind::NotServing => {
                        return Err(Retry::Now(format!(
                            "node {} refused it ({kind:?}; it is at epoch {epoch}, this node at {})",
                            t.node, t.from.epoch
                        )));
                    }
                },
                (_, Answer::Failed { errno, message }) => {
                    return Err(Retry::Never(BlockError::Io {
                        op: what,
                        lun: self.name.clone(),
                        offset,
                        source: io::Error::new(
                            io::Error::from_raw_os_error(errno).kind(),
                            format!("node {}: {message}", t.node),
                        ),
                    }));
                }
                (_, other) => {
                    return Err(Retry::Never(BlockError::Protocol {
                        lun: self.name.clone(),
                        detail: format!("node {} answered {other:?} to a {what}", t.node),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Sends every frame on one stream to `to`, then reads as many answers; the stream
    /// goes back to the pool only after a whole exchange.
    async fn exchange(&self, to: u8, frames: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, String> {
        let pooled = {
            let mut pool = self.pool.lock();
            pool.iter()
                .position(|(n, _)| *n == to)
                .map(|i| pool.swap_remove(i).1)
        };
        let mut stream = match pooled {
            Some(s) => s,
            None => {
                let mut s = self.route.open(to).await?;
                s.set_max_frame_len(MAX_FRAME);
                s
            }
        };
        let n = frames.len();
        let (send, recv) = (&mut stream.send, &mut stream.recv);
        let sending = async {
            for f in &frames {
                send.send(f).await.map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        };
        let receiving = async {
            let mut answers = Vec::with_capacity(n);
            while answers.len() < n {
                let bytes = recv
                    .recv()
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the serving node closed the stream")?;
                answers.push(bytes);
            }
            Ok::<Vec<Vec<u8>>, String>(answers)
        };
        let (sent, answers) = tokio::join!(sending, receiving);
        sent?;
        let answers = answers?;
        self.pool.lock().push((to, stream));
        Ok(answers)
    }
}

/// What to do about an I/O the serving node did not carry out.
enum Retry {
    /// Try again (the route may have changed).
    Now(String),
    /// Give up with this error.
    Never(BlockError),
}

impl BlockDevice for RedirectedDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let len = buf.len();
        let build = |from| {
            (0..len)
                .step_by(PIECE)
                .map(|at| {
                    let n = PIECE.min(len - at);
                    let op = Op::Read {
                        offset: offset + at as u64,
                        len: n as u32,
                    };
                    (Piece::Read { at, len: n }, Request { from, op }.encode())
                })
                .collect()
        };
        self.io("read", offset, &build, buf)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let build = |from| {
            buf.chunks(PIECE)
                .enumerate()
                .map(|(i, chunk)| {
                    let at = offset + (i * PIECE) as u64;
                    (Piece::Write, wire::write_frame(from, at, chunk))
                })
                .collect()
        };
        self.io("write", offset, &build, &mut [])
    }

    fn flush(&self) -> Result<(), BlockError> {
        let build = |from| {
            vec![(
                Piece::Flush,
                Request {
                    from,
                    op: Op::Flush,
                }
                .encode(),
            )]
        };
        self.io("flush", 0, &build, &mut [])
    }

    fn name(&self) -> &str {
        &self.name
    }
}
