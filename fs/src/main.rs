//! `csvfs`: the csvfs node daemon. `csvfs mount` mounts a volume on one node;
//! `csvfs node` runs a cluster node (today its lock manager: election, fencing,
//! leases, the control socket; the cluster mount comes with the multi-node volume).

use csvfs::{mount, mount_helper, node, options};

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

/// Cluster Shared Volumes for Linux: the node daemon.
#[derive(Parser)]
#[command(name = "csvfs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount a csvfs volume on this node (single-node mode).
    ///
    /// LUN is an image file or a block device formatted with mkfs.csvfs. Without a
    /// MOUNTPOINT the volume is mounted at /ClusterStorage/<label>. The command returns
    /// once the mount is live; the daemon serves it until `umount`.
    Mount {
        /// The LUN: an image file or a block device.
        lun: String,
        /// Where to mount (default /ClusterStorage/<label>).
        mountpoint: Option<PathBuf>,
        /// Mount options: ro, rw, dev, nodev, suid, nosuid, exec, noexec, atime,
        /// noatime, nosubtype (type "fuse" instead of "fuse.csvfs"), threads=N.
        #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
        options: Vec<String>,
        /// Stay in the foreground (logs to stderr).
        #[arg(short = 'f', long)]
        foreground: bool,
        /// Log file of the background daemon (default /var/log/csvfs/csvfs.log).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Run a cluster node: join the cluster and run the lock manager of every volume
    /// of the configuration (reservation key, disk heartbeat, coordinator election,
    /// leases), serving the control socket <root>/run/csvfs/<name>.sock. Stops on
    /// SIGTERM or SIGINT.
    Node {
        /// The cluster configuration.
        #[arg(long, default_value = lockmgr::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// This node's name in the configuration.
        #[arg(long)]
        name: String,
        /// The directory that stands for / (run and state files).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() {
    if mount_helper::invoked_as_helper() {
        if let Err(e) = mount_helper::main() {
            eprintln!("mount.fuse.csvfs: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "csvfs", &mut std::io::stdout());
            Ok(())
        }
        Command::Node { config, name, root } => {
            init_logging();
            node::run(node::NodeRequest { config, name, root })
        }
        Command::Mount {
            lun,
            mountpoint,
            options,
            foreground,
            log,
        } => options::MountOptions::parse(&options.join(",")).and_then(|options| {
            mount::run(mount::MountRequest {
                lun,
                mountpoint,
                options,
                foreground,
                log,
            })
        }),
    };
    if let Err(e) = result {
        eprintln!("csvfs: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CSVFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
