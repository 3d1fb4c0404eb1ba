//! The frames of the block service. Every request carries who sends it (the epoch it
//! follows and its incarnation), so that the serving node can refuse a fenced or
//! stale sender; answers come in the order of the requests on a stream.
//!
//! Request (little-endian): kind `u8` (1 read, 2 write, 3 flush), epoch `u64`,
//! incarnation `u32`, offset `u64`, then for a read the length `u32`, for a write the
//! data (the rest of the frame). Answer: kind `u8` (0 done, 1 data: the rest of the
//! frame, 2 refused: reason `u8` and epoch `u64`, 3 failed: errno `i32` and a UTF-8
//! message).

/// The most data one request moves; larger I/O goes as several requests, pipelined
/// on one stream.
pub const MAX_IO: usize = 1 << 20;

/// The largest frame of the service: a request or answer with [`MAX_IO`] bytes.
pub const MAX_FRAME: usize = MAX_IO + 64;

const REQUEST_HEADER: usize = 1 + 8 + 4 + 8;

/// Who sends a request, as its lock manager sees itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The coordinator epoch the sender follows.
    pub epoch: u64,
    /// The sender's incarnation in the volume.
    pub incarnation: u32,
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Bytes to read (at most [`MAX_IO`]).
        len: u32,
    },
    /// Write `data` at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes (at most [`MAX_IO`]).
        data: Vec<u8>,
    },
    /// Make every completed write durable.
    Flush,
}

/// One request of the block service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The sender.
    pub from: Credentials,
    /// What it asks.
    pub op: Op,
}

/// Why a serving node refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The sender has been fenced out of the volume: its writes must never land.
    Fenced,
    /// The sender speaks for another epoch than the serving node's (`epoch`).
    WrongEpoch,
    /// The node does not serve redirected I/O of this volume now (it neither
    /// coordinates it nor follows the sender as coordinator).
    NotServing,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A write or flush done.
    Done,
    /// The bytes of a read.
    Data(Vec<u8>),
    /// Refused; `epoch` is the serving node's.
    Refused {
        /// Why.
        kind: RefusalKind,
        /// The serving node's epoch.
        epoch: u64,
    },
    /// The I/O failed on the serving node's path.
    Failed {
        /// The errno.
        errno: i32,
        /// What failed.
        message: String,
    },
}

/// A frame that is not a valid request or answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short for what its kind says.
    #[error("block service frame truncated: {0}")]
    Truncated(&'static str),
    /// An unknown kind byte.
    #[error("block service frame of unknown kind {0}")]
    UnknownKind(u8),
    /// A length or payload over [`MAX_IO`].
    #[error("block service frame asks for {0} bytes, more than the {MAX_IO} one request may move")]
    TooLarge(u64),
    /// Bytes after the end of a fixed-size frame.
    #[error("block service frame has {0} bytes after its end")]
    Trailing(usize),
    /// A flush with an offset (a flush has none: it is sent as 0).
    #[error("block service flush carries offset {0}; a flush has none")]
    FlushOffset(u64),
    /// A failure message that is not UTF-8.
    #[error("block service failure message is not UTF-8")]
    BadMessage,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn end(&self) -> Result<(), WireError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// The frame of a write request of `data` at `offset` (what [`Request::encode`] makes
/// of an [`Op::Write`], without first copying the data into one).
pub fn write_frame(from: Credentials, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(REQUEST_HEADER + data.len());
    v.push(2);
    v.extend_from_slice(&from.epoch.to_le_bytes());
    v.extend_from_slice(&from.incarnation.to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// An [`Answer::Data`] frame of `len` zero bytes, for the serving side to read into
/// (its payload is `frame[1..]`).
pub fn data_frame(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; 1 + len];
    v[0] = 1;
    v
}

/// The data of an [`Answer::Data`] frame, without copying it; `None` for any other
/// frame.
pub fn data_of(frame: &[u8]) -> Option<&[u8]> {
    match frame.split_first() {
        Some((1, d)) if d.len() <= MAX_IO => Some(d),
        _ => None,
    }
}

impl Request {
    /// The frame.
    pub fn encode(&self) -> Vec<u8> {
        if let Op::Write { offset, data } = &self.op {
            return write_frame(self.from, *offset, data);
        }
        let extra = match &self.op {
            Op::Read { .. } => 4,
            Op::Write { data, .. } => data.len(),
            Op::Flush => 0,
        };
        let mut v = Vec::with_capacity(REQUEST_HEADER + extra);
        let (kind, offset) = match &self.op {
            Op::Read { offset, .. } => (1u8, *offset),
            Op::Write { offset, .. } => (2, *offset),
            Op::Flush => (3, 0),
        };
        v.push(kind);
        v.extend_from_slice(&self.from.epoch.to_le_bytes());
        v.extend_from_slice(&self.from.incarnation.to_le_bytes());
        v.extend_from_slice(&offset.to_le_bytes());
        match &self.op {
            Op::Read { len, .. } => v.extend_from_slice(&len.to_le_bytes()),
            Op::Write { data, .. } => v.extend_from_slice(data),
            Op::Flush => {}
        }
        v
    }

    /// Reads a frame; anything malformed is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<Request, WireError> {
        let mut r = Reader(b);
        let kind = r.u8("kind")?;
        let from = Credentials {
            epoch: r.u64("epoch")?,
            incarnation: r.u32("incarnation")?,
        };
        let offset = r.u64("offset")?;
        let op = match kind {
            1 => {
                let len = r.u32("read length")?;
                if len as usize > MAX_IO {
                    return Err(WireError::TooLarge(u64::from(len)));
                }
                r.end()?;
                Op::Read { offset, len }
            }
            2 => {
                if r.0.len() > MAX_IO {
                    return Err(WireError::TooLarge(r.0.len() as u64));
                }
                Op::Write {
                    offset,
                    data: r.0.to_vec(),
                }
            }
            3 => {
                r.end()?;
                if offset != 0 {
                    return Err(WireError::FlushOffset(offset));
                }
                Op::Flush
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        Ok(Request { from, op })
    }
}

impl RefusalKind {
    fn byte(self) -> u8 {
        match self {
            RefusalKind::Fenced => 1,
            RefusalKind::WrongEpoch => 2,
            RefusalKind::NotServing => 3,
        }
    }
}

impl Answer {
    /// The frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Done => vec![0],
            Answer::Data(d) => {
                let mut v = Vec::with_capacity(1 + d.len());
                v.push(1);
                v.extend_from_slice(d);
                v
            }
            Answer::Refused { kind, epoch } => {
                let mut v = vec![2, kind.byte()];
                v.extend_from_slice(&epoch.to_le_bytes());
                v
            }
            Answer::Failed { errno, message } => {
                let mut v = vec![3];
                v.extend_from_slice(&errno.to_le_bytes());
                v.extend_from_slice(message.as_bytes());
                v
            }
        }
    }

    /// Reads a frame; anything malformed is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<Answer, WireError> {
        let mut r = Reader(b);
        match r.u8("kind")? {
            0 => {
                r.end()?;
                Ok(Answer::Done)
            }
            1 => {
                if r.0.len() > MAX_IO {
                    return Err(WireError::TooLarge(r.0.len() as u64));
                }
                Ok(Answer::Data(r.0.to_vec()))
            }
            2 => {
                let kind = match r.u8("refusal")? {
                    1 => RefusalKind::Fenced,
                    2 => RefusalKind::WrongEpoch,
                    3 => RefusalKind::NotServing,
                    k => return Err(WireError::UnknownKind(k)),
                };
                let epoch = r.u64("epoch")?;
                r.end()?;
                Ok(Answer::Refused { kind, epoch })
            }
            3 => {
                let errno = r.u32("errno")? as i32;
                let message = std::str::from_utf8(r.0)
                    .map_err(|_| WireError::BadMessage)?
                    .to_string();
                Ok(Answer::Failed { errno, message })
            }
            k => Err(WireError::UnknownKind(k)),
        }
    }
}

/// Decodes `frame` as a request and as an answer; whatever decodes must re-encode to
/// exactly `frame`. Panics otherwise: the check of the fuzz target and of the corpus
/// replay. Returns how many of the two readings accepted it.
pub fn check_round_trip(frame: &[u8]) -> usize {
    let mut accepted = 0;
    if let Ok(r) = Request::decode(frame) {
        assert_eq!(r.encode(), frame, "request {r:?} re-encodes differently");
        accepted += 1;
    }
    if let Ok(a) = Answer::decode(frame) {
        assert_eq!(a.encode(), frame, "answer {a:?} re-encodes differently");
        accepted += 1;
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: Credentials = Credentials {
        epoch: 7,
        incarnation: 3,
    };

    #[test]
    fn requests_and_answers_go_both_ways() {
        for op in [
            Op::Read {
                offset: 4096,
                len: 8192,
            },
            Op::Write {
                offset: 1 << 40,
                data: vec![5; 4096],
            },
            Op::Flush,
        ] {
            let r = Request { from: FROM, op };
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for a in [
            Answer::Done,
            Answer::Data(vec![1, 2, 3]),
            Answer::Refused {
                kind: RefusalKind::Fenced,
                epoch: 9,
            },
            Answer::Failed {
                errno: 5,
                message: "read on lun at byte 0".into(),
            },
        ] {
            assert_eq!(Answer::decode(&a.encode()).unwrap(), a);
        }
    }

    #[test]
    fn bad_frames_are_refused_with_the_reason() {
        assert_eq!(Request::decode(&[]), Err(WireError::Truncated("kind")));
        assert_eq!(Request::decode(&[9; 21]), Err(WireError::UnknownKind(9)));
        let mut read = Request {
            from: FROM,
            op: Op::Read { offset: 0, len: 1 },
        }
        .encode();
        read[21..25].copy_from_slice(&(MAX_IO as u32 + 1).to_le_bytes());
        assert_eq!(
            Request::decode(&read),
            Err(WireError::TooLarge(MAX_IO as u64 + 1))
        );
        read.push(0);
        assert!(Request::decode(&read).is_err());
        let flush = Request {
            from: FROM,
            op: Op::Flush,
        }
        .encode();
        assert_eq!(
            Request::decode(&[flush.as_slice(), &[0]].concat()),
            Err(WireError::Trailing(1))
        );
        assert_eq!(Answer::decode(&[2, 4, 0]), Err(WireError::UnknownKind(4)));
        assert_eq!(
            Answer::decode(&[3, 0, 0, 0, 0, 0xff]),
            Err(WireError::BadMessage)
        );
        assert_eq!(Answer::decode(&[0, 0]), Err(WireError::Trailing(1)));
    }
}
