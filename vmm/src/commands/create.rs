//! `vmm create`: a VM's directory on a volume, with its `vm.toml` and its VHD disk.
//! Nothing is left half-made: on any failure what was created is removed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use blockdev::size::parse_size;
use clap::Args;
use vmm::vhd::VhdImage;
use vmm::vm_config::{Boot, DiskConfig, DiskFormat, VM_CONFIG_FILE, VmConfig, check_vm_name};

/// A Linux VM's kernel and initramfs, in its directory.
const KERNEL_FILE: &str = "kernel";
const INITRAMFS_FILE: &str = "initramfs";

#[derive(Args)]
pub struct CreateArgs {
    /// The VM's name (its directory on the volume).
    name: String,
    /// The volume (its label) that holds the VM.
    #[arg(long)]
    volume: String,
    /// Guest memory (K, M, G).
    #[arg(long, default_value = "512M")]
    memory: String,
    /// The disk's size (K, M, G, T).
    #[arg(long, default_value = "4G")]
    disk_size: String,
    #[arg(long, value_enum, default_value = "vhd-dynamic")]
    disk_format: DiskFormat,
    /// Boot a Linux kernel (bzImage or vmlinux), copied into the VM's directory (needs
    /// hardware virtualisation: not verified on nested KVM).
    #[arg(long, conflicts_with = "test_guest")]
    kernel: Option<PathBuf>,
    /// The initramfs for --kernel.
    #[arg(long, requires = "kernel")]
    initramfs: Option<PathBuf>,
    /// The kernel command line for --kernel.
    #[arg(long, requires = "kernel", default_value = "console=ttyS0")]
    cmdline: String,
    /// Run the bundled test guest (the default when no --kernel is given).
    #[arg(long)]
    test_guest: bool,
    /// For the test guest: memory it dirties per second (K, M, G).
    #[arg(long, default_value = "0")]
    dirty_rate: String,
    /// The cluster's configuration (it names the volumes).
    #[arg(long, default_value_os_t = crate::default_config())]
    config: PathBuf,
    /// The directory under which this node mounts volumes at ClusterStorage/<label>
    /// (as `csvfs node --root`).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

pub fn run(a: CreateArgs) -> Result<()> {
    check_vm_name(&a.name).map_err(anyhow::Error::msg)?;
    let config = lockmgr::Config::load(&a.config)?;
    if !config.volumes.iter().any(|v| v.label == a.volume) {
        let known: Vec<_> = config.volumes.iter().map(|v| v.label.as_str()).collect();
        bail!(
            "{} has no volume {:?} (it has: {}); create one with `csvctl volume create`",
            a.config.display(),
            a.volume,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    let mount = a.root.join("ClusterStorage").join(&a.volume);
    if !is_mount_point(&mount) {
        bail!(
            "volume {} is not mounted at {}: start this node (`csvfs node --config {}`) first",
            a.volume,
            mount.display(),
            a.config.display()
        );
    }
    let memory = parse_size(&a.memory)?;
    if memory % (1 << 20) != 0 || memory == 0 {
        bail!("--memory {}: give a whole number of MiB", a.memory);
    }
    let disk_size = parse_size(&a.disk_size)?;
    let dirty = parse_size(&a.dirty_rate)?;
    // A kernel and initramfs are copied into the VM's directory, so that every node
    // boots the same ones.
    let copies: Vec<(PathBuf, &str)> = a
        .kernel
        .iter()
        .map(|k| (k.clone(), KERNEL_FILE))
        .chain(a.initramfs.iter().map(|i| (i.clone(), INITRAMFS_FILE)))
        .collect();
    for (from, _) in &copies {
        if !from.is_file() {
            bail!("{} is not a file", from.display());
        }
    }
    let boot = match a.kernel {
        Some(_) => Boot::Linux {
            kernel: PathBuf::from(KERNEL_FILE),
            initramfs: a.initramfs.as_ref().map(|_| PathBuf::from(INITRAMFS_FILE)),
            cmdline: a.cmdline,
        },
        None => Boot::TestGuest {
            dirty_mib_per_s: u32::try_from(dirty >> 20).context("--dirty-rate is too large")?,
        },
    };
    let disk_file = PathBuf::from(format!("{}.vhd", a.name));
    let vm = VmConfig {
        name: a.name.clone(),
        memory_mib: memory >> 20,
        vcpus: 1,
        disk: DiskConfig {
            file: disk_file.clone(),
            format: a.disk_format,
        },
        boot,
    };
    vm.check().map_err(anyhow::Error::msg)?;
    let dir = mount.join(&a.name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "VM {} already exists on volume {} ({})",
                a.name,
                a.volume,
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let made = (|| -> Result<VhdImage> {
        let vhd =
            VhdImage::create_path(&dir.join(&disk_file), a.disk_format.disk_type(), disk_size)
                .with_context(|| {
                    format!("cannot create the disk {}", dir.join(&disk_file).display())
                })?;
        for (from, name) in &copies {
            std::fs::copy(from, dir.join(name)).with_context(|| {
                format!("cannot copy {} into {}", from.display(), dir.display())
            })?;
        }
        let path = dir.join(VM_CONFIG_FILE);
        std::fs::write(&path, vm.to_toml())
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(vhd)
    })();
    match made {
        Ok(vhd) => {
            println!(
                "created VM {} on volume {}: {} ({} MiB memory, {} disk of {} bytes)",
                a.name,
                a.volume,
                dir.display(),
                vm.memory_mib,
                match a.disk_format {
                    DiskFormat::VhdFixed => "fixed VHD",
                    DiskFormat::VhdDynamic => "dynamic VHD",
                },
                vhd.size()
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (dir.metadata(), dir.parent().map(|p| p.metadata())) else {
        return false;
    };
    me.is_dir() && me.dev() != parent.dev()
}
