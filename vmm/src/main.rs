//! `vmm`: create VMs whose disks live on a shared csvfs volume, and manage their VHD
//! disks.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Start a VM on this node (or --on another node of this host).
    Start(commands::lifecycle::StartArgs),
    /// Stop a running VM (its disk flushed).
    Stop(commands::lifecycle::VmArgs),
    /// List the VMs on the mounted volumes: state, node, guest progress.
    List(commands::list::ListArgs),
    /// Print what a VM's guest printed on its serial console (--follow for more).
    Console(commands::console::ConsoleArgs),
    /// Quick migration, first half: write a running VM's memory and state beside its
    /// disk and stop it.
    Save(commands::lifecycle::VmArgs),
    /// Quick migration, second half: resume a saved VM on this node or --on another.
    Restore(commands::lifecycle::StartArgs),
    /// Live-migrate a running VM to another node: its memory moves, its disk stays.
    Migrate(commands::migrate::MigrateArgs),
    /// Create, import, export and inspect VHD disks.
    #[command(subcommand)]
    Disk(commands::disk::DiskCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The VM process itself (started by `start` and `restore`).
    #[command(hide = true)]
    Run(commands::run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Create(args) => commands::create::run(args),
        Command::Start(args) => commands::lifecycle::start(args),
        Command::Stop(args) => commands::lifecycle::stop(args),
        Command::List(args) => commands::list::run(args),
        Command::Console(args) => commands::console::run(args),
        Command::Save(args) => commands::lifecycle::save(args),
        Command::Restore(args) => commands::lifecycle::restore(args),
        Command::Migrate(args) => commands::migrate::run(args),
        Command::Disk(cmd) => commands::disk::run(cmd),
        Command::Run(args) => commands::run::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vmm", &mut std::io::stdout());
            Ok(())
        }
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
