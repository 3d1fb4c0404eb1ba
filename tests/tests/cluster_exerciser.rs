//! The cross-node exerciser: seeded random operations on one file, each through a
//! randomly chosen node's mount, every read checked against a model of the file.
//!
//! Each node keeps the file open the whole run (writes, reads, truncates, fallocate
//! in its four modes and fsync go through those descriptors, so the file is open for
//! writing on three nodes at once); mmap reads and writes map the file through a
//! fresh open, read or write the mapping, msync, unmap and close (the other nodes'
//! kernels see mapped data with close-to-open coherence until the lease recalls come).
//!
//! `CSVFS_XNODE_OPS` operations (CI: 3,000; the long check: 100,000), seed
//! `CSVFS_XNODE_SEED` (default 1).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csvfs_tests::cluster::Cluster;
use csvfs_tests::{Scratch, env_number, require_root_and_fuse};

const LABEL: &str = "Volume1";
/// The file stays under this size.
const MAX_SIZE: u64 = 4 << 20;
/// Longest single operation.
const MAX_LEN: u64 = 256 << 10;

/// xorshift64*: the run's only source of randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Write { off: u64, len: u64 },
    Read { off: u64, len: u64 },
    Truncate { size: u64 },
    Fallocate { off: u64, len: u64, mode: i32 },
    MapRead { off: u64, len: u64 },
    MapWrite { off: u64, len: u64 },
    Fsync,
}

fn pick(rng: &mut Rng, size: u64) -> Op {
    let off = |rng: &mut Rng| rng.below(MAX_SIZE);
    let len = |rng: &mut Rng| 1 + rng.below(MAX_LEN);
    match rng.below(100) {
        0..=29 => {
            let off = off(rng);
            Op::Write {
                off,
                len: len(rng).min(MAX_SIZE - off),
            }
        }
        30..=54 => Op::Read {
            off: rng.below(size + 4096),
            len: len(rng),
        },
        55..=59 => Op::Truncate {
            size: rng.below(MAX_SIZE),
        },
        60..=71 => {
            let off = off(rng);
            let len = len(rng).min(MAX_SIZE - off);
            let mode = match rng.below(4) {
                0 => 0,
                1 => libc::FALLOC_FL_KEEP_SIZE,
                2 => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                _ => libc::FALLOC_FL_ZERO_RANGE,
            };
            Op::Fallocate { off, len, mode }
        }
        72..=83 if size > 0 => {
            let off = rng.below(size);
            Op::MapRead {
                off,
                len: (1 + rng.below(MAX_LEN)).min(size - off),
            }
        }
        84..=95 if size > 0 => {
            let off = rng.below(size);
            Op::MapWrite {
                off,
                len: (1 + rng.below(MAX_LEN)).min(size - off),
            }
        }
        _ => Op::Fsync,
    }
}

/// Applies `op` to the model; returns the bytes a read must return.
fn model_apply(model: &mut Vec<u8>, op: Op, data: &[u8]) -> Option<Vec<u8>> {
    let size = model.len() as u64;
    match op {
        Op::Write { off, len } | Op::MapWrite { off, len } => {
            let end = (off + len) as usize;
            if end > model.len() {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(data);
            None
        }
        Op::Read { off, len } | Op::MapRead { off, len } => {
            let end = (off + len).min(size);
            Some(if off >= size {
                Vec::new()
            } else {
                model[off as usize..end as usize].to_vec()
            })
        }
        Op::Truncate { size } => {
            model.resize(size as usize, 0);
            None
        }
        Op::Fallocate { off, len, mode } => {
            let end = off + len;
            let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                let zend = end.min(size);
                if off < zend {
                    model[off as usize..zend as usize].fill(0);
                }
            }
            if !keep && end > size {
                model.resize(end as usize, 0);
            }
            None
        }
        Op::Fsync => None,
    }
}

fn open(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Maps `[off, off+len)` of the file at `path` through a fresh open, reads it or
/// writes `data` into it (then msync), unmaps and closes.
fn map_op(path: &Path, off: u64, len: u64, data: Option<&[u8]>) -> Vec<u8> {
    let f = open(path);
    let page = 4096u64;
    let start = off / page * page;
    let maplen = (off + len - start) as usize;
    let prot = libc::PROT_READ | if data.is_some() { libc::PROT_WRITE } else { 0 };
    // SAFETY: a shared mapping of a file this function opened, inside its size (the
    // caller keeps off + len within it); unmapped before return.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            maplen,
            prot,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as i64,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let at = (p as *mut u8).add((off - start) as usize);
        let out = match data {
            Some(d) => {
                std::ptr::copy_nonoverlapping(d.as_ptr(), at, d.len());
                assert_eq!(libc::msync(p, maplen, libc::MS_SYNC), 0, "msync");
                Vec::new()
            }
            None => std::slice::from_raw_parts(at, len as usize).to_vec(),
        };
        libc::munmap(p, maplen);
        out
    }
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) {
    // SAFETY: fallocate on a descriptor this test owns.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    assert_eq!(
        rc,
        0,
        "fallocate mode {mode:#x}: {}",
        std::io::Error::last_os_error()
    );
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).position(|(x, y)| x != y);
    format!(
        "lengths {} and {}, first difference at {at:?}",
        a.len(),
        b.len()
    )
}

#[test]
fn random_operations_through_random_nodes_match_the_model() {
    require_root_and_fuse();
    let s = Scratch::new();
    let (_t, c) = Cluster::on_tgtd(&s, 3, LABEL, 512 << 20);
    let (coord, _) = c.wait_for_coordinator(&[0, 1, 2], 0, Duration::from_secs(30));
    c.wait_for_followers(&[0, 1, 2], coord, Duration::from_secs(10));
    let paths: Vec<PathBuf> = c
        .nodes
        .iter()
        .map(|n| {
            n.wait_mounted(LABEL, Duration::from_secs(20))
                .join("exercised")
        })
        .collect();
    std::fs::write(&paths[0], b"").unwrap();
    let files: Vec<File> = paths.iter().map(|p| open(p)).collect();

    let ops = env_number("CSVFS_XNODE_OPS", 3_000);
    let seed = env_number("CSVFS_XNODE_SEED", 1);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut model: Vec<u8> = Vec::new();
    let mut counts = [0u64; 3];
    let started = Instant::now();
    for i in 0..ops {
        let n = rng.below(3) as usize;
        counts[n] += 1;
        let op = pick(&mut rng, model.len() as u64);
        let data: Vec<u8> = match op {
            Op::Write { len, .. } | Op::MapWrite { len, .. } => {
                let b = rng.next() as u8;
                (0..len)
                    .map(|k| b.wrapping_add((k * 7 + k / 4096) as u8))
                    .collect()
            }
            _ => Vec::new(),
        };
        let want = model_apply(&mut model, op, &data);
        let f = &files[n];
        let got = match op {
            Op::Write { off, .. } => {
                f.write_all_at(&data, off).unwrap();
                None
            }
            Op::Read { off, len } => {
                let mut buf = vec![0u8; len as usize];
                let mut done = 0;
                while done < buf.len() {
                    let k = f.read_at(&mut buf[done..], off + done as u64).unwrap();
                    if k == 0 {
                        break;
                    }
                    done += k;
                }
                buf.truncate(done);
                Some(buf)
            }
            Op::Truncate { size } => {
                f.set_len(size).unwrap();
                None
            }
            Op::Fallocate { off, len, mode } => {
                fallocate(f, mode, off, len);
                None
            }
            Op::MapRead { off, len } => Some(map_op(&paths[n], off, len, None)),
            Op::MapWrite { off, len } => {
                map_op(&paths[n], off, len, Some(&data));
                None
            }
            Op::Fsync => {
                f.sync_all().unwrap();
                None
            }
        };
        if let (Some(want), Some(got)) = (want, got) {
            assert!(
                want == got,
                "seed {seed}, operation {i}: {op:?} on n{} read wrong bytes ({})",
                n + 1,
                first_difference(&want, &got)
            );
        }
        if i % 500 == 499 || i + 1 == ops {
            for (k, p) in paths.iter().enumerate() {
                let whole = std::fs::read(p).unwrap();
                assert!(
                    whole == model,
                    "seed {seed}, after operation {i}: the whole file read on n{} differs ({})",
                    k + 1,
                    first_difference(&model, &whole)
                );
            }
        }
    }
    println!(
        "cross-node exerciser, seed {seed}: {ops} operations (n1 {}, n2 {}, n3 {}) in {:.1} s, 0 mismatches; final size {}",
        counts[0],
        counts[1],
        counts[2],
        started.elapsed().as_secs_f64(),
        model.len()
    );
}
