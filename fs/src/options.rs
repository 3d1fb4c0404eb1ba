//! Mount options, as `-o` and fstab give them.

use anyhow::{Result, bail};

/// What a mount was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Read-only mount: the LUN is never written.
    pub read_only: bool,
    /// Honour device files.
    pub dev: bool,
    /// Honour set-user-ID and set-group-ID bits.
    pub suid: bool,
    /// Allow execution.
    pub exec: bool,
    /// Do not update access times.
    pub noatime: bool,
    /// Mount as plain `fuse` instead of `fuse.csvfs` (for tools such as xfstests).
    pub subtype: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Let the kernel cache writes and send them back in large batches (FUSE writeback
    /// cache). Off by default: the kernel then reports a full volume only at fsync or
    /// close, not at write(2), as a user of a cluster file system expects.
    pub writeback: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            dev: true,
            suid: true,
            exec: true,
            noatime: false,
            subtype: true,
            threads: 4,
            writeback: false,
        }
    }
}

/// Options of fstab and mount(8) that concern mount(8) only; a mount ignores them.
const IGNORED: &[&str] = &[
    "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner", "async",
    "relatime",
];

impl MountOptions {
    /// Parses a comma-separated option list; several `-o` may be joined with commas.
    pub fn parse(list: &str) -> Result<MountOptions> {
        let mut o = MountOptions::default();
        for opt in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match opt {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "dev" => o.dev = true,
                "nodev" => o.dev = false,
                "suid" => o.suid = true,
                "nosuid" => o.suid = false,
                "exec" => o.exec = true,
                "noexec" => o.exec = false,
                "atime" => o.noatime = false,
                "noatime" => o.noatime = true,
                "nosubtype" => o.subtype = false,
                "writeback" => o.writeback = true,
                "nowriteback" => o.writeback = false,
                "subtype" | "subtype=csvfs" => o.subtype = true,
                _ if IGNORED.contains(&opt)
                    || opt.starts_with("x-")
                    || opt.starts_with("comment=") => {}
                _ => {
                    if let Some(n) = opt.strip_prefix("threads=") {
                        o.threads = n.parse().ok().filter(|&n| (1..=64).contains(&n)).ok_or_else(|| {
                            anyhow::anyhow!("mount option threads={n}: give a number of worker threads from 1 to 64")
                        })?;
                    } else {
                        bail!(
                            "unknown mount option {opt:?}; csvfs takes ro, rw, dev, nodev, suid, nosuid, exec, noexec, atime, noatime, nosubtype, writeback, nowriteback, threads=N"
                        );
                    }
                }
            }
        }
        Ok(o)
    }

    /// The options to pass to the kernel through fuser.
    pub fn fuse_options(&self, source: &str) -> Vec<fuser::MountOption> {
        use fuser::MountOption::*;
        let mut v = vec![FSName(source.to_string()), DefaultPermissions];
        if self.subtype {
            // fuser passes Subtype only to fusermount; the kernel takes it as an option.
            v.push(CUSTOM("subtype=csvfs".into()));
        }
        v.push(if self.read_only { RO } else { RW });
        v.push(if self.dev { Dev } else { NoDev });
        v.push(if self.suid { Suid } else { NoSuid });
        v.push(if self.exec { Exec } else { NoExec });
        if self.noatime {
            v.push(NoAtime);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_fstab_and_mount_pass() {
        let o =
            MountOptions::parse("defaults,ro,nodev,nosuid,_netdev,x-systemd.automount,nosubtype")
                .unwrap();
        assert!(o.read_only && !o.dev && !o.suid && !o.subtype);
        assert_eq!(MountOptions::parse("").unwrap(), MountOptions::default());
        let err = MountOptions::parse("bogus").unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(MountOptions::parse("threads=0").is_err());
    }
}
