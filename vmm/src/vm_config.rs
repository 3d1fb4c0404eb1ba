//! A VM's configuration: `vm.toml` in the VM's directory on a volume, beside its
//! disk, so that whichever node runs the VM reads the same one.
//!
//! ```toml
//! name = "web1"
//! memory_mib = 512
//! vcpus = 1
//!
//! [disk]
//! file = "web1.vhd"        # relative to the VM's directory
//! format = "vhd-dynamic"   # or "vhd-fixed"
//!
//! [boot]
//! kind = "test-guest"      # the bundled 64-bit test program
//! dirty_mib_per_s = 0      # memory it dirties per second
//! # or: kind = "linux", kernel = "...", initramfs = "...", cmdline = "..."
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vhd::DiskType;

/// The file name of a VM's configuration in its directory.
pub const VM_CONFIG_FILE: &str = "vm.toml";

/// A VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The VM's name: also its directory's name on the volume.
    pub name: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u8,
    pub disk: DiskConfig,
    pub boot: Boot,
}

/// The VM's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The VHD file, relative to the VM's directory.
    pub file: PathBuf,
    pub format: DiskFormat,
}

/// The formats a VM disk can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    /// A fixed VHD: the whole size taken up front.
    VhdFixed,
    /// A dynamic VHD: blocks allocated as the guest writes them.
    VhdDynamic,
}

impl DiskFormat {
    /// The VHD disk type of the format.
    pub fn disk_type(self) -> DiskType {
        match self {
            DiskFormat::VhdFixed => DiskType::Fixed,
            DiskFormat::VhdDynamic => DiskType::Dynamic,
        }
    }
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Boot {
    /// The bundled test guest, dirtying `dirty_mib_per_s` MiB of memory a second.
    TestGuest { dirty_mib_per_s: u32 },
    /// A Linux kernel (bzImage or vmlinux), with an optional initramfs.
    Linux {
        kernel: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initramfs: Option<PathBuf>,
        #[serde(default)]
        cmdline: String,
    },
}

/// Why a VM's configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VmConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl VmConfig {
    /// Reads and checks `vm.toml` at `path`.
    pub fn load(path: &Path) -> Result<VmConfig, VmConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| VmConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        VmConfig::parse(&text, path)
    }

    /// Parses and checks a configuration's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<VmConfig, VmConfigError> {
        let invalid = |message: String| VmConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let config: VmConfig =
            toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        config.check().map_err(invalid)?;
        Ok(config)
    }

    /// Checks what the types alone do not.
    pub fn check(&self) -> Result<(), String> {
        check_vm_name(&self.name)?;
        if self.memory_mib == 0 || self.memory_mib > 1 << 20 {
            return Err(format!(
                "memory_mib = {}: give from 1 MiB to 1 TiB",
                self.memory_mib
            ));
        }
        if self.vcpus != 1 {
            return Err(format!(
                "vcpus = {}: this VMM runs one virtual CPU per VM",
                self.vcpus
            ));
        }
        if self.disk.file.is_absolute() || self.disk.file.components().count() != 1 {
            return Err(format!(
                "disk.file = {:?}: give a file name in the VM's directory",
                self.disk.file
            ));
        }
        Ok(())
    }

    /// The configuration as `vm.toml` text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a VM configuration always serialises")
    }
}

/// Checks a VM name: it names a directory on the volume and appears in commands, so
/// letters, digits, '-', '_' and '.', not starting with '.', at most 63 bytes.
pub fn check_vm_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || name.len() > 63 || name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(format!(
            "VM name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', not starting with '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmConfig {
        VmConfig {
            name: "web1".into(),
            memory_mib: 512,
            vcpus: 1,
            disk: DiskConfig {
                file: "web1.vhd".into(),
                format: DiskFormat::VhdDynamic,
            },
            boot: Boot::TestGuest {
                dirty_mib_per_s: 64,
            },
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let text = c.to_toml();
        assert_eq!(VmConfig::parse(&text, Path::new("vm.toml")).unwrap(), c);
        assert!(text.contains("kind = \"test-guest\""), "{text}");
        assert!(text.contains("format = \"vhd-dynamic\""), "{text}");
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let mut c = sample();
        c.name = "../x".into();
        let e = VmConfig::parse(&c.to_toml(), Path::new("/v/vm.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/v/vm.toml: VM name"), "{e}");
        let mut c = sample();
        c.disk.file = "/etc/passwd".into();
        assert!(VmConfig::parse(&c.to_toml(), Path::new("vm.toml")).is_err());
        let e = VmConfig::parse("name = 1", Path::new("vm.toml")).unwrap_err();
        assert!(e.to_string().starts_with("vm.toml: "), "{e}");
    }
}
