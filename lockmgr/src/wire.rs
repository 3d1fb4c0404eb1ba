//! The lock manager's messages on the wire: what one node's shell sends another in the
//! frames of a [`FramedStream`](crate::FramedStream).
//!
//! Every integer is little-endian. A frame is a tag byte and its fields:
//!
//! | tag | frame | fields |
//! |-----|-------|--------|
//! | 1 | `Hello` | the sender's configuration fingerprint (32 bytes) |
//! | 2 | `Volume` | label length (u8, 1 to 63), label (UTF-8), sender's incarnation (u32), message |
//! | 3 | `Service` | label length (u8, 1 to 63), label (UTF-8), service (u8) |
//!
//! After a `Service` frame the stream belongs to that service of that volume (such as
//! the coordinator's metadata service): its further frames are the service's own.
//!
//! A message is a tag byte and its fields (`Mode` is one byte: 0 shared, 1 exclusive):
//!
//! | tag | message | fields |
//! |-----|---------|--------|
//! | 1 | `Heartbeat` | sent u64, epoch u64, coordinator u8 (0 or 1) |
//! | 2 | `HeartbeatAck` | sent u64, epoch u64 |
//! | 3 | `Acquire` | epoch u64, req u64, res u64, mode, sent u64 |
//! | 4 | `Grant` | epoch u64, req u64, res u64, mode, sent u64 |
//! | 5 | `Recall` | epoch u64, res u64, req u64 |
//! | 6 | `Release` | epoch u64, res u64, req u64 |
//! | 7 | `Report` | epoch u64 |
//! | 8 | `Adopted` | epoch u64 |
//! | 9 | `Holdings` | epoch u64, count u32, count × (res u64, mode, req u64), count u32, count × (req u64, res u64, mode, sent u64), count u32, count × (file u64, range lock) |
//! | 10 | `Range` | epoch u64, req u64, file u64, owner u64, range op |
//! | 11 | `RangeCancel` | epoch u64, req u64 |
//! | 12 | `RangeAnswer` | epoch u64, req u64, range outcome |
//!
//! A range lock: owner's node u8, owner u64, kind u8 (0 read, 1 write), start u64, end
//! u64. A range op: tag u8, then 1 `Test` kind, start, end; 2 `Lock` kind, start, end,
//! wait u8 (0 or 1); 3 `Unlock` start, end; 4 `Release`. A range outcome: tag u8: 1
//! `Done`, 2 `Busy`, 3 `Free`, 4 `Blocker` and a range lock, 5 `Lost`.
//!
//! The decoder takes nothing on trust: an unknown tag, a short field, a count larger
//! than the bytes that follow, a label that is not UTF-8, or bytes left over is an
//! error that says which.

use std::fmt;

use crate::protocol::{Epoch, LockKind, Mode, Msg, Owner, RangeLock, RangeOp, RangeOutcome};

/// The longest volume label (as `cluster.toml` allows).
pub const MAX_LABEL_LEN: usize = 63;

/// The longest initiator port in a hand-over's `Accept` (an iSCSI name of up to 223
/// bytes, `,i,0x` and twelve hex digits).
pub const MAX_PORT_LEN: usize = 255;

/// One frame between two nodes' shells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The first frame on every stream: the sender's configuration fingerprint. A node
    /// whose configuration differs is refused.
    Hello {
        /// [`Config::fingerprint`](crate::Config::fingerprint) of the sender.
        fingerprint: [u8; 32],
    },
    /// A protocol message of one volume's state machine.
    Volume {
        /// The volume's label.
        volume: String,
        /// The sender's incarnation in that volume.
        incarnation: u32,
        /// The message.
        msg: Msg,
    },
    /// Hands the rest of the stream to a service of a volume.
    Service {
        /// The volume's label.
        volume: String,
        /// Which service.
        service: u8,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed lock manager frame: {}", self.0)
    }
}

impl std::error::Error for WireError {}

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

const HELLO: u8 = 1;
const VOLUME: u8 = 2;
const SERVICE: u8 = 3;

/// A label as sent: its length byte and bytes. Labels are checked when the
/// configuration loads; a longer one is cut here rather than sent with a length that
/// lies.
fn put_label(w: &mut Vec<u8>, volume: &str) {
    let label = &volume.as_bytes()[..volume.len().min(MAX_LABEL_LEN)];
    w.push(label.len() as u8);
    w.extend_from_slice(label);
}

impl Frame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64);
        match self {
            Frame::Hello { fingerprint } => {
                w.push(HELLO);
                w.extend_from_slice(fingerprint);
            }
            Frame::Volume {
                volume,
                incarnation,
                msg,
            } => {
                w.push(VOLUME);
                put_label(&mut w, volume);
                w.extend_from_slice(&incarnation.to_le_bytes());
                encode_msg(&mut w, msg);
            }
            Frame::Service { volume, service } => {
                w.push(SERVICE);
                put_label(&mut w, volume);
                w.push(*service);
            }
        }
        w
    }

    /// Decodes one frame, all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader { bytes, at: 0 };
        let frame = match r.u8("frame tag")? {
            HELLO => {
                let mut fingerprint = [0u8; 32];
                fingerprint.copy_from_slice(r.take(32, "fingerprint")?);
                Frame::Hello { fingerprint }
            }
            VOLUME => {
                let volume = r.label()?;
                let incarnation = r.u32("incarnation")?;
                let msg = decode_msg(&mut r)?;
                Frame::Volume {
                    volume,
                    incarnation,
                    msg,
                }
            }
            SERVICE => Frame::Service {
                volume: r.label()?,
                service: r.u8("service")?,
            },
            t => return Err(bad(format!("unknown frame tag {t}"))),
        };
        if r.at != bytes.len() {
            return Err(bad(format!(
                "{} bytes left over after the frame",
                bytes.len() - r.at
            )));
        }
        Ok(frame)
    }
}

fn mode_byte(m: Mode) -> u8 {
    match m {
        Mode::Shared => 0,
        Mode::Exclusive => 1,
    }
}

fn encode_msg(w: &mut Vec<u8>, msg: &Msg) {
    let u64s = |w: &mut Vec<u8>, vals: &[u64]| {
        for v in vals {
            w.extend_from_slice(&v.to_le_bytes());
        }
    };
    match msg {
        Msg::Heartbeat {
            sent,
            epoch,
            coordinator,
        } => {
            w.push(1);
            u64s(w, &[*sent, *epoch]);
            w.push(u8::from(*coordinator));
        }
        Msg::HeartbeatAck { sent, epoch } => {
            w.push(2);
            u64s(w, &[*sent, *epoch]);
        }
        Msg::Acquire {
            epoch,
            req,
            res,
            mode,
            sent,
        }
        | Msg::Grant {
            epoch,
            req,
            res,
            mode,
            sent,
        } => {
            w.push(if matches!(msg, Msg::Acquire { .. }) {
                3
            } else {
                4
            });
            u64s(w, &[*epoch, *req, *res]);
            w.push(mode_byte(*mode));
            u64s(w, &[*sent]);
        }
        Msg::Recall { epoch, res, req } | Msg::Release { epoch, res, req } => {
            w.push(if matches!(msg, Msg::Recall { .. }) {
                5
            } else {
                6
            });
            u64s(w, &[*epoch, *res, *req]);
        }
        Msg::Report { epoch } => {
            w.push(7);
            u64s(w, &[*epoch]);
        }
        Msg::Adopted { epoch } => {
            w.push(8);
            u64s(w, &[*epoch]);
        }
        Msg::Holdings {
            epoch,
            held,
            pending,
            ranges,
        } => {
            w.push(9);
            u64s(w, &[*epoch]);
            w.extend_from_slice(&(held.len() as u32).to_le_bytes());
            for (res, mode, req) in held {
                u64s(w, &[*res]);
                w.push(mode_byte(*mode));
                u64s(w, &[*req]);
            }
            w.extend_from_slice(&(pending.len() as u32).to_le_bytes());
            for (req, res, mode, sent) in pending {
                u64s(w, &[*req, *res]);
                w.push(mode_byte(*mode));
                u64s(w, &[*sent]);
            }
            w.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
            for (file, lock) in ranges {
                u64s(w, &[*file]);
                encode_lock(w, lock);
            }
        }
        Msg::Range {
            epoch,
            req,
            file,
            owner,
            op,
        } => {
            w.push(10);
            u64s(w, &[*epoch, *req, *file, *owner]);
            match op {
                RangeOp::Test { kind, start, end } => {
                    w.push(1);
                    w.push(kind_byte(*kind));
                    u64s(w, &[*start, *end]);
                }
                RangeOp::Lock {
                    kind,
                    start,
                    end,
                    wait,
                } => {
                    w.push(2);
                    w.push(kind_byte(*kind));
                    u64s(w, &[*start, *end]);
                    w.push(u8::from(*wait));
                }
                RangeOp::Unlock { start, end } => {
                    w.push(3);
                    u64s(w, &[*start, *end]);
                }
                RangeOp::Release => w.push(4),
            }
        }
        Msg::RangeCancel { epoch, req } => {
            w.push(11);
            u64s(w, &[*epoch, *req]);
        }
        Msg::RangeAnswer {
            epoch,
            req,
            outcome,
        } => {
            w.push(12);
            u64s(w, &[*epoch, *req]);
            match outcome {
                RangeOutcome::Done => w.push(1),
                RangeOutcome::Busy => w.push(2),
                RangeOutcome::Free => w.push(3),
                RangeOutcome::Blocker(lock) => {
                    w.push(4);
                    encode_lock(w, lock);
                }
                RangeOutcome::Lost => w.push(5),
            }
        }
        Msg::MoveTo { epoch, to } => {
            w.push(13);
            u64s(w, &[*epoch]);
            w.push(*to);
        }
        Msg::Offer { epoch } => {
            w.push(14);
            u64s(w, &[*epoch]);
        }
        Msg::Accept { epoch, port } => {
            w.push(15);
            u64s(w, &[*epoch]);
            // Ports longer than this are not taken (`Node::set_reservation_port`); cut
            // rather than sent with a length that lies.
            let port = &port.as_bytes()[..port.len().min(MAX_PORT_LEN)];
            w.push(port.len() as u8);
            w.extend_from_slice(port);
        }
        Msg::Moved { epoch } => {
            w.push(16);
            u64s(w, &[*epoch]);
        }
        Msg::Evict { epoch, node } => {
            w.push(17);
            u64s(w, &[*epoch]);
            w.push(*node);
        }
        Msg::Evicted { epoch } => {
            w.push(18);
            u64s(w, &[*epoch]);
        }
    }
}

fn kind_byte(k: LockKind) -> u8 {
    match k {
        LockKind::Read => 0,
        LockKind::Write => 1,
    }
}

fn encode_lock(w: &mut Vec<u8>, l: &RangeLock) {
    w.push(l.owner.node);
    w.extend_from_slice(&l.owner.owner.to_le_bytes());
    w.push(kind_byte(l.kind));
    w.extend_from_slice(&l.start.to_le_bytes());
    w.extend_from_slice(&l.end.to_le_bytes());
}

/// Bytes of one held lease and of one pending request in `Holdings`.
const HELD_LEN: usize = 17;
const PENDING_LEN: usize = 25;
/// Bytes of one held range lock with its file in `Holdings`.
const RANGE_LEN: usize = 34;

fn decode_msg(r: &mut Reader<'_>) -> Result<Msg, WireError> {
    let tag = r.u8("message tag")?;
    let epoch = |r: &mut Reader<'_>| -> Result<Epoch, WireError> { r.u64("epoch") };
    Ok(match tag {
        1 => Msg::Heartbeat {
            sent: r.u64("sent")?,
            epoch: epoch(r)?,
            coordinator: r.flag("coordinator flag")?,
        },
        2 => Msg::HeartbeatAck {
            sent: r.u64("sent")?,
            epoch: epoch(r)?,
        },
        3 | 4 => {
            let (epoch, req, res) = (epoch(r)?, r.u64("req")?, r.u64("res")?);
            let (mode, sent) = (r.mode()?, r.u64("sent")?);
            if tag == 3 {
                Msg::Acquire {
                    epoch,
                    req,
                    res,
                    mode,
                    sent,
                }
            } else {
                Msg::Grant {
                    epoch,
                    req,
                    res,
                    mode,
                    sent,
                }
            }
        }
        5 => Msg::Recall {
            epoch: epoch(r)?,
            res: r.u64("res")?,
            req: r.u64("req")?,
        },
        6 => Msg::Release {
            epoch: epoch(r)?,
            res: r.u64("res")?,
            req: r.u64("req")?,
        },
        7 => Msg::Report { epoch: epoch(r)? },
        8 => Msg::Adopted { epoch: epoch(r)? },
        9 => {
            let epoch = epoch(r)?;
            let n = r.count(HELD_LEN, "held leases")?;
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push((r.u64("res")?, r.mode()?, r.u64("req")?));
            }
            let n = r.count(PENDING_LEN, "pending requests")?;
            let mut pending = Vec::with_capacity(n);
            for _ in 0..n {
                pending.push((r.u64("req")?, r.u64("res")?, r.mode()?, r.u64("sent")?));
            }
            let n = r.count(RANGE_LEN, "range locks")?;
            let mut ranges = Vec::with_capacity(n);
            for _ in 0..n {
                ranges.push((r.u64("file")?, r.lock()?));
            }
            Msg::Holdings {
                epoch,
                held,
                pending,
                ranges,
            }
        }
        10 => {
            let (epoch, req) = (epoch(r)?, r.u64("req")?);
            let (file, owner) = (r.u64("file")?, r.u64("owner")?);
            let op = match r.u8("range op")? {
                1 => RangeOp::Test {
                    kind: r.kind()?,
                    start: r.u64("start")?,
                    end: r.u64("end")?,
                },
                2 => RangeOp::Lock {
                    kind: r.kind()?,
                    start: r.u64("start")?,
                    end: r.u64("end")?,
                    wait: r.flag("wait flag")?,
                },
                3 => RangeOp::Unlock {
                    start: r.u64("start")?,
                    end: r.u64("end")?,
                },
                4 => RangeOp::Release,
                t => return Err(bad(format!("unknown range op {t}"))),
            };
            Msg::Range {
                epoch,
                req,
                file,
                owner,
                op,
            }
        }
        11 => Msg::RangeCancel {
            epoch: epoch(r)?,
            req: r.u64("req")?,
        },
        12 => {
            let (epoch, req) = (epoch(r)?, r.u64("req")?);
            let outcome = match r.u8("range outcome")? {
                1 => RangeOutcome::Done,
                2 => RangeOutcome::Busy,
                3 => RangeOutcome::Free,
                4 => RangeOutcome::Blocker(r.lock()?),
                5 => RangeOutcome::Lost,
                t => return Err(bad(format!("unknown range outcome {t}"))),
            };
            Msg::RangeAnswer {
                epoch,
                req,
                outcome,
            }
        }
        13 => Msg::MoveTo {
            epoch: epoch(r)?,
            to: r.u8("receiver")?,
        },
        14 => Msg::Offer { epoch: epoch(r)? },
        15 => Msg::Accept {
            epoch: epoch(r)?,
            port: r.port()?,
        },
        16 => Msg::Moved { epoch: epoch(r)? },
        17 => Msg::Evict {
            epoch: epoch(r)?,
            node: r.u8("evicted node")?,
        },
        18 => Msg::Evicted { epoch: epoch(r)? },
        t => return Err(bad(format!("unknown message tag {t}"))),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let rest = &self.bytes[self.at..];
        if rest.len() < n {
            return Err(bad(format!(
                "{what} needs {n} bytes, {} are left",
                rest.len()
            )));
        }
        self.at += n;
        Ok(&rest[..n])
    }

    fn label(&mut self) -> Result<String, WireError> {
        let len = usize::from(self.u8("label length")?);
        if len == 0 || len > MAX_LABEL_LEN {
            return Err(bad(format!(
                "label length {len} is outside 1 to {MAX_LABEL_LEN}"
            )));
        }
        Ok(std::str::from_utf8(self.take(len, "label")?)
            .map_err(|_| bad("the volume label is not UTF-8"))?
            .to_string())
    }

    fn port(&mut self) -> Result<String, WireError> {
        let len = usize::from(self.u8("port length")?);
        if len == 0 {
            return Err(bad("an empty initiator port"));
        }
        Ok(std::str::from_utf8(self.take(len, "initiator port")?)
            .map_err(|_| bad("the initiator port is not UTF-8"))?
            .to_string())
    }

    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    fn mode(&mut self) -> Result<Mode, WireError> {
        match self.u8("mode")? {
            0 => Ok(Mode::Shared),
            1 => Ok(Mode::Exclusive),
            m => Err(bad(format!(
                "mode {m} is neither 0 (shared) nor 1 (exclusive)"
            ))),
        }
    }

    fn flag(&mut self, what: &str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(bad(format!("{what} {v} is neither 0 nor 1"))),
        }
    }

    fn kind(&mut self) -> Result<LockKind, WireError> {
        match self.u8("lock kind")? {
            0 => Ok(LockKind::Read),
            1 => Ok(LockKind::Write),
            k => Err(bad(format!(
                "lock kind {k} is neither 0 (read) nor 1 (write)"
            ))),
        }
    }

    fn lock(&mut self) -> Result<RangeLock, WireError> {
        let owner = Owner {
            node: self.u8("lock owner's node")?,
            owner: self.u64("lock owner")?,
        };
        Ok(RangeLock {
            owner,
            kind: self.kind()?,
            start: self.u64("start")?,
            end: self.u64("end")?,
        })
    }

    /// A count of items of `item_len` bytes each, no more than the bytes left can hold.
    fn count(&mut self, item_len: usize, what: &str) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        let left = self.bytes.len() - self.at;
        if n > left / item_len {
            return Err(bad(format!(
                "{n} {what} announced, the {left} bytes left hold at most {}",
                left / item_len
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: RangeLock = RangeLock {
        owner: Owner { node: 2, owner: 99 },
        kind: LockKind::Write,
        start: 4,
        end: 8,
    };

    fn samples() -> Vec<Frame> {
        let v = |msg| Frame::Volume {
            volume: "Volume1".into(),
            incarnation: 7,
            msg,
        };
        vec![
            Frame::Service {
                volume: "Volume1".into(),
                service: 1,
            },
            Frame::Hello {
                fingerprint: [9; 32],
            },
            v(Msg::Heartbeat {
                sent: 1,
                epoch: 2,
                coordinator: true,
            }),
            v(Msg::HeartbeatAck { sent: 3, epoch: 4 }),
            v(Msg::Acquire {
                epoch: 1,
                req: 2,
                res: 3,
                mode: Mode::Exclusive,
                sent: 4,
            }),
            v(Msg::Grant {
                epoch: 1,
                req: 2,
                res: 3,
                mode: Mode::Shared,
                sent: 4,
            }),
            v(Msg::Recall {
                epoch: 1,
                res: 2,
                req: 3,
            }),
            v(Msg::Release {
                epoch: 1,
                res: 2,
                req: 3,
            }),
            v(Msg::Report { epoch: 5 }),
            v(Msg::Adopted { epoch: 6 }),
            v(Msg::Holdings {
                epoch: 7,
                held: vec![(1, Mode::Shared, 2), (3, Mode::Exclusive, 4)],
                pending: vec![(5, 6, Mode::Exclusive, 7)],
                ranges: vec![(8, LOCK)],
            }),
            v(Msg::Range {
                epoch: 1,
                req: 2,
                file: 3,
                owner: 4,
                op: RangeOp::Test {
                    kind: LockKind::Read,
                    start: 0,
                    end: 10,
                },
            }),
            v(Msg::Range {
                epoch: 1,
                req: 2,
                file: 3,
                owner: 4,
                op: RangeOp::Lock {
                    kind: LockKind::Write,
                    start: 5,
                    end: u64::MAX,
                    wait: true,
                },
            }),
            v(Msg::Range {
                epoch: 1,
                req: 2,
                file: 3,
                owner: 4,
                op: RangeOp::Unlock { start: 1, end: 2 },
            }),
            v(Msg::Range {
                epoch: 1,
                req: 2,
                file: 3,
                owner: 4,
                op: RangeOp::Release,
            }),
            v(Msg::RangeCancel { epoch: 1, req: 2 }),
            v(Msg::MoveTo { epoch: 3, to: 2 }),
            v(Msg::Offer { epoch: 3 }),
            v(Msg::Accept {
                epoch: 3,
                port: "iqn.2026-11.io.csvfs:n2,i,0x800102030405".into(),
            }),
            v(Msg::Moved { epoch: 3 }),
            v(Msg::Evict { epoch: 3, node: 2 }),
            v(Msg::Evicted { epoch: 3 }),
            v(Msg::RangeAnswer {
                epoch: 1,
                req: 2,
                outcome: RangeOutcome::Blocker(LOCK),
            }),
            v(Msg::RangeAnswer {
                epoch: 1,
                req: 2,
                outcome: RangeOutcome::Lost,
            }),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for f in samples() {
            let bytes = f.encode();
            for n in 0..bytes.len() {
                assert!(Frame::decode(&bytes[..n]).is_err(), "{f:?} cut at {n}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            let e = Frame::decode(&longer).unwrap_err();
            assert!(e.to_string().contains("left over"), "{e}");
        }
    }

    #[test]
    fn bad_fields_say_what_is_wrong() {
        let e = Frame::decode(&[4]).unwrap_err();
        assert!(e.to_string().contains("unknown frame tag 4"), "{e}");
        let e = Frame::decode(&[2, 0]).unwrap_err();
        assert!(e.to_string().contains("label length 0"), "{e}");
        let e = Frame::decode(&[2, 1, 0xff, 0, 0, 0, 0, 7]).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        // Holdings announcing four billion leases in a few bytes.
        let mut b = vec![2, 1, b'V', 0, 0, 0, 0, 9];
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = Frame::decode(&b).unwrap_err();
        assert!(e.to_string().contains("held leases announced"), "{e}");
        // An Accept with an empty port.
        let mut b = vec![2, 1, b'V', 0, 0, 0, 0, 15];
        b.extend_from_slice(&3u64.to_le_bytes());
        b.push(0);
        let e = Frame::decode(&b).unwrap_err();
        assert!(e.to_string().contains("empty initiator port"), "{e}");
    }
}
