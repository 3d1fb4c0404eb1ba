//! The VM process (`vmm run`, started by `vmm start` and `vmm restore`): one per
//! running VM. It takes the VM lease, opens the VM's disk on the volume, boots or
//! restores the guest, and serves its control socket until it is told to stop or to
//! save; the lease goes when the process ends, however it ends.

pub mod control;
pub mod lease;
pub mod saved;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::machine::memory::snapshot;
use crate::machine::{Machine, RunState, state_codec};
use crate::migration::destination::{Incoming, Listener};
use crate::migration::source::{MigrateTo, Outcome, Progress, migrate_out};
use crate::test_guest::TestGuestParams;
use crate::vhd::VhdImage;
use crate::vm_config::{Boot, VM_CONFIG_FILE, VmConfig};
use control::{GuestReport, Request, Response};
use lease::VmLease;
use saved::SaveInfo;

/// What `vmm run` is told.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The VM's directory on the volume (vm.toml and the disk).
    pub vm_dir: PathBuf,
    /// This node's name.
    pub node: String,
    /// This node's root directory (`csvfs node --root`).
    pub node_root: PathBuf,
    /// Resume the VM from its save instead of booting it.
    pub restore: bool,
    /// Receive the VM by live migration from this node instead of booting it.
    pub incoming_from: Option<String>,
    /// The cluster's configuration (for migration: nodes, certificates).
    pub cluster_config: PathBuf,
}

/// How often the test guest writes a disk record and prints its progress.
const TEST_GUEST_RECORD_MS: u64 = 100;
const TEST_GUEST_PRINT_MS: u64 = 1000;

/// The VM process's body: returns when the VM has been stopped or saved.
pub fn run(opts: RunOptions) -> Result<()> {
    let config = VmConfig::load(&opts.vm_dir.join(VM_CONFIG_FILE))?;
    let name = config.name.clone();
    let run_dir = control::run_dir(&opts.node_root);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))?;
    let disk_path = opts.vm_dir.join(&config.disk.file);
    let console_path = control::console_path(&run_dir, &name);
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console_path)
        .with_context(|| format!("cannot open the console log {}", console_path.display()))?;
    if let Some(from) = &opts.incoming_from {
        return run_incoming(&opts, &config, from, &run_dir, Box::new(console));
    }
    let lease = VmLease::take(&opts.vm_dir, &name, &opts.node)?;
    let disk = VhdImage::open_path(&disk_path, false)
        .with_context(|| format!("cannot open the disk {}", disk_path.display()))?;
    let mut machine = if opts.restore {
        let (_, state, memory) = saved::read(&opts.vm_dir, &name)?;
        let state = state_codec::decode(&state)?;
        if state.memory_bytes != config.memory_mib << 20 {
            bail!(
                "the save of VM {name} has {} MiB of memory, its vm.toml says {} MiB",
                state.memory_bytes >> 20,
                config.memory_mib
            );
        }
        Machine::restore(&state, &memory, Box::new(console), disk)?
    } else {
        if saved::exists(&opts.vm_dir, &name) {
            bail!(
                "VM {name} is saved: resume it with `vmm restore {name}` (starting it would lose its saved memory)"
            );
        }
        let m = Machine::new(config.memory_mib << 20, Box::new(console), disk)?;
        match &config.boot {
            Boot::TestGuest { dirty_mib_per_s } => m.load_test_guest(&TestGuestParams {
                dirty_bytes_per_s: (*dirty_mib_per_s as u64) << 20,
                record_every_ms: TEST_GUEST_RECORD_MS,
                print_every_ms: TEST_GUEST_PRINT_MS,
            })?,
            Boot::Linux {
                kernel,
                initramfs,
                cmdline,
            } => {
                // Paths in vm.toml are relative to the VM's directory.
                let initramfs = initramfs.as_ref().map(|i| opts.vm_dir.join(i));
                m.load_linux(&opts.vm_dir.join(kernel), initramfs.as_deref(), cmdline)?
            }
        }
        m
    };
    machine.start()?;
    if opts.restore {
        saved::remove(&opts.vm_dir, &name);
    }
    eprintln!(
        "vmm: VM {name} {} on node {} (process {})",
        if opts.restore { "restored" } else { "started" },
        opts.node,
        std::process::id()
    );
    serve_until_done(machine, Some(lease), &config, &opts, &run_dir)
}

/// The destination of a live migration: waits for the source, receives the VM,
/// and serves it like any other.
fn run_incoming(
    opts: &RunOptions,
    config: &VmConfig,
    from: &str,
    run_dir: &std::path::Path,
    console: crate::devices::serial::ConsoleSink,
) -> Result<()> {
    let cluster = lockmgr::Config::load(&opts.cluster_config)?;
    let listener = Listener::bind(&cluster, &opts.node)?;
    let addr = listener.addr()?;
    let addr_file = control::incoming_path(run_dir, &config.name);
    std::fs::write(&addr_file, addr.to_string())
        .with_context(|| format!("cannot write {}", addr_file.display()))?;
    let disk = opts.vm_dir.join(&config.disk.file);
    let incoming = Incoming {
        vm: &config.name,
        memory_bytes: config.memory_mib << 20,
        vm_dir: &opts.vm_dir,
        disk: &disk,
        node: &opts.node,
        from,
    };
    let received = listener.receive(&incoming, console);
    let _ = std::fs::remove_file(&addr_file);
    let (machine, lease) = received?;
    eprintln!(
        "vmm: VM {} migrated in from node {from}, running on node {} (process {})",
        config.name,
        opts.node,
        std::process::id()
    );
    serve_until_done(machine, Some(lease), config, opts, run_dir)
}

/// Serves the control socket of the running `machine` until it is stopped, saved or
/// migrated away; then stops it and lets the lease go.
fn serve_until_done(
    mut machine: Machine,
    mut lease: Option<VmLease>,
    config: &VmConfig,
    opts: &RunOptions,
    run_dir: &std::path::Path,
) -> Result<()> {
    let name = &config.name;
    let socket = control::socket_path(run_dir, name);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let result = serve(&listener, &mut machine, &mut lease, config, opts);
    let _ = std::fs::remove_file(&socket);
    machine.stop();
    let _ = machine.devices().blk.disk().flush();
    drop(machine);
    drop(lease);
    result
}

/// Answers control requests until one ends the VM.
fn serve(
    listener: &UnixListener,
    machine: &mut Machine,
    lease: &mut Option<VmLease>,
    config: &VmConfig,
    opts: &RunOptions,
) -> Result<()> {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(Some(request)) = read_request(&stream) else {
            continue;
        };
        let (response, done) = match request {
            Ok(Request::Status) => (status(machine, config, opts), false),
            Ok(Request::Stop) => {
                let _ = machine.pause();
                machine.stop();
                match machine.devices().blk.disk().flush() {
                    Ok(()) => (Response::Stopped, true),
                    Err(e) => (error(format!("the disk could not be flushed: {e}")), true),
                }
            }
            Ok(Request::Save) => match save(machine, config, opts) {
                Ok(r) => (r, true),
                Err(e) => {
                    // Nothing is lost: the VM goes on here.
                    let _ = machine.resume();
                    (error(format!("{e:#}")), false)
                }
            },
            Ok(Request::Migrate { to }) => {
                match migrate(machine, lease, config, opts, &to, &stream) {
                    Ok(outcome) => {
                        machine.stop();
                        (Response::Migrated(outcome), true)
                    }
                    Err(e) => (error(format!("{e:#}")), false),
                }
            }
            Err(message) => (error(message), false),
        };
        let _ = write_response(&stream, &response);
        if done {
            return Ok(());
        }
    }
    Ok(())
}

fn migrate(
    machine: &Machine,
    lease: &mut Option<VmLease>,
    config: &VmConfig,
    opts: &RunOptions,
    to: &MigrateTo,
    stream: &UnixStream,
) -> Result<Outcome> {
    let cluster = lockmgr::Config::load(&opts.cluster_config)?;
    let retake = || VmLease::take(&opts.vm_dir, &config.name, &opts.node).ok();
    let mut progress = |p: &Progress| {
        let _ = write_response(stream, &Response::Progress(*p));
    };
    let outcome = migrate_out(
        machine,
        lease,
        &retake,
        &cluster,
        &opts.node,
        &config.name,
        to,
        &mut progress,
    )?;
    eprintln!(
        "vmm: VM {} migrated to node {}: downtime {} ms, {} rounds, {} bytes",
        config.name, to.node, outcome.downtime_ms, outcome.rounds, outcome.bytes_sent
    );
    Ok(outcome)
}

fn save(machine: &mut Machine, config: &VmConfig, opts: &RunOptions) -> Result<Response> {
    machine.pause()?;
    let paused_at_ms = saved::now_ms();
    let state = state_codec::encode(&machine.save()?);
    let memory = snapshot(machine.ram());
    machine.devices().blk.disk().flush()?;
    let info = SaveInfo {
        paused_at_ms,
        memory_bytes: memory.len() as u64,
    };
    let written = saved::write(&opts.vm_dir, &config.name, &state, &memory, info)?;
    machine.stop();
    Ok(Response::Saved {
        memory_bytes_written: written,
        save_ms: saved::now_ms() - paused_at_ms,
    })
}

fn status(machine: &Machine, config: &VmConfig, opts: &RunOptions) -> Response {
    let g = machine.test_guest_status();
    let state = match machine.run_state() {
        RunState::Running => "running".to_string(),
        RunState::Paused | RunState::PauseRequested => "paused".to_string(),
        RunState::Stopped(why) => format!("stopped: {why}"),
        other => format!("{other:?}").to_lowercase(),
    };
    Response::Status {
        vm: config.name.clone(),
        node: opts.node.clone(),
        pid: std::process::id(),
        state,
        memory_mib: config.memory_mib,
        guest: GuestReport {
            counter: g.counter,
            records: g.records,
            clock_ms: g.clock_ms,
            pages_dirtied: g.pages_dirtied,
        },
        disk_requests: machine.devices().blk.requests,
    }
}

fn error(message: String) -> Response {
    Response::Error { message }
}

/// One request line: `Ok(None)` when the client went away without one.
fn read_request(stream: &UnixStream) -> std::io::Result<Option<Result<Request, String>>> {
    let mut line = String::new();
    if BufReader::new(stream).read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_str(&line).map_err(|e| format!("bad control request: {e}")),
    ))
}

fn write_response(mut stream: &UnixStream, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(response).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())
}
