//! Reaching the cluster's node daemons from csvctl: the first control socket of a node
//! of the configuration that answers on this host takes a cluster-wide request, and
//! node names and ids translate both ways.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use lockmgr::config::Config;
use lockmgr::control;

/// A client of the first node daemon of `config` that answers under one of `roots`
/// (the directories that stand for /, as given to `csvfs node --root`).
pub fn connect_any(
    config: &Config,
    config_path: &Path,
    roots: &[PathBuf],
) -> Result<control::Client> {
    connect_any_but(config, config_path, roots, None)
}

/// [`connect_any`], passing over the daemon of node `but`.
pub fn connect_any_but(
    config: &Config,
    config_path: &Path,
    roots: &[PathBuf],
    but: Option<u8>,
) -> Result<control::Client> {
    for n in config.nodes.iter().filter(|n| Some(n.id) != but) {
        for root in roots {
            let path = control::socket_path(&root.join("run/csvfs"), &n.name);
            if let Ok(c) = control::Client::connect(&path) {
                return Ok(c);
            }
        }
    }
    bail!(
        "no node daemon of {} answers on this host under {roots:?}: start `csvfs node` or give its --root",
        config_path.display()
    )
}

/// Fails unless `config` has a volume labelled `label`.
pub fn require_volume(config: &Config, config_path: &Path, label: &str) -> Result<()> {
    if !config.volumes.iter().any(|v| v.label == label) {
        bail!(
            "{} has no volume {label:?} (see `csvctl volume status`)",
            config_path.display()
        );
    }
    Ok(())
}

/// The name of node `id` (or "node ID" if the configuration has none).
pub fn node_name(config: &Config, id: u8) -> String {
    config
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map_or_else(|| format!("node {id}"), |n| n.name.clone())
}

/// The id of the node named `name`.
pub fn node_id(config: &Config, config_path: &Path, name: &str) -> Result<u8> {
    match config.nodes.iter().find(|n| n.name == name) {
        Some(n) => Ok(n.id),
        None => bail!(
            "{} has no node {name:?} (its nodes: {})",
            config_path.display(),
            config
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
