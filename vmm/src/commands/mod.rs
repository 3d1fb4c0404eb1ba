//! The `vmm` subcommands, one file each.

pub mod create;
pub mod disk;
