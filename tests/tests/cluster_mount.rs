//! Every node mounts the volume: three `csvfs node` daemons on 127.0.0.1 share one
//! tgtd LUN, each mounting it at `<root>/ClusterStorage/Volume1`. A file written and
//! closed on any node reads back byte-identical on the others; a rename, an unlink and
//! a chmod on one node are seen by the next stat on another; pjdfstest passes on a
//! node that does not coordinate the volume.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use csvfs_tests::cluster::Cluster;
use csvfs_tests::tgtd::Tgtd;
use csvfs_tests::{Scratch, require_root_and_fuse, run_pjdfstest_in_new_dir};

const LABEL: &str = "Volume1";

/// A cluster of three on a fresh tgtd LUN, every node mounted; returns the mount
/// points and the coordinator's index.
fn three_mounted_nodes(s: &Scratch) -> (Tgtd, Cluster, Vec<PathBuf>, usize) {
    require_root_and_fuse();
    let (t, c) = Cluster::on_tgtd(s, 3, LABEL, 512 << 20);
    let (coord, st) = c.wait_for_coordinator(&[0, 1, 2], 0, Duration::from_secs(30));
    c.wait_for_followers(&[0, 1, 2], coord, Duration::from_secs(10));
    println!("coordinator: {} in epoch {}", c.nodes[coord].name, st.epoch);
    let mounts = c
        .nodes
        .iter()
        .map(|n| n.wait_mounted(LABEL, Duration::from_secs(20)))
        .collect();
    (t, c, mounts, coord)
}

/// Bytes that differ per writer and position.
fn pattern(writer: usize, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (writer as u64 + 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_file_written_on_one_node_reads_back_on_the_others_and_names_change_everywhere() {
    let s = Scratch::new();
    let (_t, c, mounts, coord) = three_mounted_nodes(&s);

    // Each node writes a file (over a block boundary, not block-sized, one of them
    // larger than a FUSE request) and closes it; the other two read it back.
    let sizes = [3 * 1024 * 1024 + 17, 4095, 70_001];
    for (w, mp) in mounts.iter().enumerate() {
        let data = pattern(w, sizes[w]);
        std::fs::write(mp.join(format!("from-n{}", w + 1)), &data).unwrap();
        for (r, other) in mounts.iter().enumerate().filter(|&(r, _)| r != w) {
            let back = std::fs::read(other.join(format!("from-n{}", w + 1)))
                .unwrap_or_else(|e| panic!("n{} reading n{}'s file: {e}", r + 1, w + 1));
            assert!(
                back == data,
                "n{} read {} bytes of n{}'s {} and they differ",
                r + 1,
                back.len(),
                w + 1,
                data.len()
            );
        }
        println!(
            "n{}'s file ({} bytes) reads back on the others",
            w + 1,
            data.len()
        );
    }

    // Overwrite in place on one node; a node that read the file before sees the new
    // bytes (its cached pages go when the file's time changes).
    let (a, b) = ((coord + 1) % 3, (coord + 2) % 3);
    let f = "from-n1";
    let before = std::fs::read(mounts[b].join(f)).unwrap();
    let mut changed = before.clone();
    changed[5000..5010].copy_from_slice(b"overwrite!");
    std::fs::write(mounts[a].join(f), &changed).unwrap();
    assert!(
        std::fs::read(mounts[b].join(f)).unwrap() == changed,
        "stale read after overwrite"
    );

    // rename on a, stat on b and on the coordinator.
    std::fs::rename(mounts[a].join("from-n2"), mounts[a].join("renamed")).unwrap();
    for n in [b, coord] {
        assert!(
            std::fs::metadata(mounts[n].join("from-n2")).is_err(),
            "n{} still sees the old name",
            n + 1
        );
        assert_eq!(
            std::fs::metadata(mounts[n].join("renamed")).unwrap().len(),
            sizes[1] as u64
        );
    }
    // chmod on b, stat on a.
    std::fs::set_permissions(
        mounts[b].join("renamed"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let mode = std::fs::metadata(mounts[a].join("renamed"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640, "n{} sees mode {mode:o}", a + 1);
    // What a follower looked up it keeps under lease: stats of the same path cost no
    // call to the coordinator...
    let remote_calls = |n: usize| {
        c.volume_status(n)
            .and_then(|v| v.io)
            .expect("io in status")
            .metadata_calls
    };
    let renamed = mounts[a].join("renamed");
    let before = remote_calls(a);
    for _ in 0..1000 {
        std::fs::metadata(&renamed).unwrap();
    }
    let calls = remote_calls(a) - before;
    println!("1000 stats on n{}: {calls} calls to the coordinator", a + 1);
    assert!(calls <= 3, "n{}: {calls} calls for 1000 stats", a + 1);
    // ... until another node changes the file: its lease is recalled first.
    for (n, mode) in [(coord, 0o604), (b, 0o600)] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mounts[n].join("renamed"))
            .unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .unwrap();
        f.set_len(1000 + mode as u64).unwrap();
        let m = std::fs::metadata(&renamed).unwrap();
        assert_eq!(
            (m.permissions().mode() & 0o7777, m.len()),
            (mode, 1000 + mode as u64),
            "n{} after a change on n{}",
            a + 1,
            n + 1
        );
    }
    // unlink on the coordinator, stat on a and b.
    std::fs::remove_file(mounts[coord].join("renamed")).unwrap();
    for n in [a, b] {
        let e = std::fs::metadata(mounts[n].join("renamed")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "n{}: {e}", n + 1);
    }
    // A directory made on one node lists on another.
    std::fs::create_dir(mounts[b].join("dir")).unwrap();
    std::fs::write(mounts[b].join("dir/x"), b"x").unwrap();
    let names: Vec<String> = std::fs::read_dir(mounts[a].join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["x"]);
    // Each follower moved its file bytes on the LUN itself: its counters show them as
    // direct, none through another node, and its metadata went to the coordinator.
    for n in [a, b] {
        let io = c.volume_status(n).and_then(|v| v.io).expect("io in status");
        println!("n{}: {io:?}", n + 1);
        assert_eq!(io.state, "Direct");
        assert!(io.bytes_direct >= sizes[n] as u64, "n{}: {io:?}", n + 1);
        assert_eq!(io.bytes_redirected, 0);
        assert!(
            io.metadata_calls > 0 && io.local_calls == 0,
            "n{}: {io:?}",
            n + 1
        );
    }
    let io = c.volume_status(coord).and_then(|v| v.io).unwrap();
    assert!(
        io.served_calls > 0 && io.metadata_calls == 0,
        "coordinator: {io:?}"
    );
    let mut args = vec!["volume", "status", "--config", c.config.to_str().unwrap()];
    for n in &c.nodes {
        args.extend(["--root", n.root.to_str().unwrap()]);
    }
    let status = csvfs_tests::run_ok(&csvfs_tests::bin("csvctl"), &args);
    println!("{status}");
    for (what, n) in [("the coordinator", coord), ("a follower", a)] {
        let d = mounts[n].join(format!("many-{n}"));
        std::fs::create_dir(&d).unwrap();
        let t = std::time::Instant::now();
        for i in 0..200 {
            std::fs::write(d.join(i.to_string()), b"").unwrap();
        }
        println!("200 creates on {what}: {:?}", t.elapsed());
    }
    drop(c);
}

#[test]
fn pjdfstest_passes_on_a_node_that_does_not_coordinate() {
    let s = Scratch::new();
    let (_t, c, mounts, coord) = three_mounted_nodes(&s);
    let follower = (coord + 1) % 3;
    let (summary, text) = run_pjdfstest_in_new_dir(&mounts[follower].join("pjd"));
    println!(
        "pjdfstest on n{} (not the coordinator): {summary}",
        follower + 1
    );
    assert!(
        summary.starts_with("Summary: 0 failed"),
        "pjdfstest failed on n{}:\n{text}\n{}",
        follower + 1,
        c.describe()
    );
}

/// Starts `lockholder FILE MODE HOLD_MS` and waits for its first line.
fn lockholder(file: &std::path::Path, mode: &str, hold_ms: u64) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(csvfs_tests::bin("lockholder"))
        .arg(file)
        .arg(mode)
        .arg(hold_ms.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("lockholder");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
}

/// Holds a lock (`hold` mode) on `held` for `hold_ms`; checks that the non-blocking
/// `try_mode` on `other` is refused and that the blocking `wait_mode` on `other`
/// returns only once the holder has gone; returns how long it waited.
fn assert_lock_waits(
    (held, hold): (&std::path::Path, &str),
    (other, try_mode, wait_mode): (&std::path::Path, &str, &str),
    hold_ms: u64,
) -> Duration {
    let (mut holder, line) = lockholder(held, hold, hold_ms);
    assert_eq!(line, "locked");
    let taken = std::time::Instant::now();
    let (mut busy, line) = lockholder(other, try_mode, 0);
    assert_eq!(line, "busy", "{try_mode} while the lock is held elsewhere");
    assert_eq!(busy.wait().unwrap().code(), Some(11));
    let (mut waiter, line) = lockholder(other, wait_mode, 0);
    let waited = taken.elapsed();
    assert_eq!(line, "locked");
    assert!(holder.wait().unwrap().success());
    assert!(waiter.wait().unwrap().success());
    assert!(
        waited >= Duration::from_millis(hold_ms - 100),
        "{wait_mode} returned after {waited:?}, while the lock was held for {hold_ms} ms"
    );
    waited
}

#[test]
fn a_lock_on_one_node_makes_setlkw_on_another_wait_until_it_goes() {
    let s = Scratch::new();
    let (_t, _c, mounts, coord) = three_mounted_nodes(&s);
    let (n1, n2, n3) = ((coord + 1) % 3, (coord + 2) % 3, coord);
    let file = |n: usize| mounts[n].join("locked-file");
    std::fs::write(file(n1), b"data").unwrap();

    // F_GETLK on the coordinator sees a write lock that n1 holds.
    let (mut holder, line) = lockholder(&file(n1), "setlk", 500);
    assert_eq!(line, "locked");
    let (mut get, line) = lockholder(&file(n3), "getlk", 0);
    assert!(
        line.starts_with("write"),
        "F_GETLK on the coordinator: {line}"
    );
    get.wait().unwrap();
    holder.wait().unwrap();

    let waited = assert_lock_waits((&file(n1), "setlk"), (&file(n2), "setlk", "setlkw"), 2000);
    println!(
        "F_SETLKW on n{} got the lock {waited:?} after n{} took it (held 2 s)",
        n2 + 1,
        n1 + 1
    );
    let waited = assert_lock_waits((&file(n2), "flock"), (&file(n3), "flocknb", "flock"), 1500);
    println!(
        "flock on n{} got the lock {waited:?} after n{} took it (held 1.5 s)",
        n3 + 1,
        n2 + 1
    );
}

#[test]
fn the_locks_of_a_node_that_dies_go_once_it_is_fenced() {
    let s = Scratch::new();
    let (_t, mut c, mounts, coord) = three_mounted_nodes(&s);
    let (dying, waiting) = ((coord + 1) % 3, (coord + 2) % 3);
    std::fs::write(mounts[dying].join("f"), b"data").unwrap();
    let (mut holder, line) = lockholder(&mounts[dying].join("f"), "setlk", 600_000);
    assert_eq!(line, "locked");
    // A waiter on another node, then kill -9 of the holder's node daemon.
    let waiter = std::thread::spawn({
        let f = mounts[waiting].join("f");
        move || {
            let (mut w, line) = lockholder(&f, "setlkw", 0);
            w.wait().unwrap();
            line
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiter.is_finished(),
        "F_SETLKW returned while the lock was held"
    );
    let killed = std::time::Instant::now();
    c.nodes[dying].kill9();
    let line = waiter.join().unwrap();
    assert_eq!(line, "locked");
    println!(
        "kill -9 of {}: its lock went, and F_SETLKW on {} got it, after {:.2} s",
        c.nodes[dying].name,
        c.nodes[waiting].name,
        killed.elapsed().as_secs_f64()
    );
    let _ = holder.kill();
    let _ = holder.wait();
}
