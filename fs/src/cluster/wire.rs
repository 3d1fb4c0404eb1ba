//! The metadata service's frames between a node and its volume's coordinator, in
//! postcard (serde's compact binary form). Requests travel in batches
//! ([`MetaBatch`], see [`crate::cluster::batcher`]) on a stream of their own, after the
//! `Service` frame of the lock manager's links; the coordinator answers a batch with
//! one or more [`MetaAnswers`] frames on the same stream, until every request of it
//! has its response.
//!
//! The decoders take nothing on trust: a frame that does not decode in full, or with
//! bytes left over, is an error that says so; postcard checks every length against
//! the bytes present, so a hostile frame cannot make it allocate without bound.

use metadata::Inode;
use serde::{Deserialize, Serialize};

use crate::meta::{MetaCall, MetaReply};

/// The service number of the metadata service in the lock manager's `Service` frame.
pub const METADATA_SERVICE: u8 = 1;

/// The service number of lease recalls (coordinator to holder).
pub const RECALL_SERVICE: u8 = 4;

/// The largest metadata frame (a directory batch, an xattr of 64 KiB, a long extent
/// list).
pub const MAX_FRAME: usize = 4 << 20;

/// Most requests one batch may hold.
pub const MAX_BATCH: usize = 64;

/// Requests of one node sent together; the coordinator carries them out in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaBatch {
    /// The requests, at most [`MAX_BATCH`].
    pub requests: Vec<MetaRequest>,
}

/// Responses to requests of one batch, each naming its request by id: those whose
/// answers wait for lease recalls come in a later frame than the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaAnswers {
    /// The responses.
    pub responses: Vec<MetaResponse>,
}

/// One metadata operation of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaRequest {
    /// Unique per sending node and incarnation: a retried operation keeps its id.
    pub id: u64,
    /// The epoch of the coordinator the sender means.
    pub epoch: u64,
    /// The operation.
    pub call: MetaCall,
    /// A change acknowledged by an earlier coordinator and sent again to a new one,
    /// which serves these first (see [`crate::cluster::unconfirmed`]).
    pub replay: bool,
    /// Commit durably before answering (the sender keeps enough unconfirmed changes).
    pub durable: bool,
    /// A replayed create: the inode number its first answer gave, which it keeps
    /// (changes whose answers were lost to the failover may have taken numbers
    /// before it the first time; they are sent again after the replay).
    pub pinned_ino: Option<u64>,
}

/// The coordinator's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaResponse {
    /// The request's id.
    pub id: u64,
    /// What came of it.
    pub outcome: Outcome,
    /// The epoch the coordinator answered in.
    pub epoch: u64,
    /// The coordinator's count of durable commits when it answered: the asking node's
    /// unconfirmed changes committed before an earlier count are durable.
    pub durable_commits: u64,
    /// A change acknowledged before it is durable: its place in the order in which
    /// the coordinator applied changes, and the count of durable commits after which
    /// it is durable (the asking node keeps it until then, to replay it after a
    /// failover).
    pub unconfirmed: Option<Unconfirmed>,
}

/// Where an early-acknowledged change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unconfirmed {
    /// The order of application.
    pub seq: u64,
    /// Durable once the coordinator's count of durable commits exceeds this.
    pub durable_after: u64,
}

/// What came of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Done; the answer.
    Reply(MetaReply),
    /// Done; the answer, and the asking node holds a lease on what it names, and on
    /// the attributes `attrs` (a change's directories, as they are after it): it may
    /// keep them until the lease runs out or is recalled (see
    /// [`crate::cluster::leases`]).
    Leased {
        /// The answer.
        reply: MetaReply,
        /// More attributes under lease.
        attrs: Vec<(u64, Inode)>,
    },
    /// A lookup found no such name, and the asking node holds a lease on its absence.
    Absent {
        /// The message.
        message: String,
    },
    /// The operation failed: its errno and message.
    Failed {
        /// The errno.
        errno: i32,
        /// The message.
        message: String,
    },
    /// This node does not serve the volume's metadata (any more): ask the coordinator
    /// of `epoch` or later.
    NotCoordinator {
        /// The epoch this node knows.
        epoch: u64,
    },
}

/// Something a node's kernel may cache under a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LeaseKey {
    /// The attributes of an inode (and the cached pages of a file, which the kernel
    /// trusts only while it trusts the attributes).
    Attr(u64),
    /// A name in a directory.
    Entry(u64, Vec<u8>),
}

/// A coordinator's recall of leases from their holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecallRequest {
    /// The coordinator's epoch.
    pub epoch: u64,
    /// What the holder must no longer trust.
    pub keys: Vec<LeaseKey>,
    /// Everything, whatever `keys` says (a new coordinator, which does not know what
    /// its predecessor granted).
    pub all: bool,
}

/// The holder's word that its kernel dropped what a recall named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecallDone {
    /// The recall's epoch.
    pub epoch: u64,
    /// Answering a new coordinator's recall of everything: the holder has changes an
    /// earlier coordinator acknowledged and may have lost, and replays them now; the
    /// new coordinator serves nothing else until it has.
    pub replaying: bool,
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed metadata frame: {0}")]
pub struct FrameError(String);

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these types into a Vec cannot fail: no maps, no unsized sequences.
    postcard::to_stdvec(v).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, FrameError> {
    if bytes.len() > MAX_FRAME {
        return Err(FrameError(format!(
            "{} bytes, more than the {MAX_FRAME} allowed",
            bytes.len()
        )));
    }
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| FrameError(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError(format!(
            "{} bytes left over after the frame",
            rest.len()
        )));
    }
    Ok(v)
}

/// Gives a frame type its encoder and its decoder.
macro_rules! frame {
    ($($t:ty),*) => {$(
        impl $t {
            /// The frame's bytes.
            pub fn encode(&self) -> Vec<u8> {
                encode(self)
            }
            /// Decodes a frame, all of `bytes`.
            pub fn decode(bytes: &[u8]) -> Result<$t, FrameError> {
                decode(bytes)
            }
        }
    )*};
}

frame!(
    MetaRequest,
    MetaResponse,
    MetaBatch,
    MetaAnswers,
    RecallRequest,
    RecallDone
);

/// The bytes of a frame of many items (a [`MetaBatch`] of requests, or
/// [`MetaAnswers`]) from the items' own encodings: postcard writes a sequence as its
/// length (a varint) and then its items, so items encoded once, to learn their size,
/// need not be encoded again.
pub fn frame_of(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + items.iter().map(Vec::len).sum::<usize>());
    let mut n = items.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    for i in items {
        out.extend_from_slice(i);
    }
    out
}

impl MetaBatch {
    /// Decodes a batch and checks its size.
    pub fn decode_checked(bytes: &[u8]) -> Result<MetaBatch, FrameError> {
        let b = MetaBatch::decode(bytes)?;
        match b.requests.len() {
            0 => Err(FrameError("a batch without requests".into())),
            n if n > MAX_BATCH => Err(FrameError(format!(
                "a batch of {n} requests, more than the {MAX_BATCH} allowed"
            ))),
            _ => Ok(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use metadata::{AttrChange, Extent, Inode, NewNode, Timestamp};

    use super::*;

    fn samples() -> Vec<(MetaRequest, MetaResponse)> {
        let inode = Inode {
            mode: 0o100644,
            size: 12345,
            ..Inode::default()
        };
        vec![
            (
                MetaRequest {
                    id: 1,
                    epoch: 3,
                    call: MetaCall::Create {
                        parent: 1,
                        name: b"a file".to_vec(),
                        node: NewNode {
                            mode: 0o100600,
                            uid: 1000,
                            gid: 100,
                            rdev: 0,
                            symlink: None,
                        },
                    },
                    replay: true,
                    durable: false,
                    pinned_ino: Some(7),
                },
                MetaResponse {
                    id: 1,
                    outcome: Outcome::Leased {
                        reply: MetaReply::Entry(7, inode),
                        attrs: vec![(1, inode)],
                    },
                    epoch: 3,
                    durable_commits: 41,
                    unconfirmed: Some(Unconfirmed {
                        seq: 9,
                        durable_after: 41,
                    }),
                },
            ),
            (
                MetaRequest {
                    id: u64::MAX,
                    epoch: 0,
                    call: MetaCall::SetAttr {
                        ino: 7,
                        change: AttrChange {
                            mode: Some(0o600),
                            mtime: Some(Timestamp {
                                secs: -5,
                                nanos: 999_999_999,
                            }),
                            ..AttrChange::default()
                        },
                    },
                    replay: false,
                    durable: true,
                    pinned_ino: None,
                },
                MetaResponse {
                    id: 2,
                    outcome: Outcome::Failed {
                        errno: libc::EIO,
                        message: "LUN I/O failed".into(),
                    },
                    epoch: 2,
                    durable_commits: 0,
                    unconfirmed: None,
                },
            ),
            (
                MetaRequest {
                    id: 9,
                    epoch: 4,
                    call: MetaCall::Layout {
                        ino: 7,
                        from: 0,
                        to: 100,
                    },
                    replay: false,
                    durable: false,
                    pinned_ino: None,
                },
                MetaResponse {
                    id: 9,
                    outcome: Outcome::Reply(MetaReply::Layout(
                        inode,
                        vec![Extent {
                            logical: 0,
                            physical: 4096,
                            len: 10,
                            unwritten: true,
                        }],
                    )),
                    epoch: 2,
                    durable_commits: u64::MAX,
                    unconfirmed: None,
                },
            ),
            (
                MetaRequest {
                    id: 10,
                    epoch: 4,
                    call: MetaCall::Sync,
                    replay: false,
                    durable: false,
                    pinned_ino: None,
                },
                MetaResponse {
                    id: 10,
                    outcome: Outcome::Absent {
                        message: "no such file".into(),
                    },
                    epoch: 2,
                    durable_commits: 3,
                    unconfirmed: None,
                },
            ),
        ]
    }

    #[test]
    fn frames_round_trip() {
        for (req, resp) in samples() {
            assert_eq!(MetaRequest::decode(&req.encode()).unwrap(), req);
            assert_eq!(MetaResponse::decode(&resp.encode()).unwrap(), resp);
        }
    }

    #[test]
    fn batches_round_trip_and_their_size_is_checked() {
        let (reqs, resps): (Vec<_>, Vec<_>) = samples().into_iter().unzip();
        let batch = MetaBatch { requests: reqs };
        let bytes = batch.encode();
        assert_eq!(MetaBatch::decode_checked(&bytes).unwrap(), batch);
        for n in 0..bytes.len() {
            assert!(MetaBatch::decode(&bytes[..n]).is_err(), "batch cut at {n}");
        }
        let answers = MetaAnswers { responses: resps };
        assert_eq!(MetaAnswers::decode(&answers.encode()).unwrap(), answers);
        // Built from the items' own encodings, the same bytes.
        let items: Vec<Vec<u8>> = batch.requests.iter().map(MetaRequest::encode).collect();
        assert_eq!(frame_of(&items), bytes);
        let items: Vec<Vec<u8>> = answers.responses.iter().map(MetaResponse::encode).collect();
        assert_eq!(frame_of(&items), answers.encode());
        // A count over one varint byte.
        let many = MetaAnswers {
            responses: vec![answers.responses[0].clone(); 300],
        };
        let items: Vec<Vec<u8>> = many.responses.iter().map(MetaResponse::encode).collect();
        assert_eq!(frame_of(&items), many.encode());
        let empty = MetaBatch { requests: vec![] }.encode();
        let e = MetaBatch::decode_checked(&empty).unwrap_err();
        assert!(e.to_string().contains("without requests"), "{e}");
        let one = batch.requests[0].clone();
        let big = MetaBatch {
            requests: vec![one; MAX_BATCH + 1],
        }
        .encode();
        let e = MetaBatch::decode_checked(&big).unwrap_err();
        assert!(e.to_string().contains("more than the 64"), "{e}");
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for (req, resp) in samples() {
            let (req, resp) = (req.encode(), resp.encode());
            for n in 0..req.len() {
                assert!(
                    MetaRequest::decode(&req[..n]).is_err(),
                    "request cut at {n}"
                );
            }
            for n in 0..resp.len() {
                assert!(
                    MetaResponse::decode(&resp[..n]).is_err(),
                    "response cut at {n}"
                );
            }
            let mut longer = req.clone();
            longer.push(0);
            let e = MetaRequest::decode(&longer).unwrap_err();
            assert!(e.to_string().contains("left over"), "{e}");
        }
    }

    #[test]
    fn recall_frames_round_trip_and_refuse_truncation() {
        let r = RecallRequest {
            epoch: 7,
            keys: vec![LeaseKey::Attr(1), LeaseKey::Entry(1, b"name".to_vec())],
            all: false,
        };
        let b = r.encode();
        assert_eq!(RecallRequest::decode(&b).unwrap(), r);
        for n in 0..b.len() {
            assert!(RecallRequest::decode(&b[..n]).is_err(), "cut at {n}");
        }
        let d = RecallDone {
            epoch: 7,
            replaying: true,
        };
        assert_eq!(RecallDone::decode(&d.encode()).unwrap(), d);
        assert!(RecallDone::decode(&[]).is_err());
        let leased = MetaResponse {
            id: 3,
            outcome: Outcome::NotCoordinator { epoch: 5 },
            epoch: 2,
            durable_commits: 1,
            unconfirmed: None,
        };
        assert_eq!(MetaResponse::decode(&leased.encode()).unwrap(), leased);
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating_it() {
        // A ReadDir reply claiming 2^63 entries in a few bytes.
        let mut b = MetaResponse {
            id: 1,
            outcome: Outcome::Reply(MetaReply::Entries(vec![])),
            epoch: 2,
            durable_commits: 0,
            unconfirmed: None,
        }
        .encode();
        // Drop the trailer (the count, `None`) and the empty list's length.
        b.truncate(b.len() - 3);
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(MetaResponse::decode(&b).is_err());
    }
}
