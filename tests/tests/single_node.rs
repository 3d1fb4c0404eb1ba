//! A volume on one node: format, mount, use, unmount, mount again; mount conventions;
//! clear errors for bad input.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use csvfs_tests::*;

fn statvfs(p: &Path) -> libc::statvfs {
    let c = CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we pass.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
        s
    }
}

fn mounts_line(mp: &Path) -> String {
    let canon = std::fs::canonicalize(mp).unwrap();
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(canon.to_str().unwrap()))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn files_survive_unmount_and_mount_and_sizes_are_true() {
    require_root_and_fuse();
    let s = Scratch::new();
    s.mkfs("2G", &["-L", "Volume1"]);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.path("big"), &big).unwrap();
    std::fs::create_dir_all(m.path("a/b/c")).unwrap();
    std::fs::write(m.path("a/b/c/small"), b"hello").unwrap();
    std::os::unix::fs::symlink("a/b/c/small", m.path("link")).unwrap();
    std::fs::hard_link(m.path("big"), m.path("a/big2")).unwrap();
    let before = statvfs(&mp);
    assert_eq!(before.f_bsize, 4096);
    let total = before.f_blocks * before.f_frsize;
    assert!(total > 1900 << 20 && total < 2 << 30, "total {total}");
    let used = (before.f_blocks - before.f_bfree) * before.f_frsize;
    assert!(
        (5_000_000..5_100_000).contains(&used),
        "5 MB written, {used} used"
    );
    m.unmount();
    assert_fsck_clean(&s.image());
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    assert_eq!(std::fs::read(m.path("big")).unwrap(), big);
    assert_eq!(std::fs::read(m.path("a/b/c/small")).unwrap(), b"hello");
    assert_eq!(std::fs::read(m.path("link")).unwrap(), b"hello");
    assert_eq!(std::fs::metadata(m.path("big")).unwrap().nlink(), 2);
    assert_eq!(
        std::fs::metadata(m.path("big")).unwrap().blocks() * 512,
        5_001_216
    );
    let after = statvfs(&mp);
    assert_eq!(after.f_bfree, before.f_bfree);
    std::fs::remove_file(m.path("big")).unwrap();
    std::fs::remove_file(m.path("a/big2")).unwrap();
    m.unmount();
    // The freed blocks come back once their freeing is durable (at unmount).
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    assert!(
        statvfs(&mp).f_bfree >= before.f_bfree + 1220,
        "space came back"
    );
    m.unmount();
    assert_fsck_clean(&s.image());
}

#[test]
fn mount_helper_ro_and_source_name() {
    require_root_and_fuse();
    let s = Scratch::new();
    s.mkfs("64M", &[]);
    let mp = s.mountpoint("mnt");
    {
        let m = Mount::new(&s.image(), &mp, "").unwrap();
        std::fs::write(m.path("f"), b"data").unwrap();
    }
    // mount(8) runs /sbin/mount.fuse.csvfs for type fuse.csvfs: point it at the binary
    // under test.
    let helper = Path::new("/sbin/mount.fuse.csvfs");
    let _ = std::fs::remove_file(helper);
    std::os::unix::fs::symlink(bin("csvfs"), helper).unwrap();
    run_ok(
        Path::new("mount"),
        &[
            "-t",
            "fuse.csvfs",
            s.image().to_str().unwrap(),
            mp.to_str().unwrap(),
            "-o",
            "ro,nodev,nosuid",
        ],
    );
    let line = mounts_line(&mp);
    let img = std::fs::canonicalize(s.image()).unwrap();
    assert!(
        line.starts_with(&format!("{} ", img.display())),
        "source is the LUN: {line}"
    );
    assert!(
        line.contains(" fuse.csvfs ro,nosuid,nodev"),
        "type and flags: {line}"
    );
    let err = std::fs::write(mp.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"data");
    run_ok(Path::new("umount"), &[mp.to_str().unwrap()]);
    wait_lun_free(&s.image(), std::time::Duration::from_secs(20));
    // Without a subtype, and with dev and suid honoured.
    let m = Mount::new(&s.image(), &mp, "nosubtype,dev,suid").unwrap();
    let line = mounts_line(&mp);
    assert!(line.contains(" fuse rw,"), "plain fuse type: {line}");
    assert!(
        !line.contains("nosuid") && !line.contains("nodev"),
        "dev and suid: {line}"
    );
    m.unmount();
}

fn mount_error(lun: &Path, mp: &Path) -> String {
    let out = run(
        &bin("csvfs"),
        &["mount", lun.to_str().unwrap(), mp.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_input_gives_one_line_errors() {
    require_root_and_fuse();
    let s = Scratch::new();
    let mp = s.mountpoint("mnt");
    let missing = s.path("missing.img");
    assert!(mount_error(&missing, &mp).contains("does not exist"));

    let out = run(
        &bin("mkfs.csvfs"),
        &["--size", "1M", s.path("tiny.img").to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("too small"), "{err}");

    let junk = s.path("junk.img");
    std::fs::write(&junk, vec![7u8; 64 << 20]).unwrap();
    assert!(mount_error(&junk, &mp).contains("not a csvfs volume"));

    s.mkfs("64M", &[]);
    let out = run(&bin("mkfs.csvfs"), &[s.image().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));

    // Both superblock copies damaged.
    let img = s.image();
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[100] ^= 0xff;
    let last = bytes.len() - 4096;
    bytes[last + 100] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let e = mount_error(&img, &mp);
    assert!(e.contains("checksum"), "{e}");

    // One damaged copy is survivable.
    bytes[last + 100] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let m = Mount::new(&img, &mp, "").unwrap();
    // Mount point busy.
    let mp2 = s.mountpoint("mnt2");
    let other = s.path("other.img");
    run_ok(
        &bin("mkfs.csvfs"),
        &["--size", "64M", "-q", other.to_str().unwrap()],
    );
    let e = mount_error(&other, &mp);
    assert!(e.contains("busy"), "{e}");
    // The same LUN twice.
    let e = mount_error(&img, &mp2);
    assert!(e.contains("in use"), "{e}");
    m.unmount();
}
