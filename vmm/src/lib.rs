//! The csvfs VMM: virtual machines whose disks (VHD files) live on a shared csvfs
//! volume, so that any node of the cluster can run them and a running VM can move
//! between nodes by moving its memory while its disk stays put.
//!
//! This crate owns the disk formats ([`vhd`]), the VM's configuration beside its disk
//! on the volume ([`vm_config`]), the KVM virtual machine ([`machine`]) and its
//! devices ([`devices`]), the bundled test guest ([`test_guest`]) and the `vmm` CLI.
//! It does not own the volume (the `csvfs` crate mounts it) nor the cluster's
//! membership and leases (`lockmgr`).

pub mod devices;
pub mod machine;
pub mod migration;
pub mod runner;
pub mod test_guest;
pub mod vhd;
pub mod vm_config;
