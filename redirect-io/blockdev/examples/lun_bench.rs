//! Measures a LUN (an image file, a block device or an iscsi:// URL) the way csvfs
//! uses it: N threads, each issuing one synchronous I/O at a time (queue depth N), for
//! a fixed time; or, with `--engine queue` (reads from an iscsi:// LUN), one thread
//! keeping N reads outstanding through the initiator's read queue, as an asynchronous
//! initiator (libiscsi's iscsi-perf, fio's libaio) does. Prints one machine-readable
//! line:
//!
//! ```text
//! pattern=randread bs=4096 depth=32 seconds=10.00 ops=123456 MiB/s=48.2 IOPS=12345
//! ```
//!
//! `cargo run --release -p blockdev --example lun_bench -- LUN --pattern randread
//! --bs 4096 --depth 32 --seconds 10`. Random I/O goes to random `bs`-aligned offsets
//! within the span (default: the whole LUN, at most 1 GiB); sequential I/O gives each
//! thread its own slice of the span, read or written in order and wrapping round.
//! Writes are not flushed: the figures include the target's write cache.
//!
//! The write patterns OVERWRITE THE LUN's data: use them on scratch LUNs only.

use std::process::exit;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blockdev::iscsi::{IscsiDevice, ReadQueue};
use blockdev::{AlignedBuf, BlockDevice, open_lun};

const USAGE: &str = "\
usage: lun_bench LUN --pattern randread|randwrite|seqread|seqwrite --bs BYTES
                 --depth N --seconds S [--span BYTES] [--engine threads|queue]
(BYTES may end in K, M or G: 4K, 1M, 2G)

Runs N threads, each doing one I/O of BYTES at a time, for S seconds (--engine
queue, reads from an iscsi:// LUN only: one thread keeping N reads out), and prints
pattern=.. bs=.. depth=.. seconds=.. ops=.. MiB/s=.. IOPS=..
LUN is an image file, a block device or iscsi://HOST[:PORT]/IQN/LUN[?initiator=NAME].
Random offsets fall in the first BYTES of the LUN (--span, default the whole LUN up
to 1 GiB); sequential I/O gives each thread its own slice of that span.
WARNING: randwrite and seqwrite overwrite the LUN's data. Use a scratch LUN.";

/// The default span is the whole LUN, but no more than this.
const DEFAULT_SPAN_CAP: u64 = 1 << 30;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::RandRead => "randread",
            Pattern::RandWrite => "randwrite",
            Pattern::SeqRead => "seqread",
            Pattern::SeqWrite => "seqwrite",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Pattern::RandWrite | Pattern::SeqWrite)
    }

    fn random(self) -> bool {
        matches!(self, Pattern::RandRead | Pattern::RandWrite)
    }
}

struct Args {
    lun: String,
    pattern: Pattern,
    bs: u64,
    depth: usize,
    seconds: f64,
    span: Option<u64>,
    queue: bool,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("lun_bench: {msg}");
    exit(1);
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}

/// A byte count: a number with an optional K, M or G suffix (powers of 1024).
fn parse_bytes(v: &str) -> Option<u64> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse_args() -> Args {
    let mut lun = None;
    let (mut pattern, mut bs, mut depth, mut seconds, mut span) = (None, None, None, None, None);
    let mut queue = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "-h" || a == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        if !a.starts_with("--") {
            if lun.replace(a).is_some() {
                fail(format!("more than one LUN given\n{USAGE}"));
            }
            continue;
        }
        let Some(v) = it.next() else {
            fail(format!("{a} needs a value\n{USAGE}"));
        };
        let num = |v: &str| -> u64 {
            parse_bytes(v).unwrap_or_else(|| fail(format!("{a}: not a number: {v}")))
        };
        match a.as_str() {
            "--pattern" => {
                pattern = Some(match v.as_str() {
                    "randread" => Pattern::RandRead,
                    "randwrite" => Pattern::RandWrite,
                    "seqread" => Pattern::SeqRead,
                    "seqwrite" => Pattern::SeqWrite,
                    _ => fail(format!("unknown pattern {v}\n{USAGE}")),
                })
            }
            "--bs" => bs = Some(num(&v)),
            "--depth" => depth = Some(num(&v) as usize),
            "--seconds" => {
                seconds = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|s| *s > 0.0)
                        .unwrap_or_else(|| fail(format!("--seconds: not a positive number: {v}"))),
                )
            }
            "--span" => span = Some(num(&v)),
            "--engine" => {
                queue = match v.as_str() {
                    "threads" => false,
                    "queue" => true,
                    _ => fail(format!("unknown engine {v}\n{USAGE}")),
                }
            }
            _ => fail(format!("unknown option {a}\n{USAGE}")),
        }
    }
    let missing = |what: &str| -> ! { fail(format!("{what} is required\n{USAGE}")) };
    let args = Args {
        lun: lun.unwrap_or_else(|| missing("LUN")),
        pattern: pattern.unwrap_or_else(|| missing("--pattern")),
        bs: bs.unwrap_or_else(|| missing("--bs")),
        depth: depth.unwrap_or_else(|| missing("--depth")),
        seconds: seconds.unwrap_or_else(|| missing("--seconds")),
        span,
        queue,
    };
    if args.bs == 0 || args.depth == 0 {
        fail("--bs and --depth must be at least 1");
    }
    if args.queue && (args.pattern.writes() || !args.lun.starts_with("iscsi://")) {
        fail("--engine queue reads from an iscsi:// LUN only");
    }
    args
}

/// SplitMix64: random offsets without a dependency; quality is not the point.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One thread's loop: I/O until `deadline` or until another thread failed. Returns
/// the number of I/Os done.
fn worker(
    dev: &dyn BlockDevice,
    a: &Args,
    span: u64,
    index: u64,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<u64, blockdev::BlockError> {
    let mut buf = AlignedBuf::zeroed(a.bs as usize);
    if a.pattern.writes() {
        // Non-zero data that differs by thread, so the target cannot treat it as zeroes.
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((i as u64 + index * 7) % 251 + 1) as u8;
        }
    }
    let mut offsets = Offsets::new(a, span, index);
    let mut ops = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let offset = offsets.next(index, ops);
        if a.pattern.writes() {
            dev.write_at(&buf, offset)?;
        } else {
            dev.read_at(&mut buf, offset)?;
        }
        ops += 1;
    }
    Ok(ops)
}

/// Where I/O number `n` of slot `index` goes: a random block, or the slot's next one.
struct Offsets {
    random: bool,
    bs: u64,
    blocks: u64,
    slice: u64,
    rng: Rng,
}

impl Offsets {
    fn new(a: &Args, span: u64, seed: u64) -> Offsets {
        let blocks = span / a.bs;
        Offsets {
            random: a.pattern.random(),
            bs: a.bs,
            blocks,
            slice: blocks / a.depth as u64,
            rng: Rng(seed ^ std::process::id() as u64 ^ 0x5eed),
        }
    }

    fn next(&mut self, index: u64, n: u64) -> u64 {
        let block = if self.random {
            self.rng.next() % self.blocks
        } else {
            index * self.slice + n % self.slice
        };
        block * self.bs
    }
}

/// The queue engine: one thread keeping `a.depth` reads out until `deadline`.
/// Returns the number of reads done.
fn queued(
    dev: &IscsiDevice,
    a: &Args,
    span: u64,
    deadline: Instant,
) -> Result<u64, blockdev::BlockError> {
    let q = ReadQueue::new(dev);
    let mut offsets = Offsets::new(a, span, 0);
    let mut done_per_slot = vec![0u64; a.depth];
    for slot in 0..a.depth as u64 {
        let offset = offsets.next(slot, 0);
        q.submit(slot, offset, vec![0u8; a.bs as usize])
            .map_err(|(_, e)| e)?;
    }
    let mut ops = 0;
    while let Some(r) = q.next() {
        r.result?;
        ops += 1;
        let slot = r.token;
        done_per_slot[slot as usize] += 1;
        if Instant::now() < deadline {
            let offset = offsets.next(slot, done_per_slot[slot as usize]);
            q.submit(slot, offset, r.buffer).map_err(|(_, e)| e)?;
        }
    }
    Ok(ops)
}

fn main() {
    let a = parse_args();
    let iscsi = a
        .queue
        .then(|| IscsiDevice::open(&a.lun).unwrap_or_else(|e| fail(chain(&e))));
    let opened;
    let dev: &dyn BlockDevice = match &iscsi {
        Some(d) => d,
        None => {
            opened = open_lun(&a.lun, false).unwrap_or_else(|e| fail(chain(&e)));
            &*opened
        }
    };
    let block_size = u64::from(dev.block_size());
    if !a.bs.is_multiple_of(block_size) {
        fail(format!(
            "--bs {} is not a multiple of the LUN's {block_size}-byte blocks",
            a.bs
        ));
    }
    if let Some(s) = a.span.filter(|s| *s > dev.capacity()) {
        fail(format!(
            "--span {s} is larger than the LUN ({} bytes)",
            dev.capacity()
        ));
    }
    let span = a.span.unwrap_or(dev.capacity().min(DEFAULT_SPAN_CAP));
    let per_thread = if a.pattern.random() {
        1
    } else {
        a.depth as u64
    };
    if span / a.bs < per_thread {
        fail(format!(
            "a span of {span} bytes holds too few {}-byte blocks for {} threads",
            a.bs, a.depth
        ));
    }

    let stop = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.seconds);
    let ops: u64 = if let Some(d) = &iscsi {
        queued(d, &a, span, deadline).unwrap_or_else(|e| fail(chain(&e)))
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..a.depth as u64)
                .map(|i| {
                    let (a, stop, first_error) = (&a, &stop, &first_error);
                    s.spawn(move || match worker(dev, a, span, i, deadline, stop) {
                        Ok(n) => n,
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            first_error.lock().expect("no panics").get_or_insert(e);
                            0
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker panicked"))
                .sum()
        })
    };
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(e) = first_error.into_inner().expect("no panics") {
        fail(chain(&e));
    }
    let iops = ops as f64 / elapsed;
    println!(
        "pattern={} bs={} depth={} seconds={elapsed:.2} ops={ops} MiB/s={:.1} IOPS={iops:.0}",
        a.pattern.name(),
        a.bs,
        a.depth,
        iops * a.bs as f64 / f64::from(1 << 20),
    );
}
