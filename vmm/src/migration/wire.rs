//! The live-migration stream's messages: one per frame of a lockmgr framed QUIC
//! stream between the source's and the destination's VM processes (mutual TLS with
//! the cluster's node certificates). The decoder takes bytes from the network, so it
//! refuses bad input with an error saying what is wrong and never panics (a fuzz
//! target holds it to that).
//!
//! Source to destination: `Hello`, pre-copy rounds (each: any number of `Pages`, then
//! `RoundEnd`), the last `Pages`, `Verify` if asked, `State`, then (once the
//! destination said `Ready`) `LeaseReleased`. Destination to source: `RoundReceived`
//! for each `RoundEnd`, `Ready`, then `Running`, or `Failed` at any point.

use crate::machine::memory::is_zero;

/// A guest page.
pub const PAGE: usize = 4096;
/// The most pages one `Pages` message carries.
pub const MAX_PAGES_PER_MESSAGE: usize = 64;
/// The largest frame of the stream: a full `Pages` message and its overhead.
pub const MAX_FRAME: usize = 1 << 20;
/// The longest name or error text carried.
const MAX_TEXT: usize = 4096;

/// A `Pages` message built in place: page contents are read straight into the frame
/// (no page is copied twice or allocated on its own). Its bytes are those of
/// [`Message::Pages`] with the same pages.
pub struct PagesFrame {
    bytes: Vec<u8>,
    count: u32,
}

impl Default for PagesFrame {
    fn default() -> Self {
        Self::new()
    }
}

impl PagesFrame {
    /// An empty message.
    pub fn new() -> PagesFrame {
        let mut bytes = Vec::with_capacity(5 + MAX_PAGES_PER_MESSAGE * (9 + PAGE));
        bytes.push(T_PAGES);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        PagesFrame { bytes, count: 0 }
    }

    /// How many pages it holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether it holds no page.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds page `n`, whose contents `fill` writes into the buffer it is given (an
    /// error leaves the message as it was). A page of zeros goes as a marker, or not
    /// at all if `skip_zero`. Returns whether the page was added.
    pub fn push<E>(
        &mut self,
        n: u64,
        skip_zero: bool,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&n.to_le_bytes());
        self.bytes.push(1);
        self.bytes.resize(start + 9 + PAGE, 0);
        if let Err(e) = fill(&mut self.bytes[start + 9..]) {
            self.bytes.truncate(start);
            return Err(e);
        }
        if is_zero(&self.bytes[start + 9..]) {
            if skip_zero {
                self.bytes.truncate(start);
                return Ok(false);
            }
            self.bytes.truncate(start + 9);
            self.bytes[start + 8] = 0;
        }
        self.count += 1;
        Ok(true)
    }

    /// The frame's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes[1..5].copy_from_slice(&self.count.to_le_bytes());
        self.bytes
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The VM being sent, its memory size, and the source's downtime limit.
    Hello {
        vm: String,
        memory_bytes: u64,
        downtime_ms: u64,
    },
    /// Pages of guest memory: (page number, contents; `None` for a page of zeros).
    Pages(Vec<(u64, Option<Box<[u8; PAGE]>>)>),
    /// The paused VM's vCPU and device state ([`crate::machine::state_codec`]).
    State(Vec<u8>),
    /// The blake3 hash of all of the paused VM's memory, sent before `State` when
    /// the source was asked to verify: the destination compares it with what it has.
    Verify([u8; 32]),
    /// The end of pre-copy round N: the destination answers `RoundReceived(N)` once
    /// it has put every page before it into the VM's memory.
    RoundEnd(u32),
    /// Every page of round N is in the destination's memory: the source times the
    /// round up to this answer, so its bandwidth is what reached the destination,
    /// not what was buffered on the way.
    RoundReceived(u32),
    /// The destination has the VM built and ready to start.
    Ready,
    /// The source has let the VM lease go: the destination may take it and run.
    LeaseReleased,
    /// The destination runs the VM.
    Running,
    /// The side that sends it gives up, saying why.
    Failed(String),
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad migration message: {0}")]
pub struct WireError(String);

const T_HELLO: u8 = 1;
const T_PAGES: u8 = 2;
const T_STATE: u8 = 3;
const T_READY: u8 = 4;
const T_LEASE_RELEASED: u8 = 5;
const T_RUNNING: u8 = 6;
const T_FAILED: u8 = 7;
const T_VERIFY: u8 = 8;
const T_ROUND_END: u8 = 9;
const T_ROUND_RECEIVED: u8 = 10;

impl Message {
    /// The message as one frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Hello {
                vm,
                memory_bytes,
                downtime_ms,
            } => {
                out.push(T_HELLO);
                put_text(&mut out, vm);
                out.extend_from_slice(&memory_bytes.to_le_bytes());
                out.extend_from_slice(&downtime_ms.to_le_bytes());
            }
            Message::Pages(pages) => {
                out.reserve(5 + pages.len() * (9 + PAGE));
                out.push(T_PAGES);
                out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                for (n, data) in pages {
                    out.extend_from_slice(&n.to_le_bytes());
                    match data {
                        Some(d) => {
                            out.push(1);
                            out.extend_from_slice(&d[..]);
                        }
                        None => out.push(0),
                    }
                }
            }
            Message::State(bytes) => {
                out.push(T_STATE);
                out.extend_from_slice(bytes);
            }
            Message::Verify(hash) => {
                out.push(T_VERIFY);
                out.extend_from_slice(hash);
            }
            Message::RoundEnd(n) => {
                out.push(T_ROUND_END);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Message::RoundReceived(n) => {
                out.push(T_ROUND_RECEIVED);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Message::Ready => out.push(T_READY),
            Message::LeaseReleased => out.push(T_LEASE_RELEASED),
            Message::Running => out.push(T_RUNNING),
            Message::Failed(why) => {
                out.push(T_FAILED);
                put_text(&mut out, why);
            }
        }
        out
    }

    /// Decodes one frame.
    pub fn decode(b: &[u8]) -> Result<Message, WireError> {
        let (&tag, rest) = b
            .split_first()
            .ok_or_else(|| WireError("an empty frame".into()))?;
        let mut r = Reader { b: rest, at: 0 };
        let m = match tag {
            T_HELLO => Message::Hello {
                vm: r.text("the VM's name")?,
                memory_bytes: r.u64("the memory size")?,
                downtime_ms: r.u64("the downtime limit")?,
            },
            T_PAGES => {
                let pages = read_pages(&mut r)?;
                Message::Pages(
                    pages
                        .into_iter()
                        .map(|(n, data)| {
                            (
                                n,
                                data.map(|d| Box::new(d.try_into().expect("a whole page"))),
                            )
                        })
                        .collect(),
                )
            }
            T_STATE => {
                let all = r.take(rest.len(), "the state")?;
                Message::State(all.to_vec())
            }
            T_VERIFY => {
                Message::Verify(r.take(32, "the memory hash")?.try_into().expect("32 bytes"))
            }
            T_ROUND_END => Message::RoundEnd(r.u32("the round")?),
            T_ROUND_RECEIVED => Message::RoundReceived(r.u32("the round")?),
            T_READY => Message::Ready,
            T_LEASE_RELEASED => Message::LeaseReleased,
            T_RUNNING => Message::Running,
            T_FAILED => Message::Failed(r.text("the reason")?),
            t => return Err(WireError(format!("unknown message type {t}"))),
        };
        if r.at != rest.len() {
            return Err(WireError(format!(
                "{} bytes after the message",
                rest.len() - r.at
            )));
        }
        Ok(m)
    }
}

/// A `Pages` frame read in place: the pages' contents are borrowed from the frame
/// (nothing copied or allocated per page), for the destination to write straight into
/// guest memory.
pub type BorrowedPages<'a> = Vec<(u64, Option<&'a [u8]>)>;

/// The pages of `frame` if it is a `Pages` message (checked as [`Message::decode`]
/// checks it), `None` if it is another message.
pub fn borrow_pages(frame: &[u8]) -> Result<Option<BorrowedPages<'_>>, WireError> {
    let Some((&T_PAGES, rest)) = frame.split_first() else {
        return Ok(None);
    };
    let mut r = Reader { b: rest, at: 0 };
    let pages = read_pages(&mut r)?;
    if r.at != rest.len() {
        return Err(WireError(format!(
            "{} bytes after the message",
            rest.len() - r.at
        )));
    }
    Ok(Some(pages))
}

/// The body of a `Pages` message: a count, then per page its number, its kind (0:
/// zeros, 1: data) and for data its contents.
fn read_pages<'a>(r: &mut Reader<'a>) -> Result<BorrowedPages<'a>, WireError> {
    let n = r.u32("the page count")? as usize;
    if n > MAX_PAGES_PER_MESSAGE {
        return Err(WireError(format!(
            "{n} pages in one message, more than {MAX_PAGES_PER_MESSAGE}"
        )));
    }
    let mut pages = Vec::with_capacity(n);
    for _ in 0..n {
        let page = r.u64("a page number")?;
        let data = match r.take(1, "a page's kind")?[0] {
            0 => None,
            1 => Some(r.take(PAGE, "a page's contents")?),
            k => {
                return Err(WireError(format!(
                    "page kind {k}, not 0 (zeros) or 1 (data)"
                )));
            }
        };
        pages.push((page, data));
    }
    Ok(pages)
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(MAX_TEXT)];
    // Cut at a character boundary.
    let cut = (0..=b.len())
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    out.extend_from_slice(&(cut as u32).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..cut]);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(WireError(format!("it ends inside {what}")));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn text(&mut self, what: &str) -> Result<String, WireError> {
        let n = self.u32(what)? as usize;
        if n > MAX_TEXT {
            return Err(WireError(format!(
                "{what} is {n} bytes long, more than {MAX_TEXT}"
            )));
        }
        String::from_utf8(self.take(n, what)?.to_vec())
            .map_err(|_| WireError(format!("{what} is not UTF-8")))
    }
}

/// What the fuzz target and its corpus replay check: `bytes` is refused with an
/// error, or decodes to a message that encodes back to exactly `bytes`.
pub fn check_untrusted(bytes: &[u8]) -> Result<(), WireError> {
    let borrowed = borrow_pages(bytes);
    let m = Message::decode(bytes);
    match (&borrowed, &m) {
        (Ok(Some(pages)), Ok(Message::Pages(owned))) => assert!(
            pages.len() == owned.len()
                && pages
                    .iter()
                    .zip(owned)
                    .all(|(a, b)| a.0 == b.0 && a.1 == b.1.as_ref().map(|d| &d[..])),
            "the borrowed pages differ from the decoded ones"
        ),
        (Ok(None), Ok(m)) => assert!(
            !matches!(m, Message::Pages(_)),
            "a Pages message not seen as one"
        ),
        // Not a Pages frame, and refused as the message it claims to be.
        (Ok(None), Err(_)) | (Err(_), Err(_)) => {}
        _ => panic!("borrowing the pages and decoding disagree"),
    }
    let m = m?;
    assert!(
        m.encode() == bytes,
        "a decoded message does not encode back to its bytes"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pages_frame_is_the_pages_message() {
        let page = |b: u8| {
            let mut p = Box::new([0u8; PAGE]);
            p[7] = b;
            p
        };
        let mut f = PagesFrame::new();
        let fill = |b: u8| {
            move |buf: &mut [u8]| -> Result<(), ()> {
                buf.fill(0);
                buf[7] = b;
                Ok(())
            }
        };
        assert!(f.push(3, false, fill(1)).unwrap());
        assert!(f.push(4, false, fill(0)).unwrap());
        assert!(!f.push(5, true, fill(0)).unwrap());
        assert!(f.push(9, true, fill(2)).unwrap());
        assert!(f.push(10, false, |_: &mut [u8]| Err(())).is_err());
        assert_eq!(f.len(), 3);
        let bytes = f.finish();
        let expected = Message::Pages(vec![(3, Some(page(1))), (4, None), (9, Some(page(2)))]);
        assert_eq!(bytes, expected.encode());
        assert_eq!(Message::decode(&bytes).unwrap(), expected);
        let borrowed = borrow_pages(&bytes).unwrap().unwrap();
        assert_eq!(
            borrowed,
            vec![(3, Some(&page(1)[..])), (4, None), (9, Some(&page(2)[..]))]
        );
        assert_eq!(borrow_pages(&Message::Ready.encode()).unwrap(), None);
        assert!(borrow_pages(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            PagesFrame::new().finish(),
            Message::Pages(Vec::new()).encode()
        );
    }

    fn samples() -> Vec<Message> {
        let mut page = Box::new([0u8; PAGE]);
        page[5] = 7;
        vec![
            Message::Hello {
                vm: "web1".into(),
                memory_bytes: 64 << 20,
                downtime_ms: 300,
            },
            Message::Pages(vec![(3, Some(page)), (9, None)]),
            Message::State(vec![1, 2, 3]),
            Message::Verify([9; 32]),
            Message::RoundEnd(4),
            Message::RoundReceived(4),
            Message::Ready,
            Message::LeaseReleased,
            Message::Running,
            Message::Failed("the disk is gone".into()),
        ]
    }

    #[test]
    fn round_trip() {
        for m in samples() {
            let b = m.encode();
            assert_eq!(Message::decode(&b).unwrap(), m);
            check_untrusted(&b).unwrap();
        }
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let e = |b: &[u8]| Message::decode(b).unwrap_err().to_string();
        assert!(e(&[]).contains("empty"));
        assert!(e(&[99]).contains("unknown message type 99"));
        assert!(e(&[T_READY, 0]).contains("after the message"));
        assert!(e(&[T_PAGES, 200, 0, 0, 0]).contains("200 pages"));
        assert!(e(&[T_PAGES, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5]).contains("page kind 5"));
        let hello = samples()[0].encode();
        assert!(e(&hello[..hello.len() - 1]).contains("ends inside the downtime limit"));
        assert!(e(&[T_FAILED, 255, 255, 0, 0]).contains("more than 4096"));
        assert!(e(&[T_FAILED, 2, 0, 0, 0, 0xff, 0xfe]).contains("not UTF-8"));
    }
}
