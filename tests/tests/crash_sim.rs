//! Crash safety on a device that loses unflushed writes: a property test drives the
//! metadata store and the data path (the same code a mount runs, without FUSE) on a
//! CrashSimDevice, cuts the power at a random point, keeps a random subset of the
//! unflushed block writes, reopens, and checks that fsck is clean and that every file
//! untouched since the last sync holds exactly its content.

use std::collections::HashMap;
use std::sync::Arc;

use blockdev::{BlockDevice, CrashSimDevice};
use csvfs::data::DataPath;
use metadata::{FormatOptions, JobKind, NewNode, OpenOptions, ROOT_INO, Volume};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write {
        file: usize,
        offset: u32,
        len: u32,
        byte: u8,
    },
    Truncate {
        file: usize,
        size: u32,
    },
    Delete {
        file: usize,
    },
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..6, 0u32..200_000, 1u32..70_000, any::<u8>()).prop_map(|(file, offset, len, byte)| Op::Write { file, offset, len, byte }),
        1 => (0usize..6, 0u32..200_000).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (0usize..6).prop_map(|file| Op::Delete { file }),
        2 => Just(Op::Sync),
    ]
}

fn name(i: usize) -> Vec<u8> {
    format!("f{i}").into_bytes()
}

fn open(dev: Arc<dyn BlockDevice>) -> Arc<Volume> {
    // A long interval: only explicit syncs make changes durable, the worst case.
    let opts = OpenOptions {
        durable_interval: std::time::Duration::from_secs(3600),
        ..OpenOptions::default()
    };
    Arc::new(Volume::open(dev, &opts).expect("open"))
}

fn lookup(vol: &Volume, i: usize) -> Option<u64> {
    vol.snapshot()
        .unwrap()
        .lookup(ROOT_INO, &name(i))
        .ok()
        .map(|(ino, _)| ino)
}

fn content(vol: &Volume, data: &DataPath, i: usize) -> Option<Vec<u8>> {
    let ino = lookup(vol, i)?;
    let size = vol.snapshot().unwrap().inode(ino).unwrap().size;
    Some(data.read(ino, 0, size as u32).unwrap().bytes().to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn power_cut_keeps_what_was_synced(ops in proptest::collection::vec(op(), 1..60), keep_seed in any::<u64>()) {
        let sim = Arc::new(CrashSimDevice::new(64 << 20));
        let dev: Arc<dyn BlockDevice> = sim.clone();
        let fo = FormatOptions { label: "T".into(), metadata_bytes: Some(16 << 20), force: false };
        Volume::format(dev.clone(), &fo).unwrap();
        let vol = open(dev.clone());
        let data = DataPath::new(csvfs::meta::Meta::local(vol.clone()), vol.device().clone(), true);
        let mut model: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut touched: HashMap<usize, usize> = HashMap::new();
        let mut synced = 0usize;
        for (n, op) in ops.iter().enumerate() {
            let n = n + 1;
            match *op {
                Op::Write { file, offset, len, byte } => {
                    let ino = match lookup(&vol, file) {
                        Some(ino) => ino,
                        None => {
                            let node = NewNode { mode: libc::S_IFREG | 0o644, uid: 0, gid: 0, rdev: 0, symlink: None };
                            let nm = name(file);
                            vol.write(JobKind::default(), move |c| c.create(ROOT_INO, &nm, &node)).unwrap().0
                        }
                    };
                    let buf = vec![byte; len as usize];
                    data.write(ino, u64::from(offset), &buf).unwrap();
                    let m = model.entry(file).or_default();
                    let end = (offset + len) as usize;
                    if m.len() < end { m.resize(end, 0); }
                    m[offset as usize..end].fill(byte);
                    touched.insert(file, n);
                }
                Op::Truncate { file, size } => {
                    if let Some(ino) = lookup(&vol, file) {
                        data.truncate(ino, u64::from(size)).unwrap();
                        model.get_mut(&file).unwrap().resize(size as usize, 0);
                        touched.insert(file, n);
                    }
                }
                Op::Delete { file } => {
                    if lookup(&vol, file).is_some() {
                        let nm = name(file);
                        let u = vol.write(JobKind::default(), move |c| c.unlink(ROOT_INO, &nm)).unwrap();
                        vol.write(JobKind::FREES, move |c| c.delete_inode(u.ino)).unwrap();
                        model.remove(&file);
                        touched.insert(file, n);
                    }
                }
                Op::Sync => {
                    vol.sync().unwrap();
                    synced = n;
                }
            }
        }
        // Live contents match the model before any crash.
        for i in 0..6 {
            prop_assert_eq!(content(&vol, &data, i), model.get(&i).cloned(), "live file {}", i);
        }
        let mut x = keep_seed | 1;
        let crashed: Arc<dyn BlockDevice> = Arc::new(sim.crash(|| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x % 2 == 0 }));
        drop(data);
        drop(vol);
        let report = metadata::fsck::check(crashed.clone(), false).unwrap();
        prop_assert!(report.is_clean(), "fsck after the power cut: {:?}", report.problems);
        let vol = open(crashed.clone());
        let data = DataPath::new(csvfs::meta::Meta::local(vol.clone()), vol.device().clone(), true);
        for i in 0..6 {
            if touched.get(&i).copied().unwrap_or(0) < synced {
                prop_assert_eq!(content(&vol, &data, i), model.get(&i).cloned(), "synced file {} after the power cut", i);
            }
        }
        // Growing any file after the cut shows zeros past its old end, whatever an
        // in-place write past that end left on the LUN before the cut.
        for i in 0..6 {
            if let Some(ino) = lookup(&vol, i) {
                let old = vol.snapshot().unwrap().inode(ino).unwrap().size;
                data.truncate(ino, old + 9000).unwrap();
                let grown = data.read(ino, old, 9000).unwrap();
                prop_assert!(grown.bytes().iter().all(|&b| b == 0), "file {} grew with old bytes", i);
            }
        }
        drop(data);
        vol.close().unwrap();
        let report = metadata::fsck::check(crashed, false).unwrap();
        prop_assert!(report.is_clean(), "fsck after remount: {:?}", report.problems);
    }
}
