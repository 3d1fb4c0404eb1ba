//! `vmm list`: every VM on the volumes this node mounts, where it runs, and (for those
//! on this host) what its guest reports.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use vmm::runner::control::{self, GuestReport, Request, Response};
use vmm::runner::{lease, saved};
use vmm::vm_config::{VM_CONFIG_FILE, VmConfig};

use super::locate::{all_vms, node_root};

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// This node's root directory, as `csvfs node --root`.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Serialize)]
struct VmRow {
    name: String,
    volume: String,
    /// "running", "paused", "saved", "stopped", or "lost" (its process on this host
    /// is gone without cleaning up; `vmm start` runs it again).
    state: String,
    node: Option<String>,
    pid: Option<u32>,
    memory_mib: Option<u64>,
    guest: Option<GuestReport>,
}

pub fn run(a: ListArgs) -> Result<()> {
    let mut rows = Vec::new();
    for (volume, name, dir) in all_vms(&a.root) {
        let memory_mib = VmConfig::load(&dir.join(VM_CONFIG_FILE))
            .ok()
            .map(|c| c.memory_mib);
        let running = lease::running(&dir);
        let mut row = VmRow {
            name: name.clone(),
            volume,
            state: "stopped".into(),
            node: None,
            pid: None,
            memory_mib,
            guest: None,
        };
        if let Some(r) = running {
            row.state = "running".into();
            if let Ok(root) = node_root(&a.root, &r.node) {
                let socket = control::socket_path(&control::run_dir(&root), &name);
                match control::call(&socket, &Request::Status, Duration::from_secs(5)) {
                    Ok(Response::Status { guest, state, .. }) => {
                        row.guest = Some(guest);
                        row.state = state;
                    }
                    // Its node is here but its process is not: it died without
                    // cleaning up (its lease went with it).
                    _ => row.state = "lost".into(),
                }
            }
            row.node = Some(r.node);
            row.pid = Some(r.pid);
        } else if saved::exists(&dir, &name) {
            row.state = "saved".into();
        }
        rows.push(row);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no VMs on the volumes under {}",
            a.root.join("ClusterStorage").display()
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<12} {:<10} {:<10} {:>8}  GUEST",
        "NAME", "VOLUME", "STATE", "NODE", "MEMORY"
    );
    for r in rows {
        println!(
            "{:<16} {:<12} {:<10} {:<10} {:>7}M  {}",
            r.name,
            r.volume,
            r.state,
            r.node.as_deref().unwrap_or("-"),
            r.memory_mib.map_or("?".into(), |m| m.to_string()),
            r.guest.map_or(String::new(), |g| format!(
                "counter {} records {} clock {} ms",
                g.counter, g.records, g.clock_ms
            ))
        );
    }
    Ok(())
}
