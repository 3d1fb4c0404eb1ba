//! A network lab in namespaces: each node and the target in a network namespace of
//! their own, wired like a real cluster with two networks. A "switch" namespace holds
//! two bridges: the cluster network 10.77.1.0/24 (node i at 10.77.1.i, its interface
//! `c0`) and the storage network 10.77.2.0/24 (node i at 10.77.2.i, interface `s0`;
//! the target at [`TARGET_ADDR`]). Pulling a node's cluster cable cuts it off from
//! its peers while it still reaches the LUN. Everything is deleted when dropped.
//!
//! Processes enter a namespace with `nsenter --net=/run/netns/NAME` (not `ip netns
//! exec`, whose private mount namespace would hide FUSE mounts).

use std::net::Ipv4Addr;
use std::process::Command;

/// The target's address on the storage network.
pub const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 100);

/// The namespaces and links of one test.
pub struct NetLab {
    prefix: String,
    nodes: usize,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (apt-get install iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetLab {
    /// Makes the lab for `nodes` nodes (at most 99).
    pub fn new(nodes: usize) -> NetLab {
        crate::require_root_and_fuse();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let lab = NetLab {
            prefix: format!("csvfs{}x{n}", std::process::id()),
            nodes,
        };
        let sw = lab.switch();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        for br in ["brc", "brs"] {
            ip(&["-n", &sw, "link", "add", br, "type", "bridge"]);
            ip(&["-n", &sw, "link", "set", br, "up"]);
        }
        for i in 1..=nodes {
            let ns = lab.node(i);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            lab.wire(
                &ns,
                "c0",
                &format!("c{i}"),
                "brc",
                &format!("10.77.1.{i}/24"),
            );
            lab.wire(
                &ns,
                "s0",
                &format!("s{i}"),
                "brs",
                &format!("10.77.2.{i}/24"),
            );
        }
        let t = lab.target();
        ip(&["netns", "add", &t]);
        ip(&["-n", &t, "link", "set", "lo", "up"]);
        lab.wire(&t, "s0", "st", "brs", &format!("{TARGET_ADDR}/24"));
        lab
    }

    /// A veth from `ns` (`inside`, with `addr`) to the switch (`outside`, on `bridge`).
    fn wire(&self, ns: &str, inside: &str, outside: &str, bridge: &str, addr: &str) {
        let sw = self.switch();
        ip(&[
            "-n", &sw, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", ns,
        ]);
        ip(&["-n", &sw, "link", "set", outside, "master", bridge]);
        ip(&["-n", &sw, "link", "set", outside, "up"]);
        ip(&["-n", ns, "addr", "add", addr, "dev", inside]);
        ip(&["-n", ns, "link", "set", inside, "up"]);
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// Node `i`'s namespace (1-based).
    pub fn node(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// The target's namespace.
    pub fn target(&self) -> String {
        format!("{}-t", self.prefix)
    }

    /// Node `i`'s address on the cluster network.
    pub fn cluster_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 1, i as u8)
    }

    /// Pulls (`false`) or plugs back (`true`) node `i`'s cluster network cable.
    pub fn cluster_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &format!("c{i}"), state]);
    }

    /// Pulls (`false`) or plugs back (`true`) node `i`'s storage network cable: its
    /// path to the target.
    pub fn storage_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &format!("s{i}"), state]);
    }

    /// Runs `f` on a thread inside namespace `ns`: sockets it opens live there.
    pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on this thread with a namespace descriptor it owns.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread inside the namespace")
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let mut names: Vec<String> = (1..=self.nodes).map(|i| self.node(i)).collect();
        names.push(self.target());
        names.push(self.switch());
        for ns in names {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}
