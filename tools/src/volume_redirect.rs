//! `csvctl volume redirect VOLUME --on|--off`: file system redirected mode, in which
//! every node sends all of its I/O on the volume through the coordinator (for
//! maintenance of the LUN's paths, or to rule them out when looking for a fault).
//! One node daemon reachable here takes the request and passes it to every other
//! node over the cluster's links.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use lockmgr::config::{Config, DEFAULT_CONFIG_PATH};
use lockmgr::control::{Request, Response};

/// Arguments of `csvctl volume redirect`.
#[derive(Args, Debug)]
pub struct RedirectArgs {
    /// The volume's label.
    pub label: String,
    /// Send every node's I/O through the coordinator.
    #[arg(long, conflicts_with = "off", required_unless_present = "off")]
    pub on: bool,
    /// Return every node to direct I/O.
    #[arg(long)]
    pub off: bool,
    /// The cluster's configuration.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The directory that stands for / (where the daemons' control sockets are), as
    /// given to `csvfs node --root`; repeat for nodes with different roots. The first
    /// node daemon found there takes the request.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: Vec<PathBuf>,
}

/// Runs `csvctl volume redirect`.
pub fn run(args: RedirectArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    crate::daemon::require_volume(&config, &args.config, &args.label)?;
    let mut client = crate::daemon::connect_any(&config, &args.config, &args.root)?;
    let answer = client.request(&Request::Redirect {
        volume: args.label.clone(),
        on: args.on,
    })?;
    let nodes = match answer {
        Response::Redirected { nodes } => nodes,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the node daemon: {other:?}"),
    };
    let mode = if args.on {
        "FileSystemRedirected (UserRequest)"
    } else {
        "Direct"
    };
    let mut failed = 0;
    for (id, error) in &nodes {
        let name = crate::daemon::node_name(&config, *id);
        match error {
            None => println!("{name}: {mode}"),
            Some(e) => {
                failed += 1;
                println!("{name}: NOT changed: {e}");
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} node(s) did not change mode; run the command again once they are reachable"
        );
    }
    Ok(())
}
