//! The initiator against a scripted target that logs in properly and then misbehaves:
//! every misbehaviour ends in an error, never a panic, and never a hang past the
//! timeout the URL gives.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blockdev::iscsi::{IscsiDevice, ReadQueue};
use blockdev::{BlockDevice, BlockError};

/// The error with its sources, as the CLI prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What the scripted target does with the first SCSI command of a connection.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Never answers.
    Silence,
    /// Sends Data-In past the end of the command's buffer.
    DataInPastBuffer,
    /// Announces a data segment far over the negotiated size.
    HugeDataSegment,
    /// Sends 48 random-looking bytes.
    Garbage,
    /// Answers CHECK CONDITION with unreadable sense data.
    BadSense,
    /// Answers READ CAPACITY with a block size of 3 bytes (and everything else GOOD).
    BadCapacity,
    /// Answers with a SCSI Response whose ITT matches nothing, then goes silent.
    UnknownTask,
    /// Sends an R2T for more than the command writes (needs a write: answered on
    /// the first command as if it were one).
    R2tOnRead,
    /// Closes the connection in the middle of a header.
    HalfHeader,
    /// Answers every command GOOD (a 1 MiB LUN of 512-byte blocks) except READ(16),
    /// which it never answers; answers ABORT TASK.
    SilentReads,
    /// The same, but answers the first READ(16) with a UNIT ATTENTION (registrations
    /// preempted) and every later one with its data (bytes 0xab).
    UnitAttentionOnFirstRead,
}

fn header(opcode: u8, flags: u8, itt: u32, data_len: u32) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = opcode;
    b[1] = flags;
    b[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[28..32].copy_from_slice(&1u32.to_be_bytes()); // ExpCmdSN
    b[32..36].copy_from_slice(&64u32.to_be_bytes()); // MaxCmdSN
    b
}

fn read_pdu(s: &mut TcpStream) -> std::io::Result<([u8; 48], Vec<u8>)> {
    let mut h = [0u8; 48];
    s.read_exact(&mut h)?;
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    let mut data = vec![0u8; len.div_ceil(4) * 4];
    s.read_exact(&mut data)?;
    Ok((h, data))
}

fn serve(mut s: TcpStream, how: Misbehaviour) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    // Login: answer each request by moving to the stage it asks for.
    let mut stat_sn = 0u32;
    loop {
        let (h, _) = read_pdu(&mut s)?;
        assert_eq!(h[0] & 0x3f, 0x03, "login request expected");
        let nsg = h[1] & 3;
        let mut r = header(0x23, 0x80 | ((h[1] >> 2) & 3) << 2 | nsg, 0, 0);
        r[8..14].copy_from_slice(&h[8..14]);
        r[14..16].copy_from_slice(&7u16.to_be_bytes());
        r[24..28].copy_from_slice(&stat_sn.to_be_bytes());
        stat_sn += 1;
        s.write_all(&r)?;
        if nsg == 3 {
            break;
        }
    }
    let (h, _) = read_pdu(&mut s)?;
    let itt = u32::from_be_bytes(h[16..20].try_into().unwrap());
    match how {
        Misbehaviour::Silence => {
            // Read (and ignore) whatever comes, ABORT TASK included, until closed.
            while read_pdu(&mut s).is_ok() {}
        }
        Misbehaviour::DataInPastBuffer => {
            let mut d = header(0x25, 0x80, itt, 16);
            d[40..44].copy_from_slice(&1_000_000u32.to_be_bytes());
            s.write_all(&d)?;
            s.write_all(&[0u8; 16])?;
        }
        Misbehaviour::HugeDataSegment => {
            s.write_all(&header(0x21, 0x80, itt, 0x00ff_ffff))?;
        }
        Misbehaviour::Garbage => {
            let g: Vec<u8> = (0..48u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            s.write_all(&g)?;
        }
        Misbehaviour::BadSense => {
            let mut r = header(0x21, 0x80, itt, 6);
            r[3] = 0x02;
            s.write_all(&r)?;
            s.write_all(&[0, 4, 0x10, 0, 0, 0, 0, 0])?;
        }
        Misbehaviour::BadCapacity => answer_commands(s, h, 3, None)?,
        Misbehaviour::SilentReads => answer_commands(s, h, 512, None)?,
        Misbehaviour::UnitAttentionOnFirstRead => {
            answer_commands(s, h, 512, Some([0x06, 0x2a, 0x03]))?
        }
        Misbehaviour::UnknownTask => {
            s.write_all(&header(0x21, 0x80, itt ^ 0x5555, 0))?;
            while read_pdu(&mut s).is_ok() {}
        }
        Misbehaviour::R2tOnRead => {
            let mut r = header(0x31, 0x80, itt, 0);
            r[44..48].copy_from_slice(&4096u32.to_be_bytes());
            s.write_all(&r)?;
            while read_pdu(&mut s).is_ok() {}
        }
        Misbehaviour::HalfHeader => {
            s.write_all(&header(0x21, 0x80, itt, 0)[..20])?;
        }
    }
    Ok(())
}

/// Answers GOOD to every command from `first` on, with data for INQUIRY and READ
/// CAPACITY (blocks of `block_size`, 2048 of them); answers ABORT TASK "function
/// complete". READ(16): never answered without `first_read_sense`; with it (sense key,
/// ASC, ASCQ), the first is answered CHECK CONDITION with that sense and the others
/// with data.
fn answer_commands(
    mut s: TcpStream,
    first: [u8; 48],
    block_size: u32,
    mut first_read_sense: Option<[u8; 3]>,
) -> std::io::Result<()> {
    let answer_reads = first_read_sense.is_some();
    let mut h = first;
    loop {
        let itt = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let data: Vec<u8> = match (h[0] & 0x3f, h[32]) {
            (0x02, _) => {
                // ABORT TASK: done (the task is forgotten).
                s.write_all(&header(0x22, 0x80, itt, 0))?;
                h = read_pdu(&mut s)?.0;
                continue;
            }
            (_, 0x88) if !answer_reads => {
                h = read_pdu(&mut s)?.0;
                continue;
            }
            (_, 0x88) => {
                if let Some([key, asc, ascq]) = first_read_sense.take() {
                    let mut r = header(0x21, 0x80, itt, 20);
                    r[3] = 0x02; // CHECK CONDITION
                    s.write_all(&r)?;
                    let mut sense = vec![0u8, 18, 0x70, 0, key];
                    sense.resize(20, 0);
                    sense[14] = asc;
                    sense[15] = ascq;
                    s.write_all(&sense)?;
                    h = read_pdu(&mut s)?.0;
                    continue;
                }
                let expected = u32::from_be_bytes(h[20..24].try_into().unwrap()) as usize;
                vec![0xab; expected]
            }
            (_, 0x12) => {
                let mut d = vec![0u8; 36];
                d[8..12].copy_from_slice(b"TEST");
                d
            }
            (_, 0x9e) => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&2047u64.to_be_bytes());
                d[8..12].copy_from_slice(&block_size.to_be_bytes());
                d
            }
            _ => Vec::new(),
        };
        if data.is_empty() {
            s.write_all(&header(0x21, 0x80, itt, 0))?;
        } else {
            s.write_all(&header(0x25, 0x81, itt, data.len() as u32))?;
            s.write_all(&data)?;
        }
        h = read_pdu(&mut s)?.0;
    }
}

/// A scripted target on a free port; it serves every connection the same way.
struct ScriptedTarget {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl ScriptedTarget {
    fn start(how: Misbehaviour) -> ScriptedTarget {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || {
                            let _ = serve(s, how);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ScriptedTarget { port, stop }
    }
}

impl Drop for ScriptedTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn every_misbehaviour_is_an_error_within_the_timeout() {
    let timeout = 2;
    let scenarios = [
        Misbehaviour::Silence,
        Misbehaviour::DataInPastBuffer,
        Misbehaviour::HugeDataSegment,
        Misbehaviour::Garbage,
        Misbehaviour::BadSense,
        Misbehaviour::BadCapacity,
        Misbehaviour::UnknownTask,
        Misbehaviour::R2tOnRead,
        Misbehaviour::HalfHeader,
    ];
    let handles: Vec<_> = scenarios
        .into_iter()
        .map(|how| {
            std::thread::spawn(move || {
                let t = ScriptedTarget::start(how);
                let url = format!(
                    "iscsi://127.0.0.1:{}/iqn.2026-11.io.csvfs:hostile/1?timeout={timeout}",
                    t.port
                );
                let start = Instant::now();
                let r = IscsiDevice::open(&url);
                let took = start.elapsed();
                let err = r.expect_err("a misbehaving target must not give a working device");
                // The open runs up to three commands, each with its own timeout, and a
                // timed-out command waits up to 5 s for its ABORT TASK.
                assert!(
                    took < Duration::from_secs(3 * (timeout + 6)),
                    "{how:?}: took {took:?}"
                );
                println!("{how:?}: {} (after {took:?})", chain(&err));
                (how, err)
            })
        })
        .collect();
    for h in handles {
        let (how, err) = h.join().expect("no panic");
        let text = chain(&err);
        assert!(!text.is_empty(), "{how:?}");
        if matches!(how, Misbehaviour::BadCapacity) {
            assert!(text.contains("block size"), "{how:?}: {text}");
        }
        if matches!(how, Misbehaviour::Silence) {
            assert!(
                matches!(&err, BlockError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
                "{how:?}: {err:?}"
            );
        }
    }
}

#[test]
fn a_refused_login_says_why() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let (h, _) = read_pdu(&mut s).unwrap();
        let mut r = header(0x23, 0, 0, 0);
        r[8..14].copy_from_slice(&h[8..14]);
        r[36] = 2; // initiator error
        r[37] = 3; // target not found
        s.write_all(&r).unwrap();
        let _ = read_pdu(&mut s);
    });
    let err = IscsiDevice::open(&format!("iscsi://127.0.0.1:{port}/iqn.nope/1?timeout=2"))
        .expect_err("refused");
    assert!(chain(&err).contains("does not exist"), "{}", chain(&err));
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = IscsiDevice::open(&format!("iscsi://127.0.0.1:{port}/iqn.x/1?timeout=2"))
        .expect_err("nobody there");
    assert!(chain(&err).contains("connect"), "{}", chain(&err));
}

/// A target that pings with a NOP-In before it answers: the initiator answers with a
/// NOP-Out carrying the target's transfer tag, and the command completes.
#[test]
fn a_target_ping_is_answered() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let target = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Login in one step to the full feature phase.
        let (h, _) = read_pdu(&mut s).unwrap();
        let mut r = header(0x23, 0x80 | 0x03, 0, 0);
        r[8..14].copy_from_slice(&h[8..14]);
        s.write_all(&r).unwrap();
        let (h, _) = read_pdu(&mut s).unwrap();
        let itt = u32::from_be_bytes(h[16..20].try_into().unwrap());
        // Ping, and expect the answer before anything else.
        let mut nop = header(0x20, 0x80, 0xffff_ffff, 0);
        nop[20..24].copy_from_slice(&0x1234u32.to_be_bytes());
        s.write_all(&nop).unwrap();
        let (answer, _) = read_pdu(&mut s).unwrap();
        assert_eq!(answer[0] & 0x3f, 0x00, "a NOP-Out");
        assert_eq!(&answer[16..20], &[0xff; 4], "with the reserved task tag");
        assert_eq!(
            &answer[20..24],
            &0x1234u32.to_be_bytes(),
            "and the target's tag"
        );
        // Then fail the command cleanly, which ends the open.
        let mut resp = header(0x21, 0x80, itt, 20);
        resp[3] = 0x02;
        s.write_all(&resp).unwrap();
        let mut sense = vec![0u8, 18, 0x70, 0, 0x05];
        sense.resize(20, 0);
        sense[14] = 0x20;
        s.write_all(&sense).unwrap();
        let _ = read_pdu(&mut s);
    });
    let err = IscsiDevice::open(&format!("iscsi://127.0.0.1:{port}/iqn.t/1?timeout=5"))
        .expect_err("the command was failed");
    assert!(chain(&err).contains("ILLEGAL REQUEST"), "{}", chain(&err));
    target.join().expect("the target saw the NOP-Out");
}

/// Reads kept out through the read queue that the target never answers each end with
/// a timeout (after ABORT TASK) within the URL's timeout and a little, not a hang; the
/// session goes on serving other commands.
#[test]
fn unanswered_queued_reads_time_out() {
    let t = ScriptedTarget::start(Misbehaviour::SilentReads);
    let timeout = 2;
    let url = format!(
        "iscsi://127.0.0.1:{}/iqn.2026-11.io.csvfs:hostile/1?timeout={timeout}",
        t.port
    );
    let dev = IscsiDevice::open(&url).expect("everything but reads is answered");
    let q = ReadQueue::new(&dev);
    let start = Instant::now();
    for token in 0..4u64 {
        q.submit(token, token * 4096, vec![0u8; 4096])
            .map_err(|(_, e)| e)
            .unwrap();
    }
    let mut ended = Vec::new();
    while let Some(r) = q.next() {
        let err = r.result.expect_err("never answered");
        assert!(
            matches!(&err, BlockError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
            "read {}: {err:?}",
            r.token
        );
        assert!(chain(&err).contains("aborted"), "{}", chain(&err));
        assert_eq!(r.buffer.len(), 4096, "the buffer comes back");
        ended.push(r.token);
    }
    let took = start.elapsed();
    ended.sort_unstable();
    assert_eq!(ended, vec![0, 1, 2, 3]);
    assert!(took >= Duration::from_secs(timeout), "{took:?}");
    assert!(took < Duration::from_secs(timeout + 4), "{took:?}");
    dev.test_unit_ready()
        .expect("the session still serves commands");
    println!("4 unanswered queued reads ended TimedOut after {took:?}");
}

/// A UNIT ATTENTION that a queued read meets is noted as on the synchronous path (the
/// path generation moves: the registration may be gone) before the read is sent again;
/// the read then returns its data.
#[test]
fn a_unit_attention_on_a_queued_read_is_noted() {
    let t = ScriptedTarget::start(Misbehaviour::UnitAttentionOnFirstRead);
    let url = format!(
        "iscsi://127.0.0.1:{}/iqn.2026-11.io.csvfs:hostile/1?timeout=5",
        t.port
    );
    let dev = IscsiDevice::open(&url).expect("the target answers");
    let before = dev.path_generation();
    let q = ReadQueue::new(&dev);
    q.submit(1, 4096, vec![0u8; 4096])
        .map_err(|(_, e)| e)
        .unwrap();
    let r = q.next().expect("the read ends");
    r.result.expect("read again after the UNIT ATTENTION");
    assert!(r.buffer.iter().all(|&b| b == 0xab), "the data");
    assert_eq!(q.read_again(), 1);
    assert_eq!(
        dev.path_generation(),
        before + 1,
        "the UNIT ATTENTION (registrations preempted) counts"
    );
}
