//! Finding things on this host: a VM's directory on a mounted volume, this node's
//! name, and the root directory of a node (`csvfs node --root`) by its control
//! socket.
//!
//! A node is on this host when its control socket `<root>/run/csvfs/<node>.sock` is:
//! the root is `/` in production; a local test cluster gives each node its own root,
//! and `vmm` finds the others beside the one `--root` names.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use vmm::vm_config::VM_CONFIG_FILE;

/// The directory of VM `name` and its volume's label: under `--volume` if given, else
/// on whichever volume mounted under `root` holds it.
pub fn find_vm(root: &Path, name: &str, volume: Option<&str>) -> Result<(String, PathBuf)> {
    let storage = root.join("ClusterStorage");
    let labels: Vec<String> = match volume {
        Some(v) => vec![v.to_string()],
        None => std::fs::read_dir(&storage)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    };
    for label in &labels {
        let dir = storage.join(label).join(name);
        if dir.join(VM_CONFIG_FILE).is_file() {
            return Ok((label.clone(), dir));
        }
    }
    bail!(
        "no VM {name} on {} (create it with `vmm create {name} --volume VOLUME`)",
        match volume {
            Some(v) => format!("volume {v} at {}", storage.join(v).display()),
            None => format!("the volumes mounted under {}", storage.display()),
        }
    )
}

/// Every VM directory on the volumes mounted under `root`: (volume, name, dir).
pub fn all_vms(root: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(volumes) = std::fs::read_dir(root.join("ClusterStorage")) else {
        return out;
    };
    for v in volumes.filter_map(|e| e.ok()) {
        let Ok(vms) = std::fs::read_dir(v.path()) else {
            continue;
        };
        for vm in vms.filter_map(|e| e.ok()) {
            if vm.path().join(VM_CONFIG_FILE).is_file() {
                out.push((
                    v.file_name().to_string_lossy().into_owned(),
                    vm.file_name().to_string_lossy().into_owned(),
                    vm.path(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The nodes whose control socket is under `root`.
fn nodes_at(root: &Path) -> Vec<String> {
    let Ok(d) = std::fs::read_dir(root.join("run/csvfs")) else {
        return Vec::new();
    };
    d.filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".sock").map(str::to_string)
        })
        .collect()
}

/// The name of the node whose root is `root`.
pub fn local_node(root: &Path) -> Result<String> {
    match nodes_at(root).as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no csvfs node runs with root {} (no control socket in {}): start one with `csvfs node`",
            root.display(),
            root.join("run/csvfs").display()
        ),
        many => bail!(
            "several nodes have control sockets in {} ({}): give the node's own --root",
            root.join("run/csvfs").display(),
            many.join(", ")
        ),
    }
}

/// The root of node `node` on this host: `root` itself, `/`, or a sibling of `root`.
pub fn node_root(root: &Path, node: &str) -> Result<PathBuf> {
    let mut candidates = vec![root.to_path_buf(), PathBuf::from("/")];
    if let Some(parent) = root.parent().filter(|_| root != Path::new("/"))
        && let Ok(d) = std::fs::read_dir(parent)
    {
        candidates.extend(d.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    for c in candidates {
        if nodes_at(&c).iter().any(|n| n == node) {
            return Ok(c);
        }
    }
    bail!(
        "node {node} does not run on this host (no {node}.sock under {}/run/csvfs, / or beside it): \
         run this command on {node}'s host",
        root.display()
    )
}
