//! `vmm migrate NAME --to NODE`: live migration. Starts the VM's process on the
//! destination node waiting for the VM, asks the source's VM process to send it, and
//! shows the pre-copy rounds as they go (round, dirty rate, bytes, time left).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use vmm::migration::source::{MigrateTo, Progress};
use vmm::runner::control::{self, Request, Response};

use super::lifecycle::{VmArgs, last_log_line, running_vm, spawn_vm_process};
use super::locate::{find_vm, node_root};

#[derive(Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// The node to move the VM to (it must run on this host).
    #[arg(long)]
    to: String,
    /// The longest pause of the guest allowed at the hand-over, in milliseconds.
    #[arg(long, default_value_t = 300)]
    downtime_ms: u64,
    /// Hash all of the guest's memory on both sides at the switch-over and refuse
    /// the move if they differ (adds the time of two hashes to the downtime).
    #[arg(long)]
    verify_memory: bool,
}

pub fn run(a: MigrateArgs) -> Result<()> {
    let vm = &a.vm;
    let (volume, dir) = find_vm(&vm.root, &vm.name, vm.volume.as_deref())?;
    let (from, socket, _, _) = running_vm(vm)?;
    let source_pid = vmm::runner::lease::running(&dir).map(|r| r.pid);
    if from == a.to {
        bail!("VM {} already runs on node {}", vm.name, a.to);
    }
    let dest_root = node_root(&vm.root, &a.to)?;
    let from_arg = ["--incoming-from", from.as_str()];
    let (mut child, run_dir, log) = spawn_vm_process(vm, &volume, &a.to, &dest_root, &from_arg)?;
    let addr_file = control::incoming_path(&run_dir, &vm.name);
    let _ = std::fs::remove_file(&addr_file);
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr: SocketAddr = loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the VM process on {} ended ({status}) before it could receive the VM: {}",
                a.to,
                last_log_line(&log)
            );
        }
        if let Ok(text) = std::fs::read_to_string(&addr_file)
            && let Ok(addr) = text.trim().parse()
        {
            break addr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the VM process on {} did not get ready within 30 s (see {})",
                a.to,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let tty = std::io::stdout().is_terminal();
    let mut show = |p: &Progress| print_progress(p, tty);
    let request = Request::Migrate {
        to: MigrateTo {
            node: a.to.clone(),
            addr,
            downtime_ms: a.downtime_ms,
            verify_memory: a.verify_memory,
        },
    };
    let answer = control::call_streaming(&socket, &request, Duration::from_secs(120), &mut show)
        .with_context(|| format!("cannot reach the VM process at {}", socket.display()));
    if tty {
        println!();
    }
    match answer {
        Ok(Response::Migrated(o)) => {
            // The source's process ends once it has answered.
            if let Some(pid) = source_pid {
                let deadline = Instant::now() + Duration::from_secs(30);
                while std::path::Path::new(&format!("/proc/{pid}")).exists()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.try_wait();
            if o.throttle_percent > 0 {
                println!(
                    "auto-converge: the rounds did not converge; the vCPU was throttled up to {}%",
                    o.throttle_percent
                );
            }
            if let Some(hash) = &o.memory_hash {
                println!("memory hash (blake3) at the switch-over, equal on both sides: {hash}");
            }
            println!(
                "migrated VM {} from {from} to {}: downtime {} ms, total {} ms, {} rounds, {} bytes ({} pages)",
                vm.name, a.to, o.downtime_ms, o.total_ms, o.rounds, o.bytes_sent, o.pages_sent
            );
            Ok(())
        }
        other => {
            // The VM goes on on the source: the waiting process goes.
            let _ = child.kill();
            let _ = child.wait();
            let why = match other {
                Ok(Response::Error { message }) => message,
                Ok(r) => format!("unexpected answer {r:?}"),
                Err(e) => format!("{e:#}"),
            };
            let now = match vmm::runner::lease::running(&dir) {
                Some(r) => format!("it runs on {}", r.node),
                None => format!(
                    "it runs nowhere now: `vmm start {}` starts it again",
                    vm.name
                ),
            };
            bail!(
                "migration of VM {} to {} failed: {why}; {now}",
                vm.name,
                a.to
            )
        }
    }
}

fn print_progress(p: &Progress, tty: bool) {
    let throttle = if p.throttle_percent > 0 {
        format!(", throttled {}%", p.throttle_percent)
    } else {
        String::new()
    };
    let line = format!(
        "round {:>2}: {:>6} pages, dirty {:>8.0} pages/s, {:>6.1} MiB sent, {:>7.1} MiB/s, next {:>6.1} MiB ~{} ms, {:.1} s{throttle}",
        p.round,
        p.pages,
        p.dirty_pages_per_s,
        p.bytes_sent as f64 / (1 << 20) as f64,
        p.bandwidth / (1 << 20) as f64,
        p.remaining_bytes as f64 / (1 << 20) as f64,
        p.estimated_ms,
        p.elapsed_ms as f64 / 1000.0
    );
    let mut out = std::io::stdout().lock();
    if tty {
        let _ = write!(out, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
