//! `csvfs mount`: open a LUN, check it, mount it, serve it until it is unmounted.
//!
//! By default the command returns once the mount is live, as mount(8) expects of a
//! helper, and the daemon carries on in the background; every error before that point
//! is printed by the command itself, on one line, with a non-zero exit.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use metadata::{OpenOptions, Volume};

use crate::fuse_fs::CsvFs;
use crate::meta::Meta;
use crate::options::MountOptions;

/// What `csvfs mount` was asked to do.
#[derive(Debug, Clone)]
pub struct MountRequest {
    /// The LUN: an image file or a block device.
    pub lun: String,
    /// Where to mount; default `/ClusterStorage/<label>`.
    pub mountpoint: Option<PathBuf>,
    /// `-o` options.
    pub options: MountOptions,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Log file of the background daemon.
    pub log: Option<PathBuf>,
}

/// True when `path` is a mount point already.
pub(crate) fn is_mount_point(path: &Path) -> Result<bool> {
    let canon = std::fs::canonicalize(path)?;
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mount_path) == Some(canon.display().to_string())))
}

fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Opens and checks everything, mounts, and returns the session ready to run.
fn prepare(req: &MountRequest) -> Result<(fuser::Session<CsvFs>, Arc<Volume>, PathBuf)> {
    let dev = blockdev::open_lun_exclusive(&req.lun, req.options.read_only)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The mount's source name: the image or device path, or the URL without credentials.
    let source = std::fs::canonicalize(&req.lun)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| dev.name().to_string());
    let opts = OpenOptions {
        read_only: req.options.read_only,
        ..OpenOptions::default()
    };
    let vol = Arc::new(
        Volume::open(dev, &opts).map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", req.lun))?,
    );
    let mountpoint = match &req.mountpoint {
        Some(m) => m.clone(),
        None => {
            let m = PathBuf::from("/ClusterStorage").join(&vol.superblock().label);
            std::fs::create_dir_all(&m)
                .with_context(|| format!("creating mount point {}", m.display()))?;
            m
        }
    };
    let meta = std::fs::metadata(&mountpoint)
        .map_err(|e| anyhow::anyhow!("mount point {}: {e}", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if is_mount_point(&mountpoint)? {
        bail!(
            "mount point {} is busy: something is mounted there already; unmount it first",
            mountpoint.display()
        );
    }
    let canon = std::fs::canonicalize(&mountpoint)?;
    let mut config = fuser::Config::default();
    config.mount_options = req.options.fuse_options(&source);
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(req.options.threads);
    config.clone_fd = true;
    let fs = CsvFs::new(
        Meta::local(vol.clone()),
        vol.device().clone(),
        req.options.writeback && !req.options.read_only,
        false,
    );
    let session = fuser::Session::new(fs, &canon, &config)
        .map_err(|e| anyhow::anyhow!("cannot mount {} on {}: {e}", req.lun, canon.display()))?;
    Ok((session, vol, canon))
}

/// Unmounts `mountpoint` when SIGTERM, SIGINT or SIGHUP arrives, which ends the session.
fn unmount_on_signal(mountpoint: &Path) -> Result<()> {
    // SAFETY: sigset manipulation on a local set; blocking the signals in this thread
    // before any other thread starts makes every later thread inherit the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let target = CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    std::thread::Builder::new()
        .name("csvfs-signals".into())
        .spawn(move || {
            // SAFETY: as above; sigwait fills `sig` from the blocked set.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                    libc::sigaddset(&mut set, s);
                }
                let mut sig = 0;
                libc::sigwait(&set, &mut sig);
                tracing::info!(signal = sig, "unmounting on signal");
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        })?;
    Ok(())
}

fn serve(session: fuser::Session<CsvFs>, vol: Arc<Volume>, mountpoint: &Path) -> Result<()> {
    tracing::info!(mountpoint = %mountpoint.display(), label = %vol.superblock().label, "mounted");
    let result = session.run();
    vol.close()
        .map_err(|e| anyhow::anyhow!("final commit failed: {e}"))?;
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    result.map_err(|e| anyhow::anyhow!("FUSE session ended with an error: {e}"))
}

fn init_logging(log: Option<&Path>) -> Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CSVFS_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match log {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder.with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// Runs `csvfs mount`.
pub fn run(req: MountRequest) -> Result<()> {
    if req.foreground {
        init_logging(req.log.as_deref())?;
        let (session, vol, mp) = prepare(&req)?;
        unmount_on_signal(&mp)?;
        return serve(session, vol, &mp);
    }
    // Fork before any thread exists; the parent waits for the child's word.
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fds are fresh descriptors owned by nobody else.
    let (mut rd, mut wr) = unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
            std::fs::File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    };
    // SAFETY: the process is single-threaded here.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: setsid in the child detaches it from the terminal's session.
            unsafe { libc::setsid() };
            let log = req
                .log
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/log/csvfs/csvfs.log"));
            let outcome = init_logging(Some(&log)).and_then(|()| prepare(&req));
            match outcome {
                Ok((session, vol, mp)) => {
                    let _ = wr.write_all(b"OK");
                    drop(wr);
                    redirect_stdio();
                    if let Err(e) = unmount_on_signal(&mp).and_then(|()| serve(session, vol, &mp)) {
                        tracing::error!(error = %e, "daemon stopped");
                        std::process::exit(1);
                    }
                    std::process::exit(0);
                }
                Err(e) => {
                    let _ = wr.write_all(format!("{e:#}").as_bytes());
                    std::process::exit(1);
                }
            }
        }
        _child => {
            drop(wr);
            let mut msg = String::new();
            rd.read_to_string(&mut msg)?;
            if msg == "OK" {
                Ok(())
            } else if msg.is_empty() {
                bail!("the csvfs daemon died before the mount was ready; see its log")
            } else {
                bail!("{msg}")
            }
        }
    }
}

fn redirect_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
