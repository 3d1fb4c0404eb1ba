//! Crash safety on a real mount: the daemon is SIGKILLed at random moments of a mixed
//! workload (creates, writes, truncates, renames, unlinks, fsyncs), `CSVFS_CRASH_ROUNDS`
//! times (50 by default). After each crash fsck must be clean, and every file that no
//! operation touched after the last fsync that returned must hold exactly what the
//! model says (or be absent, as the model says).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csvfs_tests::*;

const NAMES: usize = 24;

/// A tiny deterministic generator, so a failing round can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Model {
    /// Expected content of each name (None: absent).
    content: HashMap<usize, Option<Vec<u8>>>,
    /// Index of the last operation that touched each name.
    touched: HashMap<usize, u64>,
    /// Index of the last fsync that returned.
    synced: u64,
    /// (op, kind, name, detail) of every operation, for failure reports.
    history: Vec<(u64, u64, usize, String)>,
}

fn name(root: &Path, i: usize) -> PathBuf {
    root.join(if i.is_multiple_of(2) { "a" } else { "b" })
        .join(format!("f{i}"))
}

/// Runs operations until one fails (the daemon died) or `stop` is set.
fn workload(root: PathBuf, model: Arc<Mutex<Model>>, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed | 1);
    let mut op = { model.lock().unwrap().synced + 1 };
    while !stop.load(Ordering::SeqCst) {
        op += 1;
        let i = rng.below(NAMES as u64) as usize;
        let p = name(&root, i);
        let kind = rng.below(10);
        // Mark first: a name touched by an operation in flight is not checked.
        let current = {
            let mut m = model.lock().unwrap();
            if kind != 9 {
                m.touched.insert(i, op);
            }
            m.content.get(&i).cloned().flatten()
        };
        let result: std::io::Result<Option<Option<Vec<u8>>>> = (|| match kind {
            0..=3 => {
                let len = rng.below(300_000) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                std::fs::write(&p, &data)?;
                Ok(Some(Some(data)))
            }
            4 => {
                let Some(mut c) = current else {
                    return Ok(None);
                };
                let at = rng.below(c.len() as u64 + 1) as usize;
                let add: Vec<u8> = (0..rng.below(50_000)).map(|_| rng.next() as u8).collect();
                let f = std::fs::OpenOptions::new().write(true).open(&p)?;
                std::os::unix::fs::FileExt::write_all_at(&f, &add, at as u64)?;
                if c.len() < at + add.len() {
                    c.resize(at + add.len(), 0);
                }
                c[at..at + add.len()].copy_from_slice(&add);
                Ok(Some(Some(c)))
            }
            5 => {
                let Some(mut c) = current else {
                    return Ok(None);
                };
                let len = rng.below(c.len() as u64 * 2 + 1) as usize;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)?
                    .set_len(len as u64)?;
                c.resize(len, 0);
                Ok(Some(Some(c)))
            }
            6 => {
                if current.is_none() {
                    return Ok(None);
                }
                std::fs::remove_file(&p)?;
                Ok(Some(None))
            }
            7 => {
                // Rename i over j.
                let j = rng.below(NAMES as u64) as usize;
                if current.is_none() || j == i {
                    return Ok(None);
                }
                model.lock().unwrap().touched.insert(j, op);
                std::fs::rename(&p, name(&root, j))?;
                let mut m = model.lock().unwrap();
                m.content.insert(j, current);
                Ok(Some(None))
            }
            8 => {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&p)?;
                let add: Vec<u8> = (0..rng.below(8000)).map(|_| rng.next() as u8).collect();
                f.write_all(&add)?;
                let mut c = current.unwrap_or_default();
                c.extend_from_slice(&add);
                Ok(Some(Some(c)))
            }
            _ => {
                // fsync a file (any file: the store's commit is volume-wide).
                let any = (0..NAMES).map(|k| name(&root, k)).find(|q| q.exists());
                if let Some(q) = any {
                    std::fs::File::open(q)?.sync_all()?;
                    model.lock().unwrap().synced = op;
                }
                Ok(None)
            }
        })();
        {
            let detail = match &result {
                Ok(Some(Some(c))) => format!("len {}", c.len()),
                Ok(Some(None)) => "gone".into(),
                Ok(None) => "no-op".into(),
                Err(e) => format!("error {e}"),
            };
            model.lock().unwrap().history.push((op, kind, i, detail));
        }
        match result {
            Ok(Some(new)) => {
                model.lock().unwrap().content.insert(i, new);
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

fn read_state(root: &Path) -> HashMap<usize, Option<Vec<u8>>> {
    (0..NAMES)
        .map(|i| (i, std::fs::read(name(root, i)).ok()))
        .collect()
}

#[test]
fn sigkill_at_random_moments_loses_nothing_fsynced() {
    require_root_and_fuse();
    let rounds = env_number("CSVFS_CRASH_ROUNDS", 50);
    let s = Scratch::new();
    s.mkfs("512M", &[]);
    let mp = s.mountpoint("mnt");
    let log = s.path("csvfs.log");
    {
        let m = Mount::new(&s.image(), &mp, "").unwrap();
        std::fs::create_dir(m.path("a")).unwrap();
        std::fs::create_dir(m.path("b")).unwrap();
    }
    let mut rng = Rng(0x5eed_c0ffee);
    let mut state: HashMap<usize, Option<Vec<u8>>> = (0..NAMES).map(|i| (i, None)).collect();
    let mut checked_files = 0usize;
    for round in 0..rounds {
        let m = Mount::foreground(&s.image(), &mp, &log);
        let model = Arc::new(Mutex::new(Model {
            content: state.clone(),
            ..Model::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let seed = rng.next();
        let worker = {
            let (root, model, stop) = (mp.clone(), model.clone(), stop.clone());
            std::thread::spawn(move || workload(root, model, seed, stop))
        };
        std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
        m.kill();
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
        let (code, text) = fsck(&s.image(), false);
        assert_eq!(
            code, 0,
            "round {round} (seed {seed}): fsck after the crash is not clean:\n{text}"
        );
        let m = Mount::new(&s.image(), &mp, "").unwrap();
        let actual = read_state(&mp);
        let model = model.lock().unwrap();
        for i in 0..NAMES {
            let touched = model.touched.get(&i).copied().unwrap_or(0);
            if touched < model.synced {
                let want = model.content.get(&i).cloned().flatten();
                let got = actual.get(&i).cloned().flatten();
                if let (Some(w), Some(g)) = (&want, &got)
                    && let Some(first) = (0..w.len().min(g.len())).find(|&k| w[k] != g[k])
                {
                    let last = (0..w.len().min(g.len()))
                        .rev()
                        .find(|&k| w[k] != g[k])
                        .unwrap();
                    let zeros = g[first..=last].iter().filter(|&&b| b == 0).count();
                    eprintln!(
                        "differs in bytes {first}..={last}; {zeros} of them are zero in the file"
                    );
                    for h in &model.history {
                        eprintln!("  op {} kind {} name {} {}", h.0, h.1, h.2, h.3);
                    }
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    eprintln!(
                        "daemon log tail: {}",
                        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                    );
                }
                assert!(
                    want == got,
                    "round {round} (seed {seed}): {} was last touched by op {touched}, before the fsync of op {}, \
                     but holds {:?} bytes where {:?} were expected",
                    name(&mp, i).display(),
                    model.synced,
                    got.as_ref().map(Vec::len),
                    want.as_ref().map(Vec::len)
                );
                checked_files += 1;
            }
        }
        state = actual;
        m.unmount();
    }
    println!(
        "{rounds} crashes; {checked_files} fsynced files checked intact; fsck clean after each"
    );
    assert!(
        checked_files > 0,
        "the workload never got an fsync in before a crash"
    );
}

#[test]
fn the_same_workload_without_a_crash_keeps_every_file() {
    require_root_and_fuse();
    let s = Scratch::new();
    s.mkfs("512M", &[]);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    std::fs::create_dir(m.path("a")).unwrap();
    std::fs::create_dir(m.path("b")).unwrap();
    let model = Arc::new(Mutex::new(Model::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (root, model, stop) = (mp.clone(), model.clone(), stop.clone());
        std::thread::spawn(move || workload(root, model, 42, stop))
    };
    std::thread::sleep(Duration::from_secs(env_number("CSVFS_WORKLOAD_SECS", 4)));
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();
    let live = read_state(&mp);
    m.unmount();
    assert_fsck_clean(&s.image());
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    let after = read_state(&mp);
    let model = model.lock().unwrap();
    for i in 0..NAMES {
        let want = model.content.get(&i).cloned().flatten();
        assert!(
            live.get(&i).cloned().flatten() == want,
            "{} differs from the model while mounted",
            name(&mp, i).display()
        );
        assert!(
            after.get(&i).cloned().flatten() == want,
            "{} differs from the model after remount",
            name(&mp, i).display()
        );
    }
    m.unmount();
}
