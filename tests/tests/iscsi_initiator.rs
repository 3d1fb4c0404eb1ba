//! The built-in iSCSI initiator against a real tgtd: several initiators on one LUN,
//! CHAP, fencing with persistent reservations (and the same fencing on the image-file
//! emulation), and faults (target restart, TCP connection cut) during a stream of
//! writes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockdev::iscsi::IscsiDevice;
use blockdev::{AlignedBuf, BlockDevice, BlockError, FileDevice, PrOut, ReservationType};
use csvfs_tests::Scratch;
use csvfs_tests::tcp_cut::TcpCutter;
use csvfs_tests::tgtd::{Tgtd, TgtdOptions};

const WE_RO: ReservationType = ReservationType::WriteExclusiveRegistrantsOnly;

fn image(s: &Scratch, size: u64) -> std::path::PathBuf {
    let p = s.path("lun.img");
    FileDevice::create_image(&p, size).unwrap();
    p
}

fn with_initiator(url: &str, name: &str) -> String {
    format!("{url}?initiator={name}")
}

fn open(url: &str) -> Arc<dyn BlockDevice> {
    Arc::new(IscsiDevice::open(url).unwrap_or_else(|e| panic!("open {url}: {e:?}")))
}

fn block(tag: u64, version: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(4096);
    for (i, c) in b.chunks_exact_mut(8).enumerate() {
        let v = if i % 2 == 0 { tag } else { version };
        c.copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn read_block(dev: &dyn BlockDevice, off: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(4096);
    dev.read_at(&mut b, off).unwrap();
    b
}

#[test]
fn three_initiators_see_each_others_writes() {
    let s = Scratch::new();
    let t = Tgtd::start(&image(&s, 64 << 20), TgtdOptions::default());
    let devs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            open(&with_initiator(
                &t.url(),
                &format!("iqn.2026-11.io.csvfs.test:{n}"),
            ))
        })
        .collect();
    for (i, d) in devs.iter().enumerate() {
        d.write_at(&block(i as u64, 1), i as u64 * 4096).unwrap();
        d.flush().unwrap();
    }
    for d in &devs {
        for i in 0..3u64 {
            assert_eq!(&read_block(d.as_ref(), i * 4096)[..], &block(i, 1)[..]);
        }
    }
    // An overwrite by one is seen by the others at once (no cache in the initiator).
    devs[0].write_at(&block(2, 2), 2 * 4096).unwrap();
    assert_eq!(
        &read_block(devs[2].as_ref(), 2 * 4096)[..],
        &block(2, 2)[..]
    );
    // tgtd lists three sessions.
    let show = t.tgtadm_ok(&["--op", "show", "--mode", "target"]);
    for n in ["a", "b", "c"] {
        assert!(
            show.contains(&format!("iqn.2026-11.io.csvfs.test:{n}")),
            "{show}"
        );
    }
}

#[test]
fn chap_login_works_and_a_wrong_secret_is_refused() {
    let s = Scratch::new();
    let t = Tgtd::start(
        &image(&s, 16 << 20),
        TgtdOptions {
            chap: Some(("csvuser".into(), "csvsecret1234".into())),
            ..TgtdOptions::default()
        },
    );
    let with_auth = |user: &str, secret: &str| {
        t.url()
            .replacen("iscsi://", &format!("iscsi://{user}%{secret}@"), 1)
    };
    let dev = open(&with_auth("csvuser", "csvsecret1234"));
    dev.write_at(&block(1, 1), 0).unwrap();
    assert_eq!(&read_block(dev.as_ref(), 0)[..], &block(1, 1)[..]);
    let e = IscsiDevice::open(&with_auth("csvuser", "wrongsecret99")).unwrap_err();
    assert!(format!("{e:?}").contains("authentication failed"), "{e:?}");
    let e = IscsiDevice::open(&t.url()).unwrap_err();
    assert!(format!("{e:?}").contains("login"), "{e:?}");
}

/// A and B register, A reserves Write Exclusive - Registrants Only, B preempts A: A's
/// next write fails with Fenced, B's succeed, an unregistered initiator cannot write.
fn fencing_scenario(open: &dyn Fn(&str) -> Arc<dyn BlockDevice>) {
    let a = open("iqn.2026-11.io.csvfs.test:fence-a");
    let b = open("iqn.2026-11.io.csvfs.test:fence-b");
    let c = open("iqn.2026-11.io.csvfs.test:fence-c");
    let (ka, kb) = (0xA1, 0xB2);
    // Whatever an earlier run left.
    a.persistent_reserve_out(&PrOut::RegisterIgnoreExisting { new_key: ka })
        .unwrap();
    a.persistent_reserve_out(&PrOut::Clear { key: ka }).unwrap();

    a.persistent_reserve_out(&PrOut::RegisterIgnoreExisting { new_key: ka })
        .unwrap();
    b.persistent_reserve_out(&PrOut::RegisterIgnoreExisting { new_key: kb })
        .unwrap();
    a.persistent_reserve_out(&PrOut::Reserve {
        key: ka,
        kind: WE_RO,
    })
    .unwrap();
    let keys = c.read_keys().unwrap();
    assert!(
        keys.keys.contains(&ka) && keys.keys.contains(&kb),
        "{keys:?}"
    );
    let holder = c.read_reservation().unwrap().expect("reserved");
    assert_eq!((holder.key, holder.kind), (ka, Some(WE_RO)));
    // Registrants write; the unregistered one cannot.
    a.write_at(&block(0xA, 1), 0).unwrap();
    b.write_at(&block(0xB, 1), 4096).unwrap();
    assert!(
        matches!(
            c.write_at(&block(0xC, 1), 8192),
            Err(BlockError::Fenced { .. })
        ),
        "an unregistered initiator wrote"
    );
    // A reservation of someone else's is a conflict.
    assert!(matches!(
        b.persistent_reserve_out(&PrOut::Reserve {
            key: kb,
            kind: WE_RO
        }),
        Err(BlockError::Fenced { .. })
    ));
    // B preempts A.
    b.persistent_reserve_out(&PrOut::Preempt {
        key: kb,
        victim: ka,
        kind: WE_RO,
        abort: false,
    })
    .unwrap();
    let err = a.write_at(&block(0xA, 2), 0).unwrap_err();
    assert!(matches!(err, BlockError::Fenced { .. }), "{err:?}");
    assert!(err.to_string().contains("fenced"), "{err}");
    b.write_at(&block(0xB, 2), 4096).unwrap();
    b.write_at(&block(0xB, 3), 0).unwrap();
    assert!(matches!(
        c.write_at(&block(0xC, 2), 8192),
        Err(BlockError::Fenced { .. })
    ));
    let holder = a.read_reservation().unwrap().expect("reserved");
    assert_eq!((holder.key, holder.kind), (kb, Some(WE_RO)));
    assert_eq!(a.read_keys().unwrap().keys, vec![kb]);
    // A fenced node cannot win back by re-registering under its old key.
    assert!(matches!(
        a.persistent_reserve_out(&PrOut::Register {
            key: ka,
            new_key: 0xA3
        }),
        Err(BlockError::Fenced { .. })
    ));
    // PREEMPT AND ABORT is refused (tgtd does not have it; the emulation follows).
    assert!(matches!(
        b.persistent_reserve_out(&PrOut::Preempt {
            key: kb,
            victim: kb,
            kind: WE_RO,
            abort: true,
        }),
        Err(BlockError::Refused { .. })
    ));
    // What B wrote is there; A's refused write is not.
    assert_eq!(&read_block(c.as_ref(), 0)[..], &block(0xB, 3)[..]);
    assert_eq!(&read_block(c.as_ref(), 8192)[..], &[0u8; 4096][..]);
    b.persistent_reserve_out(&PrOut::Clear { key: kb }).unwrap();
    c.write_at(&block(0xC, 3), 8192).unwrap();
}

#[test]
fn fencing_against_tgtd() {
    let s = Scratch::new();
    let t = Tgtd::start(&image(&s, 16 << 20), TgtdOptions::default());
    let url = t.url();
    fencing_scenario(&|name| open(&with_initiator(&url, name)));
}

#[test]
fn fencing_on_the_image_file_emulation() {
    let s = Scratch::new();
    let img = image(&s, 16 << 20);
    fencing_scenario(&|name| Arc::new(FileDevice::open_as(&img, false, name).unwrap()));
}

#[test]
fn register_and_move_hands_the_reservation_over() {
    let s = Scratch::new();
    let t = Tgtd::start(&image(&s, 16 << 20), TgtdOptions::default());
    let a = open(&with_initiator(
        &t.url(),
        "iqn.2026-11.io.csvfs.test:move-a",
    ));
    let b = IscsiDevice::open(&with_initiator(
        &t.url(),
        "iqn.2026-11.io.csvfs.test:move-b",
    ))
    .unwrap();
    a.persistent_reserve_out(&PrOut::RegisterIgnoreExisting { new_key: 1 })
        .unwrap();
    b.persistent_reserve_out(&PrOut::RegisterIgnoreExisting { new_key: 2 })
        .unwrap();
    // WRITE EXCLUSIVE: only the holder writes.
    let we = ReservationType::WriteExclusive;
    a.persistent_reserve_out(&PrOut::Reserve { key: 1, kind: we })
        .unwrap();
    assert!(matches!(
        b.write_at(&block(2, 0), 0),
        Err(BlockError::Fenced { .. })
    ));
    a.persistent_reserve_out(&PrOut::RegisterAndMove {
        key: 1,
        new_key: 2,
        to_initiator: b.initiator_port(),
        unregister: true,
    })
    .unwrap();
    // tgtd moves the reservation without its type; the new holder sets it by
    // preempting its own key, which leaves no moment without a reservation.
    let moved = b.read_reservation().unwrap().expect("reserved");
    assert_eq!((moved.key, moved.kind), (2, None), "moved without its type");
    b.persistent_reserve_out(&PrOut::Preempt {
        key: 2,
        victim: 2,
        kind: we,
        abort: false,
    })
    .unwrap();
    let holder = b.read_reservation().unwrap().expect("still reserved");
    assert_eq!((holder.key, holder.kind), (2, Some(we)));
    assert_eq!(
        b.read_keys().unwrap().keys,
        vec![2],
        "the mover is unregistered"
    );
    b.write_at(&block(2, 1), 0).unwrap();
    assert!(matches!(
        a.write_at(&block(1, 1), 0),
        Err(BlockError::Fenced { .. })
    ));
}

/// What a stream of writes saw: per block, the versions acknowledged and those that
/// failed after the last acknowledged one.
#[derive(Default)]
struct Ledger {
    acked: HashMap<u64, u64>,
    failed_since_ack: HashMap<u64, Vec<u64>>,
    acks: u64,
    failures: u64,
    possibly_fenced: u64,
}

/// Writes a stream of numbered blocks from 4 threads, runs `fault` in the middle, and
/// checks the rules: every write is acknowledged or reported failed; nothing
/// acknowledged is lost; when `register` is set, after the reconnect no write goes out
/// until the test registers again.
fn writes_through_a_fault(
    name: &str,
    url: &str,
    backing: &Path,
    register: bool,
    fault: impl FnOnce(),
) {
    const THREADS: u64 = 4;
    const BLOCKS: u64 = 32;
    let dev = open(url);
    dev.write_at(
        &AlignedBuf::zeroed(((THREADS * BLOCKS + 2) * 4096) as usize),
        0,
    )
    .unwrap();
    let key = AtomicU64::new(0x5EED_0001);
    if register {
        dev.persistent_reserve_out(&PrOut::RegisterIgnoreExisting {
            new_key: key.load(Ordering::SeqCst),
        })
        .unwrap();
    }
    let gen0 = dev.path_generation();
    let ledger = Mutex::new(Ledger::default());
    let stop = AtomicBool::new(false);
    let registered_again = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (dev, ledger, stop, registered_again) = (&dev, &ledger, &stop, &registered_again);
            sc.spawn(move || {
                let mut v = 0;
                while !stop.load(Ordering::SeqCst) {
                    v += 1;
                    let b = t * BLOCKS + v % BLOCKS;
                    let seen_rereg = registered_again.load(Ordering::SeqCst);
                    let r = dev.write_at(&block(b, v), b * 4096);
                    let mut l = ledger.lock().unwrap();
                    match r {
                        Ok(()) => {
                            l.acked.insert(b, v);
                            l.failed_since_ack.remove(&b);
                            l.acks += 1;
                        }
                        Err(e) => {
                            if matches!(e, BlockError::PossiblyFenced { .. }) {
                                l.possibly_fenced += 1;
                            }
                            l.failures += 1;
                            l.failed_since_ack.entry(b).or_default().push(v);
                            drop(l);
                            // Wait for the test to register again before the next try.
                            while register
                                && registered_again.load(Ordering::SeqCst) == seen_rereg
                                && !stop.load(Ordering::SeqCst)
                            {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        let before = ledger.lock().unwrap().acks;
        assert!(before > 0, "no write went through before the fault");
        let fault_at = Instant::now();
        fault();
        if register {
            // The initiator reports the reconnect, and holds every write back.
            let deadline = Instant::now() + Duration::from_secs(60);
            while dev.path_generation() == gen0 {
                assert!(Instant::now() < deadline, "{name}: no reconnect reported");
                std::thread::sleep(Duration::from_millis(10));
            }
            let probe_block = THREADS * BLOCKS + 1;
            let e = dev
                .write_at(&block(probe_block, 99), probe_block * 4096)
                .unwrap_err();
            assert!(
                matches!(e, BlockError::PossiblyFenced { .. }),
                "{name}: {e:?}"
            );
            // It never reached the LUN.
            let on_disk = std::fs::read(backing).unwrap();
            let at = (probe_block * 4096) as usize;
            assert_eq!(
                &on_disk[at..at + 4096],
                &[0u8; 4096][..],
                "{name}: a held-back write landed"
            );
            let k = key.fetch_add(1, Ordering::SeqCst) + 1;
            dev.persistent_reserve_out(&PrOut::RegisterIgnoreExisting { new_key: k })
                .unwrap_or_else(|e| panic!("{name}: re-register: {e:?}"));
            registered_again.fetch_add(1, Ordering::SeqCst);
        }
        // Run on until writes flow again, then a little longer.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let acks = ledger.lock().unwrap().acks;
            if acks > before + 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: writes did not resume");
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "{name}: writes resumed {:?} after the fault",
            fault_at.elapsed()
        );
        stop.store(true, Ordering::SeqCst);
    });
    dev.flush().unwrap();
    let l = ledger.into_inner().unwrap();
    println!(
        "{name}: {} writes acknowledged, {} reported failed ({} possibly fenced), reconnects {}, in {:?}",
        l.acks,
        l.failures,
        l.possibly_fenced,
        dev.path_generation() - gen0,
        start.elapsed()
    );
    assert!(
        dev.path_generation() > gen0,
        "{name}: the reconnect was not reported"
    );
    if register {
        assert!(l.possibly_fenced > 0, "{name}: no write was held back");
    }
    // Nothing acknowledged is lost: each block holds its last acknowledged version or
    // one of the versions reported failed after it.
    let on_disk = std::fs::read(backing).unwrap();
    for t in 0..THREADS {
        for i in 0..BLOCKS {
            let b = t * BLOCKS + i;
            let at = (b * 4096) as usize;
            let got = &on_disk[at..at + 4096];
            let mut allowed: Vec<u64> = l.failed_since_ack.get(&b).cloned().unwrap_or_default();
            match l.acked.get(&b) {
                Some(v) => allowed.push(*v),
                None => {
                    if got == [0u8; 4096] {
                        continue;
                    }
                }
            }
            assert!(
                allowed.iter().any(|v| got == &block(b, *v)[..]),
                "{name}: block {b} holds neither its acknowledged version {:?} nor a failed one {:?}",
                l.acked.get(&b),
                l.failed_since_ack.get(&b)
            );
        }
    }
}

#[test]
fn target_restart_during_writes() {
    let s = Scratch::new();
    let img = image(&s, 16 << 20);
    let mut t = Tgtd::start(&img, TgtdOptions::default());
    let url = with_initiator(&t.url(), "iqn.2026-11.io.csvfs.test:restart-reg");
    writes_through_a_fault("restart, registered", &url, &img, true, || t.restart());
    let url = with_initiator(&t.url(), "iqn.2026-11.io.csvfs.test:restart");
    writes_through_a_fault("restart, unregistered", &url, &img, false, || t.restart());
    writes_through_a_fault("kill -9 and restart, registered", &url, &img, true, || {
        t.kill_and_restart()
    });
}

#[test]
fn tcp_cut_during_writes() {
    let s = Scratch::new();
    let img = image(&s, 16 << 20);
    let t = Tgtd::start(&img, TgtdOptions::default());
    let cutter = TcpCutter::new(format!("127.0.0.1:{}", t.port()).parse().unwrap());
    let url = with_initiator(
        &t.url()
            .replace(&format!(":{}/", t.port()), &format!(":{}/", cutter.port())),
        "iqn.2026-11.io.csvfs.test:cut",
    );
    writes_through_a_fault("cut, registered", &url, &img, true, || cutter.cut());
    writes_through_a_fault("cut, unregistered", &url, &img, false, || cutter.cut());
    assert!(cutter.connections_cut() >= 2);
}
