//! The VHDs vmm writes are the VHDs qemu-img reads, and the other way round: sizes
//! exact, contents identical to the raw source (`qemu-img compare`), fixed and dynamic,
//! including blocks qemu allocates in a disk vmm created.
//!
//! Needs qemu-img and qemu-io (Debian's qemu-utils, which tools/setup-deps installs):
//! without them the test fails, saying so.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use vmm::vhd::{DiskType, VhdImage};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install qemu-utils (tools/setup-deps)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn virtual_size(vhd: &Path) -> u64 {
    let json = run(
        "qemu-img",
        &[
            "info",
            "-f",
            "vpc",
            "--output=json",
            &vhd.display().to_string(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// A raw image of an odd size (not a multiple of the 2 MiB block) with data in some
/// places, zero runs between, and a last sector that holds data.
fn raw_source(path: &Path) -> Vec<u8> {
    let size = (21 << 20) + 7 * 512;
    let mut bytes = vec![0u8; size];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (at, len) in [
        (0usize, 4096usize),
        (3 << 20, 1 << 20),
        ((8 << 20) - 512, 1024),
        (size - 512, 512),
    ] {
        for b in &mut bytes[at..at + len] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn read_all(vhd: &Path) -> Vec<u8> {
    let img = VhdImage::open_path(vhd, true).unwrap_or_else(|e| panic!("{}: {e}", vhd.display()));
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn qemu_img_reads_vmm_disks_and_vmm_reads_qemu_img_disks() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let raw = raw_source(Path::new(&p("source.raw")));
    for (format, subformat) in [("vhd-fixed", "fixed"), ("vhd-dynamic", "dynamic")] {
        // vmm writes, qemu-img reads.
        let ours = p(&format!("ours-{subformat}.vhd"));
        run(
            VMM,
            &[
                "disk",
                "import",
                &p("source.raw"),
                &ours,
                "--format",
                format,
            ],
        );
        assert_eq!(virtual_size(Path::new(&ours)), raw.len() as u64, "{format}");
        run(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vpc", &p("source.raw"), &ours],
        );

        // qemu-img writes, vmm reads.
        let theirs = p(&format!("qemu-{subformat}.vhd"));
        let opts = format!("subformat={subformat},force_size=on");
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                &opts,
                &p("source.raw"),
                &theirs,
            ],
        );
        assert_eq!(
            read_all(Path::new(&theirs)),
            raw,
            "qemu-img's {subformat} VHD read by vmm"
        );
        let back = p(&format!("back-{subformat}.raw"));
        run(VMM, &["disk", "export", &theirs, &back]);
        assert!(
            std::fs::read(&back).unwrap() == raw,
            "vmm disk export of qemu-img's {subformat} VHD"
        );

        // Each writes into the other's disk, and both see the result.
        run(
            "qemu-io",
            &["-f", "vpc", "-c", "write -P 0x5a 12M 64k", &ours],
        );
        let mut expect = raw.clone();
        expect[12 << 20..(12 << 20) + 65536].fill(0x5a);
        assert_eq!(
            read_all(Path::new(&ours)),
            expect,
            "qemu-io's write into vmm's {subformat} VHD"
        );
        {
            let img = VhdImage::open_path(Path::new(&theirs), false).unwrap();
            img.write_at(&[0xa5u8; 8192], 17 << 20).unwrap();
            img.flush().unwrap();
        }
        let mut expect = raw.clone();
        expect[17 << 20..(17 << 20) + 8192].fill(0xa5);
        let want = p(&format!("want-{subformat}.raw"));
        File::create(&want)
            .unwrap()
            .write_all_at(&expect, 0)
            .unwrap();
        run(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vpc", &want, &theirs],
        );
    }
}

#[test]
fn created_disks_have_exactly_the_size_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    for size in ["4G", "10M", "1000M", "127G", "4097K"] {
        for format in ["vhd-fixed", "vhd-dynamic"] {
            let vhd = dir.path().join(format!("{size}-{format}.vhd"));
            let v = vhd.display().to_string();
            run(
                VMM,
                &["disk", "create", &v, "--size", size, "--format", format],
            );
            let want = blockdev::size::parse_size(size).unwrap();
            assert_eq!(virtual_size(&vhd), want, "{size} {format}");
            let info = run(VMM, &["disk", "info", &v, "--json"]);
            let j: serde_json::Value = serde_json::from_str(&info).unwrap();
            assert_eq!(j["size"].as_u64(), Some(want), "{info}");
            let kind = VhdImage::open_path(&vhd, true).unwrap().disk_type();
            let expected = if format == "vhd-fixed" {
                DiskType::Fixed
            } else {
                DiskType::Dynamic
            };
            assert_eq!(kind, expected);
            std::fs::remove_file(&vhd).unwrap();
        }
    }
}

#[test]
fn malformed_disks_are_refused_by_the_cli_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dir.path().join("d.vhd");
    let v = vhd.display().to_string();
    run(VMM, &["disk", "create", &v, "--size", "8M"]);
    let f = std::fs::OpenOptions::new().write(true).open(&vhd).unwrap();
    let len = f.metadata().unwrap().len();
    f.write_all_at(&[0xee], len - 512 + 20).unwrap();
    let out = Command::new(VMM)
        .args(["disk", "info", &v])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("checksum is wrong"), "{err}");
    for (args, says) in [
        (vec!["disk", "create", &v, "--size", "8M"], "exists"),
        (
            vec!["disk", "create", "/nonexistent/x.vhd", "--size", "8M"],
            "No such file",
        ),
        (
            vec!["disk", "create", "x.vhd", "--size", "1000"],
            "multiple of 512",
        ),
        (vec!["disk", "info", "/nonexistent.vhd"], "No such file"),
    ] {
        let out = Command::new(VMM)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
