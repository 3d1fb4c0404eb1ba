//! Framed messages over a QUIC bidirectional stream.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes. The bytes
//! are opaque here: message types belong to the protocol core. A receiver refuses a
//! frame longer than its limit before reading (or allocating) its body, so a peer
//! cannot make it buffer without bound; a sender refuses to send one too, so the
//! mistake shows on the side that made it.

use quinn::{ReadExactError, RecvStream, SendStream};

/// The default largest frame, in bytes: room for a redirected 8 MiB block write
/// with its header, far above any lock-manager message.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 << 20;

/// The length of a frame's header.
pub const FRAME_HEADER_LEN: usize = 4;

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The frame is longer than the limit (on the receiving side, the stream is left
    /// unread and should be dropped).
    #[error("frame of {len} bytes is longer than the limit of {max}")]
    TooLarge {
        /// The frame's length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes received of the header or body.
        got: usize,
        /// Bytes the header or body needs.
        expected: usize,
    },
    /// Reading failed (connection lost, stream reset by the peer).
    #[error("cannot read the stream")]
    Read(#[source] quinn::ReadError),
    /// Writing failed (connection lost, stream stopped by the peer).
    #[error("cannot write the stream")]
    Write(#[source] quinn::WriteError),
    /// The stream was already finished.
    #[error("the stream is already finished")]
    Finished,
}

/// The header of a frame of `len` bytes, or `TooLarge`.
pub fn encode_header(len: usize, max: usize) -> Result<[u8; FRAME_HEADER_LEN], StreamError> {
    match u32::try_from(len) {
        Ok(n) if len <= max => Ok(n.to_le_bytes()),
        _ => Err(StreamError::TooLarge {
            len: len as u64,
            max,
        }),
    }
}

/// The body length a header announces, or `TooLarge`.
pub fn decode_header(header: [u8; FRAME_HEADER_LEN], max: usize) -> Result<usize, StreamError> {
    let len = u32::from_le_bytes(header);
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(StreamError::TooLarge {
            len: u64::from(len),
            max,
        }),
    }
}

/// The sending half of a framed stream.
#[derive(Debug)]
pub struct FramedSend {
    stream: SendStream,
    max: usize,
}

impl FramedSend {
    pub(crate) fn new(stream: SendStream) -> FramedSend {
        FramedSend {
            stream,
            max: DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// Sets the largest frame this side sends.
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.max = max;
    }

    /// Sends one message as one frame.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), StreamError> {
        let header = encode_header(message.len(), self.max)?;
        self.stream
            .write_all(&header)
            .await
            .map_err(StreamError::Write)?;
        self.stream
            .write_all(message)
            .await
            .map_err(StreamError::Write)
    }

    /// Ends the stream after the frames already sent; the peer's `recv` then
    /// returns `None`.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.stream.finish().map_err(|_| StreamError::Finished)
    }

    /// The QUIC stream, for what framing does not cover (priorities, reset).
    pub fn quic(&mut self) -> &mut SendStream {
        &mut self.stream
    }
}

/// The receiving half of a framed stream.
#[derive(Debug)]
pub struct FramedRecv {
    stream: RecvStream,
    max: usize,
}

impl FramedRecv {
    pub(crate) fn new(stream: RecvStream) -> FramedRecv {
        FramedRecv {
            stream,
            max: DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// Sets the largest frame this side accepts.
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.max = max;
    }

    /// The next message, or `None` once the peer has finished the stream between
    /// two frames.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        match self.stream.read_exact(&mut header).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(ReadExactError::FinishedEarly(got)) => {
                return Err(StreamError::Truncated {
                    got,
                    expected: FRAME_HEADER_LEN,
                });
            }
            Err(ReadExactError::ReadError(e)) => return Err(StreamError::Read(e)),
        }
        let len = decode_header(header, self.max)?;
        let mut body = vec![0u8; len];
        match self.stream.read_exact(&mut body).await {
            Ok(()) => Ok(Some(body)),
            Err(ReadExactError::FinishedEarly(got)) => {
                Err(StreamError::Truncated { got, expected: len })
            }
            Err(ReadExactError::ReadError(e)) => Err(StreamError::Read(e)),
        }
    }

    /// The QUIC stream, for what framing does not cover.
    pub fn quic(&mut self) -> &mut RecvStream {
        &mut self.stream
    }
}

/// Both halves of a bidirectional stream; split them to use them from two tasks.
#[derive(Debug)]
pub struct FramedStream {
    /// What this side sends.
    pub send: FramedSend,
    /// What this side receives.
    pub recv: FramedRecv,
}

impl FramedStream {
    pub(crate) fn new(send: SendStream, recv: RecvStream) -> FramedStream {
        FramedStream {
            send: FramedSend::new(send),
            recv: FramedRecv::new(recv),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), StreamError> {
        self.send.send(message).await
    }

    /// Receives one message (`None`: the peer finished its half).
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        self.recv.recv().await
    }

    /// Sets the largest frame either half sends or accepts.
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.send.set_max_frame_len(max);
        self.recv.set_max_frame_len(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = encode_header(0x0102_0304, usize::MAX).unwrap();
        assert_eq!(h, [4, 3, 2, 1]);
        assert_eq!(decode_header(h, usize::MAX).unwrap(), 0x0102_0304);
        assert_eq!(decode_header(encode_header(0, 0).unwrap(), 0).unwrap(), 0);
    }

    #[test]
    fn oversize_frames_are_refused_both_ways() {
        let e = decode_header(1001u32.to_le_bytes(), 1000).unwrap_err();
        assert!(matches!(
            e,
            StreamError::TooLarge {
                len: 1001,
                max: 1000
            }
        ));
        assert_eq!(
            e.to_string(),
            "frame of 1001 bytes is longer than the limit of 1000"
        );
        assert!(decode_header([0xff; 4], DEFAULT_MAX_FRAME_LEN).is_err());
        assert!(encode_header(1001, 1000).is_err());
        assert!(encode_header(1 << 32, usize::MAX).is_err());
        assert_eq!(decode_header(1000u32.to_le_bytes(), 1000).unwrap(), 1000);
    }
}
