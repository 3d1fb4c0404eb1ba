//! Reads kept outstanding by one thread (`blockdev::iscsi::ReadQueue`) against a real
//! tgtd: every read returns the data on the LUN at its offset, bad submissions come
//! back with their buffers, and reads in flight when the TCP connection is cut are
//! read again after the reconnect, each still returning the right data.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use blockdev::iscsi::{IscsiDevice, ReadQueue};
use blockdev::{AlignedBuf, BlockDevice, BlockError, FileDevice};
use csvfs_tests::Scratch;
use csvfs_tests::tcp_cut::TcpCutter;
use csvfs_tests::tgtd::{Tgtd, TgtdOptions};

const BLOCK: u64 = 4096;
const BLOCKS: u64 = 1024;

/// Block `n`'s content: its number and a checksum-ish word in every 16 bytes.
fn content(n: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    for (i, c) in b.chunks_exact_mut(16).enumerate() {
        c[..8].copy_from_slice(&n.to_le_bytes());
        c[8..].copy_from_slice(&(n * 7919 + i as u64).to_le_bytes());
    }
    b
}

/// A 4 MiB LUN on a private tgtd, each block written with [`content`].
fn filled_lun(s: &Scratch) -> Tgtd {
    let img = s.path("lun.img");
    FileDevice::create_image(&img, BLOCKS * BLOCK).unwrap();
    let t = Tgtd::start(&img, TgtdOptions::default());
    let dev = IscsiDevice::open(&format!(
        "{}?initiator=iqn.2026-11.io.csvfs.test:fill",
        t.url()
    ))
    .unwrap();
    let mut buf = AlignedBuf::zeroed((64 * BLOCK) as usize);
    for first in (0..BLOCKS).step_by(64) {
        for (i, chunk) in buf.chunks_exact_mut(BLOCK as usize).enumerate() {
            chunk.copy_from_slice(&content(first + i as u64));
        }
        dev.write_at(&buf, first * BLOCK).unwrap();
    }
    dev.flush().unwrap();
    t
}

/// Offsets 0, 7, 14, ... blocks round the LUN: the `i`th read's.
fn offset(i: u64) -> u64 {
    (i * 7 % BLOCKS) * BLOCK
}

/// Keeps `depth` 4 KiB reads out until `total` have ended (calling `during` after each
/// ended read), checking each one's data against its offset. Returns how many ended.
fn read_all(q: &ReadQueue<'_>, depth: u64, total: u64, mut during: impl FnMut(u64)) -> u64 {
    let mut offsets = HashMap::new();
    let mut next = 0u64;
    for token in 0..depth {
        q.submit(token, offset(next), vec![0u8; BLOCK as usize])
            .map_err(|(_, e)| e)
            .unwrap();
        offsets.insert(token, offset(next));
        next += 1;
    }
    let mut ended = 0;
    while let Some(r) = q.next() {
        assert_eq!(
            r.offset, offsets[&r.token],
            "read {} came back for its offset",
            r.token
        );
        r.result
            .unwrap_or_else(|e| panic!("read at {}: {e}", r.offset));
        assert!(
            r.buffer == content(r.offset / BLOCK),
            "the data of block {} is wrong",
            r.offset / BLOCK
        );
        ended += 1;
        during(ended);
        if next < total {
            q.submit(r.token, offset(next), r.buffer)
                .map_err(|(_, e)| e)
                .unwrap();
            offsets.insert(r.token, offset(next));
            next += 1;
        }
    }
    assert_eq!(q.outstanding(), 0);
    ended
}

#[test]
fn queued_reads_return_the_data_at_their_offsets() {
    let s = Scratch::new();
    let t = filled_lun(&s);
    let dev = IscsiDevice::open(&format!(
        "{}?initiator=iqn.2026-11.io.csvfs.test:queue",
        t.url()
    ))
    .unwrap();
    let q = ReadQueue::new(&dev);
    assert_eq!(read_all(&q, 32, 5000, |_| {}), 5000);
    assert_eq!(q.read_again(), 0, "every read was answered GOOD at once");

    // A 1 MiB read, the largest one command moves, fills every block.
    q.submit(1, 0, vec![0u8; 1 << 20])
        .map_err(|(_, e)| e)
        .unwrap();
    let r = q.next().unwrap();
    r.result.unwrap();
    for (i, chunk) in r.buffer.chunks_exact(BLOCK as usize).enumerate() {
        assert!(chunk == content(i as u64), "block {i} of the 1 MiB read");
    }

    // Bad submissions come back at once, with their buffers.
    let refused = |token: u64, off: u64, len: usize| {
        let (buf, e) = q.submit(token, off, vec![7u8; len]).unwrap_err();
        assert_eq!(buf.len(), len, "the buffer comes back");
        e
    };
    assert!(matches!(
        refused(1, 100, 4096),
        BlockError::Unaligned { .. }
    ));
    assert!(matches!(
        refused(1, BLOCKS * BLOCK, 4096),
        BlockError::OutOfRange { .. }
    ));
    let e = refused(1, 0, 2 << 20);
    assert!(e.to_string().contains("at most 1048576 bytes"), "{e}");
    q.submit(9, 0, vec![0u8; 4096]).map_err(|(_, e)| e).unwrap();
    let e = refused(9, 4096, 4096);
    assert!(
        e.to_string().contains("read 9 is already outstanding"),
        "{e}"
    );
    assert!(q.next().unwrap().result.is_ok());
    assert!(q.next().is_none(), "nothing is left outstanding");
}

#[test]
fn queued_reads_in_flight_through_a_cut_connection_are_read_again() {
    let s = Scratch::new();
    let t = filled_lun(&s);
    let cutter = TcpCutter::new(format!("127.0.0.1:{}", t.port()).parse().unwrap());
    let url = t
        .url()
        .replace(&format!(":{}/", t.port()), &format!(":{}/", cutter.port()));
    let dev =
        IscsiDevice::open(&format!("{url}?initiator=iqn.2026-11.io.csvfs.test:qcut")).unwrap();
    let q = ReadQueue::new(&dev);
    let start = Instant::now();
    // Cut the connection twice while 32 reads are out.
    let ended = read_all(&q, 32, 20_000, |n| {
        if n == 3000 || n == 9000 {
            cutter.cut();
        }
    });
    assert_eq!(ended, 20_000);
    assert!(
        cutter.connections_cut() >= 2,
        "the connection was cut twice, {} cuts seen",
        cutter.connections_cut()
    );
    assert!(
        q.read_again() > 0,
        "reads in flight at a cut took the synchronous path again"
    );
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "took {:?}",
        start.elapsed()
    );
    println!(
        "20,000 queued reads through 2 connection cuts in {:?}, every one with the right data; {} read again after a cut",
        start.elapsed(),
        q.read_again()
    );
}
