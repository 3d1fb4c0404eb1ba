//! `csvctl volume move VOLUME --to NODE` and `csvctl node drain NODE`: planned moves of
//! the coordinator role. The node daemon reachable here asks the volume's coordinator,
//! which stops serving, closes its metadata store, and hands the reservation over; file
//! operations on every node pause for the hand-over and go on (latency, not errors).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use lockmgr::config::{Config, DEFAULT_CONFIG_PATH};
use lockmgr::control::{Request, Response};
use lockmgr::shell::role_move::RoleMove;

use crate::daemon::{connect_any, node_id, node_name, require_volume};

/// Where csvctl finds the cluster and its daemons.
#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// The cluster's configuration.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The directory that stands for / (where the daemons' control sockets are), as
    /// given to `csvfs node --root`; repeat for nodes with different roots. The first
    /// node daemon found there takes the request.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: Vec<PathBuf>,
    /// How long to wait for each move, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

/// Arguments of `csvctl volume move`.
#[derive(Args, Debug)]
pub struct MoveArgs {
    /// The volume's label.
    pub label: String,
    /// The node to give the coordinator role to.
    #[arg(long, value_name = "NODE")]
    pub to: String,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Arguments of `csvctl node drain`.
#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The node to move every coordinator role off.
    pub node: String,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Runs `csvctl volume move`.
pub fn run_move(args: MoveArgs) -> Result<()> {
    let d = &args.daemon;
    let config = Config::load(&d.config)?;
    require_volume(&config, &d.config, &args.label)?;
    let to = node_id(&config, &d.config, &args.to)?;
    let (moves, errors) = ask(
        &config,
        d,
        &Request::Move {
            volume: args.label.clone(),
            to,
            timeout_ms: d.timeout.saturating_mul(1000),
        },
    )?;
    print_moves(&config, &moves);
    fail_on(&errors)
}

/// Runs `csvctl node drain`.
pub fn run_drain(args: DrainArgs) -> Result<()> {
    let d = &args.daemon;
    let config = Config::load(&d.config)?;
    let node = node_id(&config, &d.config, &args.node)?;
    let (moves, errors) = ask(
        &config,
        d,
        &Request::Drain {
            node,
            timeout_ms: d.timeout.saturating_mul(1000),
        },
    )?;
    if moves.is_empty() && errors.is_empty() {
        println!("{} coordinates no volume: nothing to move", args.node);
    }
    print_moves(&config, &moves);
    fail_on(&errors)
}

fn fail_on(errors: &[String]) -> Result<()> {
    for e in errors {
        eprintln!("{e}");
    }
    if !errors.is_empty() {
        bail!(
            "{} volume(s) did not move; run the command again once the reason is gone",
            errors.len()
        );
    }
    Ok(())
}

fn ask(config: &Config, d: &DaemonArgs, request: &Request) -> Result<(Vec<RoleMove>, Vec<String>)> {
    let mut client = connect_any(config, &d.config, &d.root)?;
    match client.request(request)? {
        Response::Moved { moves, errors } => Ok((moves, errors)),
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the node daemon: {other:?}"),
    }
}

fn print_moves(config: &Config, moves: &[RoleMove]) {
    for m in moves {
        if m.from == m.to {
            println!(
                "{}: {} coordinates it already (epoch {})",
                m.volume,
                node_name(config, m.to),
                m.epoch
            );
        } else {
            println!(
                "{}: coordinator moved from {} to {} (epoch {}) in {} ms",
                m.volume,
                node_name(config, m.from),
                node_name(config, m.to),
                m.epoch,
                m.ms
            );
        }
    }
}
