//! `csvfs node`: one node of a cluster. It joins the cluster of `cluster.toml`, runs
//! the lock manager of every volume of the configuration on that volume's LUN (its
//! reservation key, disk heartbeat, the coordinator election), mounts every volume at
//! `<root>/ClusterStorage/<label>` (its metadata through the coordinator, its data
//! straight on the LUN: see [`crate::cluster`]), and serves the control socket
//! `<root>/run/csvfs/<node>.sock` for csvctl and vmm. SIGTERM or SIGINT unmounts and
//! stops it.
//!
//! Files under `<root>` (root defaults to `/`):
//! - `ClusterStorage/<label>`: the mount point of each volume;
//! - `run/csvfs/<node>.sock`: the control socket (mode 0600);
//! - `var/lib/csvfs/<cluster>/<node>/<volume>.incarnation`: the last incarnation of
//!   this node in each volume (raised at every start and every rejoin).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use blockdev::{BlockDevice, LunUrl};
use lockmgr::shell::{LunDisk, Shell};
use lockmgr::{Config, control};
use metadata::Superblock;
use redirect_io::PathMonitor;
use redirect_io::cluster::VolumeRoute;
use tracing::info;

use crate::cluster::{self, ClusterVolume};

/// What `csvfs node` was asked.
pub struct NodeRequest {
    /// The cluster configuration.
    pub config: PathBuf,
    /// This node's name.
    pub name: String,
    /// The directory standing for `/` (mount points, run and state files).
    pub root: PathBuf,
}

/// The initiator name a node uses on an iSCSI LUN whose URL names none: one per
/// node, so that the target sees each node as its own initiator.
pub fn node_initiator(cluster: &str, node: &str) -> String {
    format!("iqn.2026-11.io.csvfs:{cluster}.{node}")
}

/// The LUN of a volume as this node opens it: an iSCSI URL without an initiator name
/// gets this node's.
pub fn node_lun(lun: &str, cluster: &str, node: &str) -> Result<String> {
    match LunUrl::parse(lun)? {
        LunUrl::Iscsi(_) if !lun.contains("initiator=") => {
            let sep = if lun.contains('?') { '&' } else { '?' };
            Ok(format!(
                "{lun}{sep}initiator={}",
                node_initiator(cluster, node)
            ))
        }
        _ => Ok(lun.to_string()),
    }
}

/// A volume's LUN on this node: its direct path, the device the node uses (direct
/// or redirected through a peer), and the way redirected I/O goes.
struct OpenVolume {
    label: String,
    direct: Arc<dyn BlockDevice>,
    path: Arc<PathMonitor>,
    route: Arc<VolumeRoute>,
    disk: Arc<LunDisk>,
}

/// Opens a volume's LUN for node `node` and finds its cluster region.
fn open_volume(
    config: &Config,
    label: &str,
    lun: &str,
    node: &str,
    id: u8,
    rt: tokio::runtime::Handle,
) -> Result<OpenVolume> {
    let url = node_lun(lun, &config.name, node)?;
    let direct: Arc<dyn BlockDevice> = blockdev::open_lun(&url, false)
        .with_context(|| format!("volume {label}: cannot open its LUN {lun}"))?;
    let (sb, _) = Superblock::read(direct.as_ref()).with_context(|| {
        format!("volume {label}: {lun} holds no csvfs volume (run `csvctl volume create`)")
    })?;
    if sb.label != label {
        bail!(
            "volume {label}: the LUN {lun} holds volume {:?}; fix the [[volume]] entry of {}",
            sb.label,
            config.path.display()
        );
    }
    let route = VolumeRoute::new(label);
    let path = redirect_io::cluster::monitored_device(label, direct.clone(), route.clone(), rt);
    let dev = path.for_lock_manager();
    Ok(OpenVolume {
        label: label.to_string(),
        direct,
        path,
        route,
        disk: Arc::new(LunDisk::new(dev, sb.cluster.byte_offset(), id)),
    })
}

/// Runs the node until SIGTERM or SIGINT.
pub fn run(req: NodeRequest) -> Result<()> {
    let config = Config::load(&req.config)?;
    let me = config
        .node(&req.name)
        .ok_or_else(|| {
            anyhow!(
                "node {} is not in {}: add it with `csvctl node add`",
                req.name,
                req.config.display()
            )
        })?
        .clone();
    config
        .timing
        .protocol()
        .check()
        .map_err(|e| anyhow!("{}: [timing]: {e}", req.config.display()))?;
    let run_dir = req.root.join("run/csvfs");
    let state_dir = req
        .root
        .join("var/lib/csvfs")
        .join(&config.name)
        .join(&me.name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut opened = Vec::new();
    for v in &config.volumes {
        opened.push(open_volume(
            &config,
            &v.label,
            &v.lun,
            &me.name,
            me.id,
            runtime.handle().clone(),
        )?);
    }
    let volumes = opened
        .iter()
        .map(|v| (v.label.clone(), v.disk.clone()))
        .collect();
    runtime.block_on(async {
        let shell = Arc::new(Shell::start(&config, &me.name, volumes, &state_dir).await?);
        for v in &opened {
            v.route.attach(shell.clone());
            redirect_io::cluster::serve_volume(&shell, &v.label, v.direct.clone());
            redirect_io::cluster::control_user_redirect(&shell, &v.label, v.path.clone());
        }
        let socket = control::socket_path(&run_dir, &me.name);
        control::serve(shell.clone(), &socket)
            .with_context(|| format!("control socket {}", socket.display()))?;
        let mut mounts = Vec::new();
        for v in &opened {
            let dev: Arc<dyn BlockDevice> = v.path.clone();
            let vol = ClusterVolume::start(
                shell.clone(),
                &v.label,
                dev.clone(),
                &config.timing.protocol(),
            )?;
            let source = dev.name().to_string();
            let mounted = cluster::mount::mount(vol, dev, v.path.clone(), &req.root, &source);
            match mounted {
                Ok(m) => mounts.push((v.label.clone(), m)),
                Err(e) => {
                    unmount_all(mounts).await;
                    remove_socket(&socket);
                    return Err(e);
                }
            }
        }
        info!(node = me.name, socket = %socket.display(), "node running");
        wait_for_stop().await?;
        info!(node = me.name, "stopping");
        unmount_all(mounts).await;
        shell.close();
        remove_socket(&socket);
        Ok(())
    })
}

/// Unmounts every volume (lazily if something still uses one: the kernel lets go of
/// it once the last user does).
async fn unmount_all(mounts: Vec<(String, fuser::BackgroundSession)>) {
    for (label, m) in mounts {
        let done = tokio::task::spawn_blocking(move || m.umount_and_join()).await;
        match done {
            Ok(Ok(())) => info!(volume = label, "unmounted"),
            Ok(Err(e)) => tracing::warn!(volume = label, error = %e, "unmount"),
            Err(e) => tracing::warn!(volume = label, error = %e, "unmount task"),
        }
    }
}

async fn wait_for_stop() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_luns_get_the_node_initiator_unless_named() {
        assert_eq!(
            node_lun("iscsi://127.0.0.1:3261/iqn.x:t/1", "c", "n1").unwrap(),
            "iscsi://127.0.0.1:3261/iqn.x:t/1?initiator=iqn.2026-11.io.csvfs:c.n1"
        );
        assert_eq!(
            node_lun("iscsi://h/iqn.x:t/1?timeout=5", "c", "n2").unwrap(),
            "iscsi://h/iqn.x:t/1?timeout=5&initiator=iqn.2026-11.io.csvfs:c.n2"
        );
        let named = "iscsi://h/iqn.x:t/1?initiator=iqn.y:me";
        assert_eq!(node_lun(named, "c", "n2").unwrap(), named);
        assert_eq!(node_lun("/tmp/lun.img", "c", "n2").unwrap(), "/tmp/lun.img");
    }
}
