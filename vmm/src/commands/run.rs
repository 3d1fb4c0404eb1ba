//! `vmm run`: the VM process itself, started by `vmm start` and `vmm restore` (not
//! meant to be typed).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vmm::runner::{RunOptions, run as run_vm};

#[derive(Args)]
pub struct RunArgs {
    /// The VM's directory on the volume, as this node mounts it.
    #[arg(long)]
    vm_dir: PathBuf,
    /// This node's name.
    #[arg(long)]
    node: String,
    /// This node's root directory.
    #[arg(long)]
    node_root: PathBuf,
    /// Resume from the VM's save instead of booting.
    #[arg(long)]
    restore: bool,
    /// Receive the VM by live migration from this node instead of booting.
    #[arg(long)]
    incoming_from: Option<String>,
    /// The cluster's configuration.
    #[arg(long, default_value_os_t = crate::default_config())]
    config: PathBuf,
}

pub fn run(a: RunArgs) -> Result<()> {
    run_vm(RunOptions {
        vm_dir: a.vm_dir,
        node: a.node,
        node_root: a.node_root,
        restore: a.restore,
        incoming_from: a.incoming_from,
        cluster_config: a.config,
    })
}
