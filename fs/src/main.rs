//! `csvfs`: the csvfs node daemon. Today it mounts a volume on one node; the cluster
//! node (`csvfs node`) joins it when the lock manager lands.

use csvfs::{mount, mount_helper, options};

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
