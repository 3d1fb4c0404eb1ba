//! `csvctl cluster init` and `csvctl node add`: the cluster's configuration and
//! identity (its CA and one certificate per node), as lockmgr defines them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lockmgr::config::{Config, DEFAULT_CONFIG_PATH, NodeConfig};
use lockmgr::identity;

/// `csvctl cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Make a new cluster: write cluster.toml, a cluster CA, and a key and
    /// certificate per node.
    Init(InitArgs),
}

/// `csvctl node ...`
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Add a node to the configuration and make its key and certificate with the
    /// cluster CA.
    Add(AddArgs),
    /// Move every coordinator role off a node before its maintenance.
    Drain(crate::role_move::DrainArgs),
    /// Fence a node and put it out of the cluster: what it held is freed, it is
    /// refused from then on, and its daemon stops serving until it starts again.
    Evict(crate::evict::EvictArgs),
}

/// Arguments of `csvctl cluster init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// The cluster's name (lowercase letters, digits, '-').
    #[arg(long)]
    pub name: String,
    /// A node, as NAME=IP:PORT (its QUIC address); repeat for each node. Node ids
    /// are given in this order, from 1.
    #[arg(long = "node", value_name = "NAME=IP:PORT", required = true)]
    pub nodes: Vec<String>,
    /// Write DIR/cluster.toml and DIR/certs/.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub dir: Option<PathBuf>,
    /// Write the configuration here; certificates go to certs/ beside it
    /// [default: /etc/csvfs/cluster.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Replace an existing configuration and its certificates (a new CA: every
    /// node needs the new files).
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Arguments of `csvctl node add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// The new node, as NAME=IP:PORT.
    #[arg(value_name = "NAME=IP:PORT")]
    pub node: String,
    /// The cluster's configuration; the CA key must be in its certificate
    /// directory.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The node's id (1 to 255) [default: the lowest free one].
    #[arg(long)]
    pub id: Option<u8>,
}

fn parse_node(arg: &str) -> Result<(String, SocketAddr)> {
    let Some((name, addr)) = arg.split_once('=') else {
        bail!("{arg:?}: expected NAME=IP:PORT, e.g. n1=10.0.0.1:7001");
    };
    let addr = addr
        .parse()
        .with_context(|| format!("{arg:?}: {addr:?} is not an IP:PORT address"))?;
    Ok((name.to_string(), addr))
}

/// Runs `csvctl cluster init`.
pub fn init(args: InitArgs) -> Result<()> {
    let path = match (&args.dir, &args.config) {
        (Some(dir), _) => dir.join("cluster.toml"),
        (None, Some(p)) => p.clone(),
        (None, None) => PathBuf::from(DEFAULT_CONFIG_PATH),
    };
    let mut nodes = Vec::new();
    for (i, arg) in args.nodes.iter().enumerate() {
        let (name, address) = parse_node(arg)?;
        let Ok(id) = u8::try_from(i + 1) else {
            bail!("a cluster has at most 255 nodes");
        };
        nodes.push(NodeConfig { name, id, address });
    }
    let mut config = Config::new(&args.name, nodes);
    config.path = path.clone();
    config
        .validate()
        .with_context(|| format!("the cluster would be invalid ({})", path.display()))?;
    if path.exists() && !args.force {
        bail!(
            "{} already exists (give --force to replace the cluster, with a new CA)",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let cert_dir = config.cert_dir();
    let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
    identity::init(&cert_dir, &config.name, &names, args.force).map_err(|e| {
        if matches!(e, identity::IdentityError::Exists { .. }) {
            anyhow::anyhow!("{e} (give --force to replace the cluster's certificates)")
        } else {
            e.into()
        }
    })?;
    // The configuration last: its presence means the cluster is complete.
    config.save(&path)?;
    println!(
        "cluster {:?}: wrote {} and, in {}, a CA and certificates for {}",
        config.name,
        path.display(),
        cert_dir.display(),
        names.join(", ")
    );
    print_distribution(&path, &cert_dir);
    Ok(())
}

/// Runs `csvctl node add`.
pub fn add(args: AddArgs) -> Result<()> {
    let (name, address) = parse_node(&args.node)?;
    let mut config = Config::load(&args.config)?;
    if config.node(&name).is_some() {
        bail!(
            "{}: node {name:?} is already in cluster {:?}",
            args.config.display(),
            config.name
        );
    }
    let id = match args.id {
        Some(id) => id,
        None => config
            .free_node_id()
            .with_context(|| format!("{}: all 255 node ids are taken", args.config.display()))?,
    };
    config.nodes.push(NodeConfig {
        name: name.clone(),
        id,
        address,
    });
    config
        .validate()
        .with_context(|| format!("{}: cannot add node {name:?}", args.config.display()))?;
    let cert_dir = config.cert_dir();
    identity::add_node(&cert_dir, &config.name, &name)?;
    config.save(&args.config)?;
    println!(
        "node {name:?} (id {id}, {address}) added to cluster {:?}: {} updated, its certificate in {}",
        config.name,
        args.config.display(),
        cert_dir.display()
    );
    print_distribution(&args.config, &cert_dir);
    Ok(())
}

fn print_distribution(config: &Path, cert_dir: &Path) {
    let certs = cert_dir.display();
    println!(
        "every node needs {} and {certs}/ca.pem; node NAME needs {certs}/NAME.pem and {certs}/NAME.key (nothing else); \
         keep {certs}/ca.key only where nodes are added",
        config.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_arguments_parse() {
        let (n, a) = parse_node("n1=127.0.0.1:7001").unwrap();
        assert_eq!((n.as_str(), a), ("n1", "127.0.0.1:7001".parse().unwrap()));
        assert!(
            parse_node("n1")
                .unwrap_err()
                .to_string()
                .contains("NAME=IP:PORT")
        );
        assert!(
            parse_node("n1=localhost:1")
                .unwrap_err()
                .to_string()
                .contains("not an IP:PORT")
        );
    }

    fn init_args(dir: &Path, force: bool) -> InitArgs {
        InitArgs {
            name: "prod".into(),
            nodes: vec!["n1=127.0.0.1:7001".into(), "n2=127.0.0.1:7002".into()],
            dir: Some(dir.to_path_buf()),
            config: None,
            force,
        }
    }

    #[test]
    fn init_then_add() {
        let tmp = tempfile::tempdir().unwrap();
        init(init_args(tmp.path(), false)).unwrap();
        let path = tmp.path().join("cluster.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.nodes.len(), 2);
        for f in ["ca.pem", "ca.key", "n1.pem", "n1.key", "n2.pem", "n2.key"] {
            assert!(tmp.path().join("certs").join(f).exists(), "{f}");
        }
        let e = init(init_args(tmp.path(), false)).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--force"), "{e}");
        let ca = std::fs::read(tmp.path().join("certs/ca.pem")).unwrap();

        add(AddArgs {
            node: "n3=127.0.0.1:7003".into(),
            config: path.clone(),
            id: None,
        })
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.node("n3").unwrap().id, 3);
        assert!(tmp.path().join("certs/n3.key").exists());
        assert_eq!(ca, std::fs::read(tmp.path().join("certs/ca.pem")).unwrap());
        let e = add(AddArgs {
            node: "n3=127.0.0.1:7004".into(),
            config: path.clone(),
            id: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("already in cluster"), "{e}");
        let e = add(AddArgs {
            node: "n4=127.0.0.1:7001".into(),
            config: path.clone(),
            id: None,
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("already used by node \"n1\""),
            "{e:#}"
        );
        assert!(!tmp.path().join("certs/n4.pem").exists());

        init(init_args(tmp.path(), true)).unwrap();
        assert_ne!(ca, std::fs::read(tmp.path().join("certs/ca.pem")).unwrap());
    }

    #[test]
    fn init_refuses_an_invalid_cluster_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut args = init_args(tmp.path(), false);
        args.nodes.push("n1=127.0.0.1:7009".into());
        let e = init(args).unwrap_err();
        assert!(
            format!("{e:#}").contains("already used by node[0]"),
            "{e:#}"
        );
        assert!(!tmp.path().join("certs").exists());
    }
}
