//! Fixtures of the integration tests: the binaries under test, scratch LUNs, mounts
//! that unmount themselves, and the check that the machine can run real mounts; an
//! iSCSI target ([`tgtd`]) and a proxy that cuts TCP connections ([`tcp_cut`]).
//!
//! Tests that need root, FUSE or tgtd do not skip: without them they fail, saying why.

pub mod cluster;
pub mod netns;
pub mod quic_bulk;
pub mod tcp_cut;
pub mod tgtd;
pub mod vmm;

pub use tgtd::require_tgtd;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails the test, with the reason, when this machine cannot run real mounts.
pub fn require_root_and_fuse() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test mounts file systems and must run as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test needs /dev/fuse (modprobe fuse)"
    );
}

/// The directory that holds the binaries built with the tests.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CSVFS_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test> → target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The path of a program under test: csvfs, csvctl, or one of the link names
/// mkfs.csvfs, fsck.csvfs, mount.fuse.csvfs.
pub fn bin(name: &str) -> PathBuf {
    let dir = bin_dir();
    let real = match name {
        "mkfs.csvfs" | "fsck.csvfs" | "csvctl" => "csvctl",
        "mount.fuse.csvfs" | "csvfs" => "csvfs",
        other => other,
    };
    let target = dir.join(real);
    assert!(
        target.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins, with the same profile as the tests)",
        target.display()
    );
    if name == real {
        return target;
    }
    let links = dir.join("links");
    std::fs::create_dir_all(&links).expect("create links dir");
    let link = links.join(name);
    // Tests run in parallel: make the link under a private name and rename it into place.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let tmp = links.join(format!(".{name}.{}.{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).expect("symlink");
    std::fs::rename(&tmp, &link).expect("rename link into place");
    link
}

/// Runs a program and returns its output.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// What a finished program printed: its stdout, then its stderr.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a program that must succeed; returns its stdout.
pub fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {:?} failed: {}\n{}",
        program.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory with an image-file LUN and a mount point.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    /// A new scratch directory under /var/tmp (a disk, where O_DIRECT works).
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("csvfs-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        Scratch { dir }
    }
    /// A path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The image file.
    pub fn image(&self) -> PathBuf {
        self.path("lun.img")
    }
    /// A fresh mount point directory.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).expect("mkdir mountpoint");
        p
    }
    /// Formats the image with `size` and extra mkfs arguments.
    pub fn mkfs(&self, size: &str, extra: &[&str]) {
        let img = self.image();
        let mut args = vec!["--size", size, "-q"];
        args.extend_from_slice(extra);
        args.push(img.to_str().expect("utf-8 path"));
        run_ok(&bin("mkfs.csvfs"), &args);
    }
}

/// True when `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap_or("")))
}

/// Waits until no csvfs daemon holds the LUN (its host lock is free).
pub fn wait_lun_free(lun: &Path, timeout: Duration) {
    let lock = blockdev::host_lock_path(lun.to_str().expect("utf-8")).expect("LUN name");
    let Ok(f) = std::fs::File::open(&lock) else {
        // An iSCSI LUN's lock file exists only once something has locked it.
        return;
    };
    let start = Instant::now();
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "the csvfs daemon of {} did not exit within {timeout:?}",
            lun.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A live mount that is unmounted (and its daemon waited for) when dropped.
pub struct Mount {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    lun: PathBuf,
    child: Option<Child>,
}

impl Mount {
    /// Mounts with `csvfs mount LUN DIR -o OPTS` (the command returns once live).
    pub fn new(lun: &Path, mountpoint: &Path, opts: &str) -> Result<Mount, String> {
        let mut args = vec![
            "mount",
            lun.to_str().expect("utf-8"),
            mountpoint.to_str().expect("utf-8"),
        ];
        if !opts.is_empty() {
            args.extend_from_slice(&["-o", opts]);
        }
        let out = run(&bin("csvfs"), &args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Mount {
            mountpoint: mountpoint.to_path_buf(),
            lun: lun.to_path_buf(),
            child: None,
        })
    }

    /// Mounts with the daemon in the foreground as a child of the test, so the test
    /// can kill it.
    pub fn foreground(lun: &Path, mountpoint: &Path, log: &Path) -> Mount {
        let child = Command::new(bin("csvfs"))
            .args([
                "mount",
                "-f",
                lun.to_str().expect("utf-8"),
                mountpoint.to_str().expect("utf-8"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn csvfs");
        let start = Instant::now();
        while !is_mounted(mountpoint) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "csvfs did not mount within 20 s; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Mount {
            mountpoint: mountpoint.to_path_buf(),
            lun: lun.to_path_buf(),
            child: Some(child),
        }
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// SIGKILLs the daemon (a crash) and detaches the dead mount.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run(
            Path::new("umount"),
            &["-l", self.mountpoint.to_str().expect("utf-8")],
        );
        wait_lun_free(&self.lun, Duration::from_secs(20));
    }

    /// Unmounts and waits for the daemon to finish its last commit.
    pub fn unmount(mut self) {
        self.do_unmount();
    }

    fn do_unmount(&mut self) {
        if is_mounted(&self.mountpoint) {
            let out = run(
                Path::new("umount"),
                &[self.mountpoint.to_str().expect("utf-8")],
            );
            if !out.status.success() {
                let _ = run(
                    Path::new("umount"),
                    &["-l", self.mountpoint.to_str().expect("utf-8")],
                );
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        wait_lun_free(&self.lun, Duration::from_secs(30));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.do_unmount();
    }
}

/// fsck.csvfs on a LUN: (exit code, output).
pub fn fsck(lun: &Path, repair: bool) -> (i32, String) {
    let mut args = vec![];
    if repair {
        args.push("--repair");
    }
    args.push(lun.to_str().expect("utf-8"));
    let out = run(&bin("fsck.csvfs"), &args);
    let text = output_text(&out);
    (out.status.code().unwrap_or(-1), text)
}

/// Asserts that fsck finds nothing wrong.
pub fn assert_fsck_clean(lun: &Path) {
    let (code, text) = fsck(lun, false);
    assert_eq!(code, 0, "fsck is not clean:\n{text}");
}

/// The path of an external test program (fsx, pjdfstest), from PATH or ~/.cargo/bin.
pub fn external(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists()).unwrap_or_else(|| {
        panic!("{name} is not installed: run tools/setup-deps (cargo install fsx@0.3.2 pjdfstest@0.2.2 --locked)")
    })
}

/// A file of the test configurations in tests/conf.
pub fn conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(name)
}

/// A number from the environment, or a default (the CI and long forms of a check).
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of benchmark samples (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Runs fsx with the project's configuration on `file` for `ops` operations.
pub fn run_fsx(file: &Path, seed: u64, ops: u64) -> (bool, String) {
    let artifacts = std::env::temp_dir();
    let out = Command::new(external("fsx"))
        .args([
            "-f",
            conf("fsx.toml").to_str().expect("utf-8"),
            "-N",
            &ops.to_string(),
            "-S",
            &seed.to_string(),
        ])
        .arg("-P")
        .arg(&artifacts)
        .arg(file)
        .output()
        .expect("run fsx");
    let text = output_text(&out);
    (
        out.status.success() && text.contains("All operations completed A-OK!"),
        text,
    )
}

/// Runs pjdfstest in `dir`; returns (summary line, whole output).
pub fn run_pjdfstest(dir: &Path) -> (String, String) {
    for (user, what) in [("tests", "user"), ("nobody", "user")] {
        let ok = Command::new("getent")
            .args(["passwd", user])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "pjdfstest needs the {what} {user:?}: run tools/setup-deps"
        );
    }
    let out = Command::new(external("pjdfstest"))
        .args(["-c", conf("pjdfstest.toml").to_str().expect("utf-8"), "-p"])
        .arg(dir)
        .current_dir(dir)
        .output()
        .expect("run pjdfstest");
    let text = output_text(&out);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("no summary")
        .to_string();
    (summary, text)
}

/// Runs pjdfstest in a fresh world-writable directory `dir` (made here) under a deep
/// mount point: pjdfstest binds Unix sockets under the directory it is given, and a
/// socket path has at most 107 bytes, so it is given a short link to `dir`.
pub fn run_pjdfstest_in_new_dir(dir: &Path) -> (String, String) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let link = PathBuf::from(format!("/tmp/csvfs-pjd-{}-{n}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir, &link).unwrap();
    let r = run_pjdfstest(&link);
    let _ = std::fs::remove_file(&link);
    r
}

/// Runs pjdfstest in a fresh world-writable directory of the mount and asserts 0 failed.
pub fn assert_pjdfstest_passes(m: &Mount) {
    use std::os::unix::fs::PermissionsExt;
    let dir = m.path("pjd");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (summary, text) = run_pjdfstest(&dir);
    println!("pjdfstest: {summary}");
    assert!(
        summary.starts_with("Summary: 0 failed"),
        "pjdfstest failed:\n{text}"
    );
}

/// Runs fsx with seeds 1, 2 and 3 at once on the mount, `ops` operations each, and
/// asserts that all three end A-OK.
pub fn assert_fsx_three_seeds(m: &Mount, ops: u64) {
    let start = Instant::now();
    let runs: Vec<_> = (1..=3u64)
        .map(|seed| {
            let file = m.path(&format!("fsx.{seed}"));
            std::thread::spawn(move || (seed, run_fsx(&file, seed, ops)))
        })
        .collect();
    for r in runs {
        let (seed, (ok, text)) = r.join().unwrap();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        assert!(
            ok,
            "fsx seed {seed} failed:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        println!("fsx seed {seed}: {ops} operations A-OK");
    }
    println!("fsx: 3 seeds x {ops} operations in {:?}", start.elapsed());
}
