//! The connection thread's side of the socket: reads through a buffer, so that the
//! header and the data of a small PDU, and often several PDUs, come in one `recv`
//! (a 4 KiB read's Data-In is 48 + 4096 bytes: reading header and data separately cost
//! two system calls per I/O). A read at least as large as the buffer, with the buffer
//! empty, goes straight into its destination (Data-In of large reads lands in the
//! caller's buffer without a copy).
//!
//! Reads are patient: the socket has a short read timeout (so the thread notices a
//! close), and a timeout in the middle of a PDU is retried until `limit` has passed in
//! one read. A timeout before the first byte of a header is idleness, which
//! [`ConnReader::wait_for_data`] reports.

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Bytes read ahead.
const BUFFER: usize = 64 << 10;

/// A buffered, patient reader of one connection.
pub struct ConnReader<'a> {
    stream: &'a TcpStream,
    limit: Duration,
    closing: &'a AtomicBool,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<'a> ConnReader<'a> {
    /// A reader of `stream` that gives up on a stalled PDU after `limit`, and stops
    /// once `closing` is set.
    pub fn new(stream: &'a TcpStream, limit: Duration, closing: &'a AtomicBool) -> Self {
        ConnReader {
            stream,
            limit,
            closing,
            buf: vec![0u8; BUFFER].into_boxed_slice(),
            pos: 0,
            end: 0,
        }
    }

    /// The bytes read ahead and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.pos, "consumed more than was buffered");
        self.pos += n;
    }

    /// Waits for at least one byte: `Ok(false)` if the socket's read timeout passed
    /// first (the connection is idle), `Ok(true)` once something is buffered.
    pub fn wait_for_data(&mut self) -> io::Result<bool> {
        if self.pos < self.end {
            return Ok(true);
        }
        loop {
            match self.fill_once() {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    self.check_closing()?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn check_closing(&self) -> io::Result<()> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(io::Error::other("the session is closing"));
        }
        Ok(())
    }

    /// One `recv` into the (empty) buffer.
    fn fill_once(&mut self) -> io::Result<()> {
        self.pos = 0;
        self.end = 0;
        let n = (&mut &*self.stream).read(&mut self.buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end = n;
        Ok(())
    }

    /// Runs `read` until it is not a timeout, for at most `limit`.
    fn patiently<T>(&mut self, mut read: impl FnMut(&mut Self) -> io::Result<T>) -> io::Result<T> {
        let start = Instant::now();
        loop {
            match read(self) {
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                    self.check_closing()?;
                    if start.elapsed() >= self.limit {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the target stalled in the middle of a PDU",
                        ));
                    }
                }
                other => return other,
            }
        }
    }
}

impl Read for ConnReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.end {
            if out.len() >= self.buf.len() {
                let stream = self.stream;
                return self.patiently(|_| (&mut &*stream).read(out));
            }
            self.patiently(|r| r.fill_once())?;
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn small_reads_come_from_one_recv_and_large_ones_go_straight_through() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let closing = AtomicBool::new(false);
        let mut r = ConnReader::new(&s, Duration::from_secs(5), &closing);
        assert!(!r.wait_for_data().unwrap(), "idle before anything is sent");

        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        w.write_all(b"header-and-data").unwrap();
        assert!(r.wait_for_data().unwrap());
        let mut h = [0u8; 6];
        r.read_exact(&mut h).unwrap();
        assert_eq!(&h, b"header");
        assert_eq!(r.buffered(), b"-and-data");
        r.consume(5);
        let mut d = [0u8; 4];
        r.read_exact(&mut d).unwrap();
        assert_eq!(&d, b"data");

        let writer = std::thread::spawn(move || {
            w.write_all(&big).unwrap();
            (w, big)
        });
        let mut got = vec![0u8; 200_000];
        r.read_exact(&mut got).unwrap();
        let (_w, big) = writer.join().unwrap();
        assert_eq!(got, big);
        assert!(!r.wait_for_data().unwrap());
        closing.store(true, Ordering::SeqCst);
        assert!(
            r.wait_for_data().is_err(),
            "a closing session stops waiting"
        );
    }
}
