//! `csvctl`: csvfs administration. The same binary is `mkfs.csvfs` and `fsck.csvfs`
//! when started under those names (the install script makes the links).

mod cluster;
mod daemon;
mod evict;
mod fsck;
mod in_use;
mod mkfs;
mod role_move;
mod volume;
mod volume_redirect;

use clap::{CommandFactory, Parser, Subcommand};

/// csvfs administration.
#[derive(Parser)]
#[command(name = "csvctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Format a LUN (same as mkfs.csvfs).
    Mkfs(mkfs::MkfsArgs),
    /// Check a volume (same as fsck.csvfs).
    Fsck(fsck::FsckArgs),
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Node administration.
    #[command(subcommand)]
    Node(cluster::NodeCommand),
    /// Volume administration.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

fn exit_on_error<T>(name: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("{name}: {e:#}");
        std::process::exit(8);
    })
}

fn main() {
    let name = program_name();
    let code = match name.as_str() {
        "mkfs.csvfs" => {
            exit_on_error(&name, mkfs::run(<mkfs::MkfsArgs as Parser>::parse()));
            0
        }
        "fsck.csvfs" => exit_on_error(&name, fsck::run(<fsck::FsckArgs as Parser>::parse())),
        _ => match Cli::parse().command {
            Command::Mkfs(a) => {
                exit_on_error("csvctl mkfs", mkfs::run(a));
                0
            }
            Command::Fsck(a) => exit_on_error("csvctl fsck", fsck::run(a)),
            Command::Cluster(cluster::ClusterCommand::Init(a)) => {
                exit_on_error("csvctl cluster init", cluster::init(a));
                0
            }
            Command::Node(cluster::NodeCommand::Add(a)) => {
                exit_on_error("csvctl node add", cluster::add(a));
                0
            }
            Command::Volume(volume::VolumeCommand::Create(a)) => {
                exit_on_error("csvctl volume create", volume::create(a));
                0
            }
            Command::Volume(volume::VolumeCommand::Status(a)) => {
                exit_on_error("csvctl volume status", volume::status(a));
                0
            }
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "csvctl",
                    &mut std::io::stdout(),
                );
                0
            }
            Command::Volume(volume::VolumeCommand::Redirect(a)) => {
                exit_on_error("csvctl volume redirect", volume_redirect::run(a));
                0
            }
            Command::Volume(volume::VolumeCommand::Move(a)) => {
                exit_on_error("csvctl volume move", role_move::run_move(a));
                0
            }
            Command::Node(cluster::NodeCommand::Evict(a)) => {
                exit_on_error("csvctl node evict", evict::run(a));
                0
            }
            Command::Node(cluster::NodeCommand::Drain(a)) => {
                exit_on_error("csvctl node drain", role_move::run_drain(a));
                0
            }
        },
    };
    std::process::exit(code);
}
