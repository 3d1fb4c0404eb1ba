//! A full volume: filling the data region, and separately the metadata region, gives
//! ENOSPC and nothing else; fsck stays clean; deleting files makes room at once.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use csvfs_tests::*;

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer with its length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes 1 MiB chunks to `path` until the volume is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xabu8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "a full data region gives ENOSPC, not {e}"
                );
                return written;
            }
        }
    }
}

#[test]
fn full_data_region_gives_enospc_and_space_comes_back() {
    require_root_and_fuse();
    let s = Scratch::new();
    s.mkfs("64M", &["--metadata-size", "16M"]);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    std::fs::write(m.path("keep"), b"precious").unwrap();
    let written = fill(&m.path("fill"));
    assert!(written > 40 << 20, "only {written} bytes fit");
    // Small writes and fallocate fail the same way.
    let err = std::fs::write(m.path("more"), vec![1u8; 100_000]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let out = run(
        Path::new("fallocate"),
        &["-l", "10M", m.path("pre").to_str().unwrap()],
    );
    assert!(!out.status.success());
    m.unmount();
    assert_fsck_clean(&s.image());
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    assert_eq!(std::fs::read(m.path("keep")).unwrap(), b"precious");
    assert_eq!(std::fs::metadata(m.path("fill")).unwrap().len(), written);
    std::fs::remove_file(m.path("fill")).unwrap();
    // Room again, straight away.
    std::fs::write(m.path("after"), vec![7u8; 30 << 20]).unwrap();
    m.unmount();
    assert_fsck_clean(&s.image());
}

#[test]
fn full_metadata_region_gives_enospc_and_deleting_makes_room() {
    require_root_and_fuse();
    let s = Scratch::new();
    s.mkfs("256M", &["--metadata-size", "16M"]);
    let mp = s.mountpoint("mnt");
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    let value = vec![0x5au8; 60_000];
    let mut created = 0;
    let err = loop {
        let p = m.path(&format!("f{created}"));
        if let Err(e) = std::fs::write(&p, b"x") {
            break e;
        }
        if let Err(e) = set_xattr(&p, "user.big", &value) {
            break e;
        }
        created += 1;
        assert!(created < 100_000, "the metadata region never filled");
    };
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "a full metadata region gives ENOSPC, not {err}"
    );
    assert!(created > 100, "only {created} files fit");
    m.unmount();
    assert_fsck_clean(&s.image());
    let m = Mount::new(&s.image(), &mp, "").unwrap();
    for i in 0..created {
        assert_eq!(std::fs::read(m.path(&format!("f{i}"))).unwrap(), b"x");
    }
    for i in 0..created / 2 {
        std::fs::remove_file(m.path(&format!("f{i}"))).unwrap();
    }
    for i in 0..10 {
        let p = m.path(&format!("g{i}"));
        std::fs::write(&p, b"y").unwrap();
        set_xattr(&p, "user.big", &value).unwrap();
    }
    m.unmount();
    assert_fsck_clean(&s.image());
}
