//! The `vmm` subcommands, one file each (start, stop, save and restore share
//! `lifecycle`; `locate` finds VMs and nodes on this host).

pub mod console;
pub mod create;
pub mod disk;
pub mod lifecycle;
pub mod list;
pub mod locate;
pub mod migrate;
pub mod run;
