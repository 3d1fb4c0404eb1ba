//! `csvctl volume create` and `csvctl volume status`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lockmgr::cluster_region::{ClusterRegion, HeartbeatSlot};
use lockmgr::config::{Config, DEFAULT_CONFIG_PATH, VolumeConfig};
use lockmgr::control::{self, NodeStatus};
use lockmgr::shell::IoReport;
use lockmgr::shell::lun_disk::wall_clock_ms;
use metadata::Superblock;
use serde::Serialize;

use crate::mkfs::{self, FormatArgs, MkfsArgs};

/// `csvctl volume ...`
#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Format a LUN and add it to the cluster's configuration as a volume.
    Create(CreateArgs),
    /// Per volume: the coordinator and epoch; per node: its role, incarnation and
    /// disk heartbeat.
    Status(StatusArgs),
    /// File system redirected mode: every node's I/O through the coordinator (--on),
    /// or back to direct I/O (--off).
    Redirect(crate::volume_redirect::RedirectArgs),
    /// Hand the volume's coordinator role to another node (planned: file operations
    /// pause for the hand-over, none fails).
    Move(crate::role_move::MoveArgs),
}

/// Arguments of `csvctl volume create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The volume's label; every node mounts it at /ClusterStorage/<label>.
    pub label: String,
    /// The LUN: an image file, a block device or iscsi://HOST[:PORT]/TARGET-IQN/LUN.
    #[arg(long)]
    pub lun: String,
    /// The cluster's configuration.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(flatten)]
    pub format: FormatArgs,
}

/// Arguments of `csvctl volume status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The cluster's configuration.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The directory that stands for / (where the daemons' control sockets are), as
    /// given to `csvfs node --root`; repeat for nodes with different roots.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `csvctl volume create`.
pub fn create(args: CreateArgs) -> Result<()> {
    let mut config = Config::load(&args.config)?;
    if config.volumes.iter().any(|v| v.label == args.label) {
        bail!(
            "{}: volume {:?} is already in the configuration",
            args.config.display(),
            args.label
        );
    }
    config.volumes.push(VolumeConfig {
        label: args.label.clone(),
        lun: args.lun.clone(),
    });
    config.validate().with_context(|| {
        format!(
            "{}: cannot add volume {:?}",
            args.config.display(),
            args.label
        )
    })?;
    mkfs::run(MkfsArgs {
        lun: args.lun.clone(),
        label: args.label.clone(),
        format: args.format,
        quiet: true,
    })?;
    config.save(&args.config)?;
    println!(
        "volume {:?} created on {} and added to {}; every node needs the new file, then restart `csvfs node`",
        args.label,
        args.lun,
        args.config.display()
    );
    Ok(())
}

/// One node's line of a volume's status.
#[derive(Debug, Serialize)]
struct NodeLine {
    node: String,
    id: u8,
    /// "running" with the daemon's view, or why it could not be asked.
    daemon: String,
    role: Option<String>,
    incarnation: Option<u32>,
    leases: Option<usize>,
    /// The disk heartbeat slot on the LUN.
    heartbeat: Option<HeartbeatSlot>,
    heartbeat_age_ms: Option<u64>,
    /// How the node reaches the volume, and its counters.
    io: Option<IoReport>,
}

/// One volume's status.
#[derive(Debug, Serialize)]
struct VolumeLine {
    label: String,
    lun: String,
    coordinator: Option<String>,
    epoch: Option<u64>,
    /// The coordinator record on the LUN, or why it could not be read.
    record: String,
    nodes: Vec<NodeLine>,
}

fn ask(roots: &[PathBuf], node: &str) -> std::result::Result<NodeStatus, String> {
    let mut last = String::from("no root given");
    for root in roots {
        let path = control::socket_path(&root.join("run/csvfs"), node);
        match control::Client::connect(&path).and_then(|mut c| c.status()) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn disk_view(lun: &str) -> (String, Vec<HeartbeatSlot>) {
    let read = || -> Result<(String, Vec<HeartbeatSlot>)> {
        let dev = blockdev::open_lun(lun, true)?;
        let (sb, _) = Superblock::read(dev.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let region = ClusterRegion::new(dev.as_ref(), sb.cluster.byte_offset());
        let record = match region.read_record()? {
            Some(r) => format!("node {} in epoch {}", r.node, r.epoch),
            None => "never written".to_string(),
        };
        Ok((record, region.read_slots()?))
    };
    read().unwrap_or_else(|e| (format!("unreadable: {e:#}"), Vec::new()))
}

/// Runs `csvctl volume status`.
pub fn status(args: StatusArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let answers: Vec<(String, u8, std::result::Result<NodeStatus, String>)> = config
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.id, ask(&args.root, &n.name)))
        .collect();
    let now = wall_clock_ms();
    let mut volumes = Vec::new();
    for v in &config.volumes {
        let (record, slots) = disk_view(&v.lun);
        let mut line = VolumeLine {
            label: v.label.clone(),
            lun: v.lun.clone(),
            coordinator: None,
            epoch: None,
            record,
            nodes: Vec::new(),
        };
        for (name, id, answer) in &answers {
            let slot = slots.iter().find(|s| s.node == *id).copied();
            let mine = answer
                .as_ref()
                .ok()
                .and_then(|s| s.volumes.iter().find(|x| x.label == v.label));
            if let Some(m) = mine
                && m.serving
            {
                line.coordinator = Some(name.clone());
                line.epoch = Some(m.epoch);
            }
            line.nodes.push(NodeLine {
                node: name.clone(),
                id: *id,
                daemon: match answer {
                    Ok(s) => format!("running (pid {})", s.pid),
                    Err(e) => format!("not reachable: {e}"),
                },
                role: mine.map(|m| m.role.clone()),
                incarnation: mine.map(|m| m.incarnation),
                leases: mine.map(|m| m.leases),
                heartbeat: slot,
                heartbeat_age_ms: slot.map(|s| now.saturating_sub(s.written_ms)),
                io: mine.and_then(|m| m.io.clone()),
            });
        }
        volumes.push(line);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&volumes)?);
        return Ok(());
    }
    print_table(&config.path, &volumes);
    Ok(())
}

fn print_table(config: &Path, volumes: &[VolumeLine]) {
    if volumes.is_empty() {
        println!(
            "{}: no volumes (add one with `csvctl volume create`)",
            config.display()
        );
    }
    for v in volumes {
        match (&v.coordinator, v.epoch) {
            (Some(c), Some(e)) => println!(
                "{}  coordinator {c}, epoch {e}  (record on the LUN: {})",
                v.label, v.record
            ),
            _ => println!(
                "{}  no serving coordinator  (record on the LUN: {})",
                v.label, v.record
            ),
        }
        for n in &v.nodes {
            let hb = match (n.heartbeat, n.heartbeat_age_ms) {
                (Some(s), Some(age)) => format!(
                    "disk heartbeat #{} (incarnation {}) {:.1}s ago",
                    s.counter,
                    s.incarnation,
                    age as f64 / 1000.0
                ),
                _ => "no disk heartbeat".to_string(),
            };
            match &n.role {
                Some(role) => println!(
                    "  {:<12} id {:<3} {role}, incarnation {}, {} leases; {hb}",
                    n.node,
                    n.id,
                    n.incarnation.unwrap_or(0),
                    n.leases.unwrap_or(0)
                ),
                None => println!("  {:<12} id {:<3} {}; {hb}", n.node, n.id, n.daemon),
            }
            if let Some(io) = &n.io {
                let reason = io
                    .reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                println!(
                    "  {:<12}        {}{reason}: {} bytes direct, {} redirected; metadata calls: {} sent, {} local, {} served; {} commits of {} changes; {} changes acknowledged and not yet durable, {} replayed ({} lost or different)",
                    "",
                    io.state,
                    io.bytes_direct,
                    io.bytes_redirected,
                    io.metadata_calls,
                    io.local_calls,
                    io.served_calls,
                    io.commits,
                    io.committed_changes,
                    io.unconfirmed,
                    io.replayed,
                    io.replay_diverged
                );
            }
        }
    }
}
