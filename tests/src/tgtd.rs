//! A private tgtd (the Linux SCSI target daemon, Debian package `tgt`) serving one
//! file-backed LUN over iSCSI on 127.0.0.1: the target of the initiator tests.
//!
//! Owns the daemon's whole life: picking its ports, starting it, configuring the target
//! with `tgtadm`, restarting it on the same ports, and stopping it for sure. Does not own
//! the backing image, which the test creates at the size it wants.
//!
//! What tgtd 1.0.85 does that shapes this file:
//! - The control channel is a unix socket named `$TGT_IPC_SOCKET.<control port>`
//!   (default `/var/run/tgtd/socket.<port>`), plus a `.lock` file beside it. The
//!   control port is a C `short`, so at most 32767, and names no TCP port. Each fixture
//!   points `TGT_IPC_SOCKET` into its own scratch directory, so instances never meet.
//! - The control channel answers only peers with uid 0 and gid 0.
//! - When it cannot bind the requested portal, tgtd logs it, still reports the iSCSI
//!   driver `ready`, and falls back to listening on `0.0.0.0:3260` and `[::]:3260`. The
//!   portal list is therefore checked after every start.
//! - SIGTERM is caught and ignored; the daemon exits on `tgtadm --op delete --mode
//!   system`, which it refuses while a target exists.
//! - The write cache (WCE in the caching mode page) is on by default, and SYNCHRONIZE
//!   CACHE makes the rdwr backing store `fdatasync` the image.

use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The message of every failure caused by tgt not being installed.
const NOT_INSTALLED: &str = "this test needs tgtd (apt-get install -y tgt)";
/// How long tgtd gets to answer its control channel after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long tgtd gets to exit once asked to, before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one tgtadm call may take before it is taken for hung.
const TGTADM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restart waits for its iSCSI port to become free again.
const PORT_FREE_TIMEOUT: Duration = Duration::from_secs(30);
/// The target id of the one target.
const TID: &str = "1";
/// The LUN number of the backing image (LUN 0 is tgtd's own controller).
const LUN: &str = "1";

/// Fails the test, with the reason, when this machine cannot run tgtd.
pub fn require_tgtd() {
    assert!(
        tgt_program("tgtd").is_some() && tgt_program("tgtadm").is_some(),
        "{NOT_INSTALLED}"
    );
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test runs tgtd, whose control channel answers only root"
    );
}

/// How the target is set up.
#[derive(Clone, Debug)]
pub struct TgtdOptions {
    /// An incoming CHAP account (user, secret) bound to the target, so initiators must
    /// authenticate; `None` lets any initiator in without authentication.
    pub chap: Option<(String, String)>,
    /// Whether the LUN reports a volatile write cache (WCE), which makes SYNCHRONIZE
    /// CACHE meaningful. tgtd's default, and ours, is on.
    pub write_cache: bool,
    /// Run tgtd in this network namespace (`/run/netns/NAME`, made by the test).
    pub netns: Option<String>,
    /// The address of the portal (127.0.0.1 unless the target runs in a namespace).
    pub address: Ipv4Addr,
}

impl Default for TgtdOptions {
    fn default() -> Self {
        TgtdOptions {
            chap: None,
            write_cache: true,
            netns: None,
            address: Ipv4Addr::LOCALHOST,
        }
    }
}

/// A tgtd daemon, a child of the test, serving the backing image as LUN 1 of one target
/// on 127.0.0.1. Stopped, and waited for, when dropped.
pub struct Tgtd {
    dir: tempfile::TempDir,
    backing: PathBuf,
    opts: TgtdOptions,
    iqn: String,
    port: u16,
    control_port: u16,
    child: Option<Child>,
    starts: u32,
}

/// Why a start did not give a daemon serving the requested portal.
#[derive(Debug)]
struct PortalNotBound(String);

impl Tgtd {
    /// Starts tgtd on free ports and sets up the target; `backing` must exist.
    pub fn start(backing: &Path, opts: TgtdOptions) -> Tgtd {
        require_tgtd();
        let backing = std::fs::canonicalize(backing).unwrap_or_else(|e| {
            panic!(
                "the backing image {} must exist before tgtd starts: {e}",
                backing.display()
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("csvfs-tgtd-")
            .tempdir_in("/var/tmp")
            .expect("tempdir for tgtd");
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let iqn = format!("iqn.2026-11.io.csvfs.test:p{}-t{n}", std::process::id());
        let mut tgtd = Tgtd {
            dir,
            backing,
            opts,
            iqn,
            port: 0,
            control_port: reserve_port(1024, 32767),
            child: None,
            starts: 0,
        };
        let (lo, hi) = iscsi_port_range();
        let mut failures = Vec::new();
        for _ in 0..10 {
            tgtd.port = reserve_port(lo, hi);
            match tgtd.launch() {
                Ok(()) => return tgtd,
                Err(PortalNotBound(why)) => {
                    // Another process took the port between the check and tgtd's bind.
                    tgtd.stop();
                    release_port(tgtd.port);
                    tgtd.port = 0;
                    failures.push(why);
                }
            }
        }
        panic!(
            "tgtd could not bind a free port in 10 tries: {failures:#?}\n{}",
            tgtd.log()
        );
    }

    /// The iSCSI TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The number in tgtd's control socket name (`-C`), private to this fixture.
    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    /// The target's IQN.
    pub fn iqn(&self) -> &str {
        &self.iqn
    }

    /// The LUN as an iSCSI URL: `iscsi://ADDRESS:PORT/IQN/1`.
    pub fn url(&self) -> String {
        format!(
            "iscsi://{}:{}/{}/{LUN}",
            self.opts.address, self.port, self.iqn
        )
    }

    /// The backing image file.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The LUN's URL with initiator name `iqn.2026-11.io.csvfs.test:<who>`.
    pub fn url_as(&self, who: &str) -> String {
        format!("{}?initiator=iqn.2026-11.io.csvfs.test:{who}", self.url())
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("tgtd is not running").id()
    }

    /// All tgtd printed since the fixture started, every start marked; for failure
    /// messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_else(|e| format!("(no tgtd log at {}: {e})", self.log_path().display()))
    }

    /// Runs `tgtadm` against this daemon (its control port and socket) with `args`.
    pub fn tgtadm(&self, args: &[&str]) -> Output {
        self.tgtadm_within(args, TGTADM_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "tgtadm {args:?} did not answer within {TGTADM_TIMEOUT:?}\n{}",
                self.log()
            )
        })
    }

    /// Runs `tgtadm` with `args`, which must succeed; returns its stdout.
    pub fn tgtadm_ok(&self, args: &[&str]) -> String {
        let out = self.tgtadm(args);
        assert!(
            out.status.success(),
            "tgtadm {args:?} failed ({}): {}{}\ntgtd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the daemon the orderly way and starts it again on the same ports with the
    /// same target, LUN and account: initiators see their connections end and the
    /// target come back.
    pub fn restart(&mut self) {
        self.stop();
        self.relaunch();
    }

    /// Kills the daemon with SIGKILL (a crash: no orderly logout, no cleanup) and starts
    /// it again on the same ports with the same target, LUN and account.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.relaunch();
    }

    /// Starts the daemon again on the port it had, once that port is free.
    fn relaunch(&mut self) {
        let deadline = Instant::now() + PORT_FREE_TIMEOUT;
        loop {
            while !port_is_free(self.port) {
                assert!(
                    Instant::now() < deadline,
                    "port {} did not become free within {PORT_FREE_TIMEOUT:?} for tgtd to restart\n{}",
                    self.port,
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            match self.launch() {
                Ok(()) => return,
                Err(PortalNotBound(why)) => {
                    self.stop();
                    assert!(
                        Instant::now() < deadline,
                        "tgtd could not restart on its port: {why}\n{}",
                        self.log()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Spawns tgtd on `self.port`, waits until it answers and sets up the target.
    fn launch(&mut self) -> Result<(), PortalNotBound> {
        assert!(self.child.is_none(), "tgtd is already running");
        let tgtd = tgt_program("tgtd").expect(NOT_INSTALLED);
        let portal = format!("portal={}:{}", self.opts.address, self.port);
        let control = self.control_port.to_string();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open tgtd log");
        self.starts += 1;
        writeln!(
            log,
            "--- start {}: {} -f -C {control} --iscsi {portal} (TGT_IPC_SOCKET={})",
            self.starts,
            tgtd.display(),
            self.ipc_socket().display()
        )
        .expect("write tgtd log");
        let mut cmd = match &self.opts.netns {
            // nsenter execs tgtd (no fork for a network namespace): the child is tgtd.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(&tgtd);
                c
            }
            None => Command::new(&tgtd),
        };
        cmd.args(["-f", "-C", &control, "--iscsi", &portal])
            .env("TGT_IPC_SOCKET", self.ipc_socket())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup tgtd log"))
            .stderr(log);
        self.child = Some(
            spawn_tied_to_process(cmd)
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", tgtd.display())),
        );

        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "tgtd exited ({status}) before answering tgtadm\n{}",
                    self.log()
                );
            }
            let answered = self
                .tgtadm_within(
                    &["--lld", "iscsi", "--mode", "system", "--op", "show"],
                    TGTADM_TIMEOUT,
                )
                .is_some_and(|out| out.status.success());
            if answered {
                break;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "tgtd did not answer tgtadm within {START_TIMEOUT:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        let portals = self.tgtadm_ok(&["--lld", "iscsi", "--mode", "portal", "--op", "show"]);
        let portals: Vec<&str> = portals.lines().map(str::trim).collect();
        if portals != [format!("Portal: {}:{},1", self.opts.address, self.port)] {
            return Err(PortalNotBound(format!(
                "asked for {}:{}, tgtd listens on {portals:?}",
                self.opts.address, self.port
            )));
        }
        self.configure();
        Ok(())
    }

    /// Creates the target, its LUN, its ACL and its account in a fresh daemon.
    fn configure(&self) {
        let backing = self.backing.to_str().expect("utf-8 backing path");
        let iscsi = |args: &[&str]| {
            let mut all = vec!["--lld", "iscsi"];
            all.extend_from_slice(args);
            self.tgtadm_ok(&all);
        };
        iscsi(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            TID,
            "--targetname",
            &self.iqn,
        ]);
        iscsi(&[
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            TID,
            "--lun",
            LUN,
            "--backing-store",
            backing,
            "--bstype",
            "rdwr",
        ]);
        if !self.opts.write_cache {
            // The caching mode page with WCE cleared, as tgt-admin writes `write-cache off`.
            iscsi(&[
                "--mode",
                "logicalunit",
                "--op",
                "update",
                "--tid",
                TID,
                "--lun",
                LUN,
                "--params",
                "mode_page=8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0",
            ]);
        }
        iscsi(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            TID,
            "--initiator-address",
            "ALL",
        ]);
        if let Some((user, secret)) = &self.opts.chap {
            iscsi(&[
                "--mode",
                "account",
                "--op",
                "new",
                "--user",
                user,
                "--password",
                secret,
            ]);
            iscsi(&[
                "--mode", "account", "--op", "bind", "--tid", TID, "--user", user,
            ]);
        }
    }

    /// Stops the daemon the orderly way, killing it (only it, by its own pid) if it
    /// does not exit in time, and reaps it.
    fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if self.exited().is_none() {
            let _ = self.tgtadm_within(
                &[
                    "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", TID, "--force",
                ],
                EXIT_TIMEOUT,
            );
            let _ = self.tgtadm_within(&["--op", "delete", "--mode", "system"], EXIT_TIMEOUT);
            let asked = Instant::now();
            while self.exited().is_none() && asked.elapsed() < EXIT_TIMEOUT {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut child = self.child.take().expect("child checked above");
        if matches!(child.try_wait(), Ok(None)) {
            eprintln!(
                "tgtd (pid {}) did not exit within {EXIT_TIMEOUT:?} of being asked to; killing it",
                child.id()
            );
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// The exit status of the daemon, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Runs tgtadm; `None` if it did not finish within `timeout` (it is then killed).
    fn tgtadm_within(&self, args: &[&str], timeout: Duration) -> Option<Output> {
        let tgtadm = tgt_program("tgtadm").expect(NOT_INSTALLED);
        // Files rather than pipes: nothing has to read while the clock runs.
        let mut stdout = tempfile::tempfile_in(self.dir.path()).expect("tgtadm stdout file");
        let mut stderr = tempfile::tempfile_in(self.dir.path()).expect("tgtadm stderr file");
        let mut child = Command::new(&tgtadm)
            .arg("-C")
            .arg(self.control_port.to_string())
            .args(args)
            .env("TGT_IPC_SOCKET", self.ipc_socket())
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().expect("dup"))
            .stderr(stderr.try_clone().expect("dup"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tgtadm.display()));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for tgtadm") {
                break status;
            }
            if started.elapsed() >= timeout {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Some(Output {
            status,
            stdout: read_all(&mut stdout),
            stderr: read_all(&mut stderr),
        })
    }

    /// The value of `TGT_IPC_SOCKET`: tgtd appends `.<control port>` to it.
    fn ipc_socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tgtd.log")
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
        release_port(self.port);
        release_port(self.control_port);
    }
}

/// A tgt program from PATH or the sbin directories (which a non-login PATH may lack).
fn tgt_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn read_all(f: &mut File) -> Vec<u8> {
    let mut buf = Vec::new();
    f.rewind().expect("rewind");
    f.read_to_end(&mut buf).expect("read tgtadm output");
    buf
}

/// Ports handed to fixtures of this process and not yet given back.
fn reserved_ports() -> &'static Mutex<HashSet<u16>> {
    static RESERVED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    RESERVED.get_or_init(Default::default)
}

/// A random free port in `lo..=hi` that no other fixture of this process holds.
pub(crate) fn reserve_port(lo: u16, hi: u16) -> u16 {
    let mut reserved = reserved_ports().lock().expect("port registry");
    for _ in 0..1000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = lo + (random % u64::from(hi - lo + 1)) as u16;
        if !reserved.contains(&port) && port_is_free(port) {
            reserved.insert(port);
            return port;
        }
    }
    panic!("no free port in {lo}..={hi} on 127.0.0.1");
}

fn release_port(port: u16) {
    reserved_ports()
        .lock()
        .expect("port registry")
        .remove(&port);
}

/// True when a listener could bind 127.0.0.1:`port` now. Like tgtd, std binds with
/// SO_REUSEADDR, so connections in TIME_WAIT do not count.
fn port_is_free(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok()
}

/// The ports tgtd may listen on: below the kernel's ephemeral range, so no outgoing
/// connection (an initiator's, say) can hold the port while tgtd restarts.
fn iscsi_port_range() -> (u16, u16) {
    let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let hi = ephemeral_lo.saturating_sub(1).max(20_000);
    (hi - 10_000, hi)
}

/// Spawns `cmd` so that it gets SIGKILL when the test process dies, even by SIGKILL.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so every child
/// is forked by one thread that lives as long as the process; a test that restarts the
/// target from a short-lived thread would otherwise lose the daemon with that thread.
pub(crate) fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("tgtd-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the tgtd spawner thread");
        tx
    });
    // SAFETY: the hook runs between fork and exec and only makes the prctl system
    // call, which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner
        .send((cmd, tx))
        .expect("the tgtd spawner thread is alive");
    rx.recv().expect("the tgtd spawner thread answers")
}
