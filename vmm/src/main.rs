//! `vmm`: create VMs whose disks live on a shared csvfs volume, and manage their VHD
//! disks.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Virtual machines on csvfs shared volumes.
#[derive(Parser)]
#[command(name = "vmm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a VM on a volume: its directory, vm.toml and VHD disk.
    Create(commands::create::CreateArgs),
    /// Create, import, export and inspect VHD disks.
    #[command(subcommand)]
    Disk(commands::disk::DiskCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Create(args) => commands::create::run(args),
        Command::Disk(cmd) => commands::disk::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where `cluster.toml` is unless `--config` says otherwise.
fn default_config() -> PathBuf {
    PathBuf::from(lockmgr::DEFAULT_CONFIG_PATH)
}
