//! A cluster of real `csvfs node` processes on 127.0.0.1: its configuration and
//! certificates made by `csvctl cluster init`, its volume by `csvctl volume create`,
//! each node with its own root directory (control socket, state files) and log.
//! Every node still running is stopped (SIGTERM, then SIGKILL) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockmgr::control::{Client, NodeStatus};
use lockmgr::shell::VolumeStatus;

use crate::tgtd::{Tgtd, TgtdOptions, reserve_port, spawn_tied_to_process};
use crate::{Scratch, bin, env_number, run_ok};

/// Where a node runs: its QUIC address, and the network namespace it runs in.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The node's address in cluster.toml.
    pub address: std::net::SocketAddr,
    /// The network namespace (`/run/netns/NAME`), or `None` for this one.
    pub netns: Option<String>,
}

/// One node process.
pub struct ClusterNode {
    /// The node's name (n1, n2, ...).
    pub name: String,
    /// Where it runs.
    pub placement: Option<Placement>,
    /// Its directory standing for /.
    pub root: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

/// A cluster of node processes sharing one volume.
pub struct Cluster {
    /// The configuration file.
    pub config: PathBuf,
    /// The volume's label.
    pub label: String,
    /// The nodes, n1 first.
    pub nodes: Vec<ClusterNode>,
}

impl Cluster {
    /// A tgtd serving a fresh `size`-byte image in `s`, and a cluster of `n` nodes on
    /// 127.0.0.1 sharing it as volume `label` (formatted as initiator `mkfs`).
    pub fn on_tgtd(s: &Scratch, n: usize, label: &str, size: u64) -> (Tgtd, Cluster) {
        let img = s.path("lun.img");
        blockdev::FileDevice::create_image(&img, size).expect("LUN image");
        let t = Tgtd::start(&img, TgtdOptions::default());
        let c = Cluster::start(&s.path("cluster"), n, label, &t.url_as("mkfs"));
        (t, c)
    }

    /// A tgtd in `lab`'s target namespace serving a fresh 256 MiB image in `s`, and a
    /// cluster of one node per node namespace of `lab` (`nodes` of them) sharing it as
    /// volume `label`; `query` is added to the LUN's URL (after the initiator name).
    pub fn in_netlab(
        lab: &crate::netns::NetLab,
        nodes: usize,
        s: &Scratch,
        label: &str,
        query: &str,
    ) -> (Tgtd, Cluster) {
        let img = s.path("lun.img");
        blockdev::FileDevice::create_image(&img, 256 << 20).expect("LUN image");
        let t = Tgtd::start(
            &img,
            TgtdOptions {
                netns: Some(lab.target()),
                address: crate::netns::TARGET_ADDR,
                ..TgtdOptions::default()
            },
        );
        let placements: Vec<Placement> = (1..=nodes)
            .map(|i| Placement {
                address: std::net::SocketAddr::from((lab.cluster_addr(i), 7001)),
                netns: Some(lab.node(i)),
            })
            .collect();
        let url = format!(
            "{}?initiator=iqn.2026-11.io.csvfs.test:mkfs{query}",
            t.url()
        );
        let c = Cluster::start_placed(
            &s.path("cluster"),
            &placements,
            label,
            &url,
            Some(&lab.target()),
        );
        (t, c)
    }

    /// Makes a cluster of `n` nodes in `dir` with volume `label` on `lun` (formatted
    /// here, as `lun` is given to mkfs: an image file is made 256 MiB), and starts
    /// every node.
    pub fn start(dir: &Path, n: usize, label: &str, lun: &str) -> Cluster {
        let placements = (0..n)
            .map(|_| Placement {
                address: std::net::SocketAddr::from((
                    std::net::Ipv4Addr::LOCALHOST,
                    reserve_port(20_000, 30_000),
                )),
                netns: None,
            })
            .collect::<Vec<_>>();
        Cluster::start_placed(dir, &placements, label, lun, None)
    }

    /// Like [`Cluster::start`], with each node where `placements` says; mkfs runs in
    /// `tools_netns` (where the LUN is reachable).
    pub fn start_placed(
        dir: &Path,
        placements: &[Placement],
        label: &str,
        lun: &str,
        tools_netns: Option<&str>,
    ) -> Cluster {
        let mut args: Vec<String> = vec![
            "cluster".into(),
            "init".into(),
            "--name".into(),
            "test".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        for (i, p) in placements.iter().enumerate() {
            args.push("--node".into());
            args.push(format!("n{}={}", i + 1, p.address));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&bin("csvctl"), &refs);
        let config = dir.join("cluster.toml");
        let config_s = config.display().to_string();
        let mut create = vec![
            "volume", "create", label, "--lun", lun, "--config", &config_s,
        ];
        if !lun.starts_with("iscsi://") {
            create.extend_from_slice(&["--size", "256M"]);
        }
        match tools_netns {
            Some(ns) => {
                let csvctl = bin("csvctl");
                let mut all = vec![format!("--net=/run/netns/{ns}"), "--".into()];
                all.push(csvctl.display().to_string());
                all.extend(create.iter().map(|s| s.to_string()));
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                run_ok(Path::new("nsenter"), &refs)
            }
            None => run_ok(&bin("csvctl"), &create),
        };
        let mut cluster = Cluster {
            config,
            label: label.to_string(),
            nodes: Vec::new(),
        };
        for (i, p) in placements.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let root = dir.join(format!("root-{name}"));
            std::fs::create_dir_all(&root).expect("node root");
            let log = dir.join(format!("{name}.log"));
            let mut node = ClusterNode {
                name,
                placement: Some(p.clone()),
                root,
                log,
                child: None,
            };
            cluster.spawn(&mut node);
            cluster.nodes.push(node);
        }
        cluster
    }

    fn spawn(&self, node: &mut ClusterNode) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        let netns = node.placement.as_ref().and_then(|p| p.netns.clone());
        let mut cmd = match netns {
            // nsenter execs the daemon (no fork for a network namespace).
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(bin("csvfs"));
                c
            }
            None => Command::new(bin("csvfs")),
        };
        cmd.arg("node")
            .arg("--config")
            .arg(&self.config)
            .arg("--name")
            .arg(&node.name)
            .arg("--root")
            .arg(&node.root)
            .env(
                "CSVFS_LOG",
                std::env::var("CSVFS_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        node.child = Some(spawn_tied_to_process(cmd).expect("spawn csvfs node"));
    }

    /// Starts node `i` (0-based) again after it stopped.
    pub fn restart(&mut self, i: usize) {
        let mut node = std::mem::replace(
            &mut self.nodes[i],
            ClusterNode {
                name: String::new(),
                placement: None,
                root: PathBuf::new(),
                log: PathBuf::new(),
                child: None,
            },
        );
        node.stop();
        self.spawn(&mut node);
        self.nodes[i] = node;
    }

    /// Node `i`'s view of the volume, `None` while its daemon does not answer.
    pub fn volume_status(&self, i: usize) -> Option<VolumeStatus> {
        let s = self.nodes[i].status()?;
        s.volumes.into_iter().find(|v| v.label == self.label)
    }

    /// Waits until a node among `among` serves the volume as coordinator in an epoch
    /// above `after`; returns its index and status. Fails the test after `timeout`,
    /// with every node's view and log tail.
    pub fn wait_for_coordinator(
        &self,
        among: &[usize],
        after: u64,
        timeout: Duration,
    ) -> (usize, VolumeStatus) {
        let deadline = Instant::now() + timeout;
        loop {
            for &i in among {
                if let Some(v) = self.volume_status(i)
                    && v.serving
                    && v.epoch > after
                {
                    return (i, v);
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no node of {among:?} served volume {} above epoch {after} within {timeout:?}\n{}",
                    self.label,
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node of `nodes` follows (or is) the coordinator `coord`.
    pub fn wait_for_followers(&self, nodes: &[usize], coord: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !nodes.iter().all(|&i| {
            self.volume_status(i)
                .is_some_and(|v| v.coordinator == Some(coord as u8 + 1))
        }) {
            assert!(
                Instant::now() < deadline,
                "not every node of {nodes:?} follows {} within {timeout:?}\n{}",
                self.nodes[coord].name,
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `csvctl ARGS --config CONFIG --root ROOT...` (every node's root) against
    /// the daemons; returns whether it succeeded and its output.
    pub fn csvctl(&self, args: &[&str]) -> (bool, String) {
        let config = self.config.display().to_string();
        let roots: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.root.display().to_string())
            .collect();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &config]);
        for r in &roots {
            all.extend(["--root", r]);
        }
        let out = crate::run(&bin("csvctl"), &all);
        (out.status.success(), crate::output_text(&out))
    }

    /// Runs `csvctl volume redirect <label> --on|--off` against the daemons; returns
    /// its output. Fails the test if it fails.
    pub fn set_redirect(&self, on: bool) -> String {
        let mode = if on { "--on" } else { "--off" };
        let (ok, text) = self.csvctl(&["volume", "redirect", &self.label, mode]);
        assert!(ok, "csvctl volume redirect {mode}: {text}");
        text
    }

    /// Every node's view and the tail of its log, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            out.push_str(&format!("== {} : {:?}\n", n.name, self.volume_status(i)));
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(env_number("CSVFS_LOG_TAIL", 30) as usize)
                .collect();
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl ClusterNode {
    /// The daemon's status through its control socket.
    pub fn status(&self) -> Option<NodeStatus> {
        let path = lockmgr::control::socket_path(&self.root.join("run/csvfs"), &self.name);
        Client::connect(&path).ok()?.status().ok()
    }

    /// A client of its control socket.
    pub fn client(&self) -> Client {
        let path = lockmgr::control::socket_path(&self.root.join("run/csvfs"), &self.name);
        Client::connect(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the node mounts volume `label`.
    pub fn mount_point(&self, label: &str) -> PathBuf {
        self.root.join("ClusterStorage").join(label)
    }

    /// Waits until volume `label` is mounted on this node and answers a stat; fails
    /// the test after `timeout`.
    pub fn wait_mounted(&self, label: &str, timeout: Duration) -> PathBuf {
        let mp = self.mount_point(label);
        let deadline = Instant::now() + timeout;
        loop {
            if is_fuse_mount(&mp) && std::fs::metadata(&mp).is_ok() {
                return mp;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not mount {} within {timeout:?}; log:\n{}",
                self.name,
                mp.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Detaches the node's mounts left by a daemon that did not unmount them (kill -9).
    fn detach_mounts(&self) {
        let dir = self.root.join("ClusterStorage");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let mp = entry.path();
            if is_fuse_mount(&mp) {
                let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: umount2 on a NUL-terminated path this fixture's node mounted.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }

    /// kill -9 (its mounts, dead now, are detached).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.detach_mounts();
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on a child this fixture started and has not reaped.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                self.detach_mounts();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        self.detach_mounts();
    }
}

/// True when `path` is a FUSE mount point (live or dead), by /proc/self/mountinfo.
pub fn is_fuse_mount(path: &Path) -> bool {
    let want = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&want.as_str())
                && l.split(" - ").nth(1).is_some_and(|t| t.starts_with("fuse"))
        })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}
