//! The csvfs node daemon as a library: the FUSE front end, the data path, mount
//! handling. `main.rs` is its command line.
//!
//! Owns the file system semantics a node serves through FUSE; knows nothing of KVM.

pub mod cluster;
pub mod data;
pub mod fuse_fs;
pub mod inodes;
pub mod locks;
pub mod meta;
pub mod mount;
pub mod mount_helper;
pub mod node;
pub mod options;
pub mod times;
