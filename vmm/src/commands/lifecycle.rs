//! `vmm start`, `stop`, `save` and `restore`: a VM's process on a node of this host,
//! started detached (its own process group, its output in the run directory), and
//! reached through its control socket.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use vmm::runner::control::{self, Request, Response};
use vmm::runner::{lease, saved};

use super::locate::{find_vm, local_node, node_root};

/// How long a VM process may take to start or restore.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Which VM, and where this host's node is.
#[derive(Args)]
pub struct VmArgs {
    /// The VM's name.
    pub name: String,
    /// The volume holding the VM (default: whichever mounted volume has it).
    #[arg(long)]
    pub volume: Option<String>,
    /// This node's root directory, as `csvfs node --root` (volumes at
    /// <root>/ClusterStorage, control sockets at <root>/run/csvfs).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The cluster's configuration.
    #[arg(long, default_value_os_t = crate::default_config())]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct StartArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// The node to run it on (default: this node); it must run on this host.
    #[arg(long)]
    on: Option<String>,
}

/// `vmm start`.
pub fn start(a: StartArgs) -> Result<()> {
    launch(&a.vm, a.on.as_deref(), false)
}

/// `vmm restore`.
pub fn restore(a: StartArgs) -> Result<()> {
    launch(&a.vm, a.on.as_deref(), true)
}

fn launch(vm: &VmArgs, on: Option<&str>, restore: bool) -> Result<()> {
    let (volume, dir) = find_vm(&vm.root, &vm.name, vm.volume.as_deref())?;
    let node = match on {
        Some(n) => n.to_string(),
        None => local_node(&vm.root)?,
    };
    let root = node_root(&vm.root, &node)?;
    let save = if restore {
        Some(saved::info(&dir, &vm.name)?)
    } else {
        None
    };
    if let Some(r) = lease::running(&dir) {
        bail!(
            "VM {} is already running on node {} (process {})",
            vm.name,
            r.node,
            r.pid
        );
    }
    let (mut child, run_dir, log) = spawn_vm_process(
        vm,
        &volume,
        &node,
        &root,
        if restore { &["--restore"][..] } else { &[] },
    )?;
    let socket = control::socket_path(&run_dir, &vm.name);
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the VM process ended ({status}) before the VM ran: {}",
                last_log_line(&log)
            );
        }
        if let Ok(Response::Status { state, pid, .. }) =
            control::call(&socket, &Request::Status, Duration::from_secs(5))
            && state == "running"
            && pid == child.id()
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "VM {} did not start within {START_LIMIT:?} (see {})",
                vm.name,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match save {
        Some(info) => println!(
            "restored VM {} on node {node} (process {}); downtime {} ms since it was saved",
            vm.name,
            child.id(),
            saved::now_ms().saturating_sub(info.paused_at_ms)
        ),
        None => println!(
            "started VM {} on node {node} (process {}); console: vmm console {}",
            vm.name,
            child.id(),
            vm.name
        ),
    }
    Ok(())
}

/// Starts the VM process of `vm` on `node` (root `root`), detached, with `extra`
/// arguments; returns it, the node's VM run directory and the process's log.
pub fn spawn_vm_process(
    vm: &VmArgs,
    volume: &str,
    node: &str,
    root: &Path,
    extra: &[&str],
) -> Result<(std::process::Child, PathBuf, PathBuf)> {
    // The node mounts the volume under its own root: the VM process uses that path.
    let node_dir = root.join("ClusterStorage").join(volume).join(&vm.name);
    let run_dir = control::run_dir(root);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let log = control::log_path(&run_dir, &vm.name);
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(std::env::current_exe().context("cannot find the vmm executable")?)
        .arg("run")
        .arg("--vm-dir")
        .arg(&node_dir)
        .args(["--node", node])
        .arg("--node-root")
        .arg(root)
        .arg("--config")
        .arg(&vm.config)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .context("cannot start the VM process")?;
    Ok((child, run_dir, log))
}

/// The last line a VM process wrote to its log (its error, when it failed).
pub fn last_log_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim_start_matches("vmm: ").to_string()
}

/// The VM's node, control socket and run directory, found through where it says it
/// runs.
pub fn vm_socket(vm: &VmArgs) -> Result<(String, PathBuf, PathBuf)> {
    let (node, socket, run_dir, _) = running_vm(vm)?;
    Ok((node, socket, run_dir))
}

/// As [`vm_socket`], with the VM's directory.
pub fn running_vm(vm: &VmArgs) -> Result<(String, PathBuf, PathBuf, PathBuf)> {
    let (_, dir) = find_vm(&vm.root, &vm.name, vm.volume.as_deref())?;
    let Some(r) = lease::running(&dir) else {
        if saved::exists(&dir, &vm.name) {
            bail!(
                "VM {} is saved, not running: `vmm restore {}` resumes it",
                vm.name,
                vm.name
            );
        }
        bail!(
            "VM {} is not running: `vmm start {}` starts it",
            vm.name,
            vm.name
        );
    };
    let root = node_root(&vm.root, &r.node)?;
    let run_dir = control::run_dir(&root);
    Ok((
        r.node,
        control::socket_path(&run_dir, &vm.name),
        run_dir,
        dir,
    ))
}

/// Waits for the VM process to end (it answers before it lets the lease go).
pub fn wait_ended(vm: &VmArgs, dir: &Path) -> Result<()> {
    if !lease::VmLease::wait_released(dir, Duration::from_secs(60)) {
        bail!(
            "the process of VM {} did not end within 60 s after it stopped the VM",
            vm.name
        );
    }
    Ok(())
}

pub fn call(socket: &Path, request: &Request) -> Result<Response> {
    let r = control::call(socket, request, Duration::from_secs(120))
        .with_context(|| format!("cannot reach the VM process at {}", socket.display()))?;
    if let Response::Error { message } = r {
        bail!("{message}");
    }
    Ok(r)
}

/// `vmm stop`.
pub fn stop(vm: VmArgs) -> Result<()> {
    let (node, socket, _, dir) = running_vm(&vm)?;
    call(&socket, &Request::Stop)?;
    wait_ended(&vm, &dir)?;
    println!("stopped VM {} on node {node}", vm.name);
    Ok(())
}

/// `vmm save`.
pub fn save(vm: VmArgs) -> Result<()> {
    let (node, socket, _, dir) = running_vm(&vm)?;
    let answer = call(&socket, &Request::Save)?;
    wait_ended(&vm, &dir)?;
    match answer {
        Response::Saved {
            memory_bytes_written,
            save_ms,
        } => println!(
            "saved VM {} from node {node}: {memory_bytes_written} bytes of memory written in {save_ms} ms; \
             `vmm restore {} --on NODE` resumes it",
            vm.name, vm.name
        ),
        other => bail!("unexpected answer from the VM process: {other:?}"),
    }
    Ok(())
}
