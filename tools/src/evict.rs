//! `csvctl node evict NODE`: fences a node and puts it out of the cluster. A node
//! daemon reachable here (not the evicted node's) asks every volume's coordinator,
//! which preempts every key the node registered, frees its leases and locks, refuses
//! it from then on and tells it so; the evicted daemon drops everything and stops
//! serving its mounts until it is started again. Taking it out of the configuration
//! for good is an edit of cluster.toml on every host, as for any change of membership.

use anyhow::{Result, bail};
use clap::Args;
use lockmgr::config::Config;
use lockmgr::control::{Request, Response};

use crate::daemon::{connect_any_but, node_id};
use crate::role_move::DaemonArgs;

/// Arguments of `csvctl node evict`.
#[derive(Args, Debug)]
pub struct EvictArgs {
    /// The node to evict. It must not coordinate a volume (move the roles off it
    /// first: `csvctl node drain NODE`).
    pub node: String,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Runs `csvctl node evict`.
pub fn run(args: EvictArgs) -> Result<()> {
    let d = &args.daemon;
    let config = Config::load(&d.config)?;
    let node = node_id(&config, &d.config, &args.node)?;
    let mut client = connect_any_but(&config, &d.config, &d.root, Some(node))?;
    let request = Request::Evict {
        node,
        timeout_ms: d.timeout.saturating_mul(1000),
    };
    let (volumes, errors) = match client.request(&request)? {
        Response::Evicted { volumes, errors } => (volumes, errors),
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the node daemon: {other:?}"),
    };
    for v in &volumes {
        println!("{v}: {} evicted (fenced, refused from now on)", args.node);
    }
    for e in &errors {
        eprintln!("{e}");
    }
    if !errors.is_empty() {
        bail!(
            "{} volume(s) did not evict {}; run the command again once the reason is gone",
            errors.len(),
            args.node
        );
    }
    println!(
        "to keep {} out after restarts, remove its [[node]] from cluster.toml on every host",
        args.node
    );
    Ok(())
}
