//! A TCP forwarding proxy on 127.0.0.1 that a test can tell to cut every connection
//! passing through it: the network fault between an initiator and its target.
//!
//! Owns its listener, the connections it forwards and their threads (std threads, two
//! per connection, one per direction). Does not simulate silent loss or delay: a cut
//! shuts the sockets down, so both ends see the connection end at once.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the proxy waits to reach the upstream for a newly accepted connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A forwarding proxy from 127.0.0.1:`port()` to an upstream address, whose open
/// connections can be cut at will. Dropping it stops the listener and closes everything.
pub struct TcpCutter {
    port: u16,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

/// State shared by the handle, the accepting thread and the forwarding threads.
#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    /// Open forwarded connections by id: (client side, upstream side).
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    cut: AtomicUsize,
    forwarders: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpCutter {
    /// Starts forwarding from a free port on 127.0.0.1 to `upstream`.
    pub fn new(upstream: SocketAddr) -> TcpCutter {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        let accept_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("tcp-cut-{port}"))
                .spawn(move || accept_loop(listener, upstream, shared))
                .expect("start the proxy thread")
        };
        TcpCutter {
            port,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// The port the proxy listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The proxy's address, for the client to connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Shuts down, both ways and on both sides, every connection open now. New
    /// connections are still accepted and forwarded afterwards.
    pub fn cut(&self) {
        let n = self.shared.shut_all();
        self.shared.cut.fetch_add(n, Ordering::SeqCst);
    }

    /// How many connections `cut` has shut down so far.
    pub fn connections_cut(&self) -> usize {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// How many forwarded connections are open now.
    pub fn connections_open(&self) -> usize {
        self.shared.open.lock().expect("connection table").len()
    }
}

impl Drop for TcpCutter {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept; it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        self.shared.shut_all();
        let forwarders = std::mem::take(&mut *self.shared.forwarders.lock().expect("threads"));
        for t in forwarders {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// Shuts down and forgets every open connection; returns how many there were.
    fn shut_all(&self) -> usize {
        let open = std::mem::take(&mut *self.open.lock().expect("connection table"));
        for (client, upstream) in open.values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
        open.len()
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) else {
            // The client sees its connection closed, as if the upstream refused it.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        let (Ok(c1), Ok(c2), Ok(s1), Ok(s2)) = (
            client.try_clone(),
            client.try_clone(),
            server.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        shared
            .open
            .lock()
            .expect("connection table")
            .insert(id, (client, server));
        let finished = Arc::new(AtomicU8::new(0));
        let mut threads = shared.forwarders.lock().expect("threads");
        threads.retain(|t| !t.is_finished());
        for (from, to, direction) in [(c1, s1, "up"), (s2, c2, "down")] {
            let shared = Arc::clone(&shared);
            let finished = Arc::clone(&finished);
            let t = std::thread::Builder::new()
                .name(format!("tcp-cut-{id}-{direction}"))
                .spawn(move || {
                    forward(from, to);
                    // The second direction to finish retires the connection.
                    if finished.fetch_add(1, Ordering::SeqCst) == 1 {
                        shared.open.lock().expect("connection table").remove(&id);
                    }
                })
                .expect("start a forwarding thread");
            threads.push(t);
        }
    }
}

/// Copies `from` to `to` until end of stream, then passes the half-close on. An error
/// on either side ends the whole connection.
fn forward(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on a free port of 127.0.0.1; it echoes each connection until its
    /// end of stream, then closes it.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut reader = conn.try_clone().expect("clone");
                    let _ = std::io::copy(&mut reader, &mut conn);
                });
            }
        });
        addr
    }

    fn connect(cutter: &TcpCutter) -> TcpStream {
        let s = TcpStream::connect(cutter.addr()).expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        s
    }

    fn echo(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).expect("write through the proxy");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).expect("read the echo");
        assert_eq!(back, msg);
    }

    /// True when the stream is ended: end of stream or an error, not a timeout.
    fn is_ended(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn forwards_both_ways() {
        let cutter = TcpCutter::new(echo_server());
        let mut s = connect(&cutter);
        echo(&mut s, b"hello");
        echo(&mut s, b"again");
        assert_eq!(cutter.connections_cut(), 0);
        assert_eq!(cutter.connections_open(), 1);
    }

    #[test]
    fn forwards_a_large_stream_without_stalling() {
        let cutter = TcpCutter::new(echo_server());
        let s = connect(&cutter);
        let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut writer = s.try_clone().expect("clone");
        let sent = data.clone();
        let w = std::thread::spawn(move || {
            writer.write_all(&sent).expect("write");
            writer.shutdown(Shutdown::Write).expect("half-close");
        });
        let mut back = Vec::new();
        let mut reader = s;
        reader.read_to_end(&mut back).expect("read all");
        w.join().expect("writer");
        assert!(back == data, "the echo differs from what was sent");
        // Both ends closed: the proxy forgets the connection.
        wait_until("the finished connection is not retired", || {
            cutter.connections_open() == 0
        });
    }

    #[test]
    fn cut_ends_open_connections_and_new_ones_still_work() {
        let cutter = TcpCutter::new(echo_server());
        let mut a = connect(&cutter);
        let mut b = connect(&cutter);
        echo(&mut a, b"a");
        echo(&mut b, b"b");
        cutter.cut();
        assert_eq!(cutter.connections_cut(), 2);
        assert!(is_ended(&mut a), "connection a survived the cut");
        assert!(is_ended(&mut b), "connection b survived the cut");
        let mut c = connect(&cutter);
        echo(&mut c, b"after the cut");
        assert_eq!(cutter.connections_cut(), 2);
        cutter.cut();
        assert_eq!(cutter.connections_cut(), 3);
        assert!(is_ended(&mut c), "connection c survived the second cut");
    }

    #[test]
    fn cut_with_nothing_open_cuts_nothing() {
        let cutter = TcpCutter::new(echo_server());
        cutter.cut();
        assert_eq!(cutter.connections_cut(), 0);
        let mut s = connect(&cutter);
        echo(&mut s, b"still serving");
    }

    #[test]
    fn drop_closes_connections_and_the_listener() {
        let cutter = TcpCutter::new(echo_server());
        let addr = cutter.addr();
        let mut s = connect(&cutter);
        echo(&mut s, b"x");
        drop(cutter);
        assert!(is_ended(&mut s), "the connection outlived the proxy");
        assert!(
            TcpStream::connect(addr).is_err(),
            "the proxy still accepts connections after drop"
        );
    }

    #[test]
    fn unreachable_upstream_closes_the_client() {
        // A port that was free a moment ago: nothing listens there.
        let dead = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind")
            .local_addr()
            .expect("address");
        let cutter = TcpCutter::new(dead);
        let mut s = connect(&cutter);
        assert!(
            is_ended(&mut s),
            "the client was not told the upstream is gone"
        );
        assert_eq!(cutter.connections_open(), 0);
    }
}
