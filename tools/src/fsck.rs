//! fsck.csvfs: check a csvfs volume and repair what is safe to repair.
//!
//! Exit codes follow fsck(8): 0 clean, 1 errors corrected, 4 errors left uncorrected,
//! 8 operational error.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use blockdev::FileDevice;
use clap::Parser;

use crate::lun_lock::refuse_if_mounted;

/// Check a csvfs volume (it must not be mounted).
#[derive(Parser, Debug)]
#[command(name = "fsck.csvfs", version)]
pub struct FsckArgs {
    /// The LUN: an image file or a block device.
    pub lun: PathBuf,
    /// Repair what is safe to repair (also -y, -p, -a as fsck(8) passes them).
    #[arg(short = 'r', long, visible_short_aliases = ['y', 'p', 'a'])]
    pub repair: bool,
    /// Check only, never write (the default).
    #[arg(short = 'n', long, conflicts_with = "repair")]
    pub no_repair: bool,
}

/// Runs fsck; returns the exit code.
pub fn run(args: FsckArgs) -> Result<i32> {
    if !args.lun.exists() {
        anyhow::bail!("LUN {} does not exist", args.lun.display());
    }
    let dev = FileDevice::open(&args.lun, !args.repair)?;
    refuse_if_mounted(&dev)?;
    let report =
        metadata::fsck::check(Arc::new(dev), args.repair).map_err(|e| anyhow::anyhow!("{e}"))?;
    for p in &report.problems {
        println!("{}: {p}", args.lun.display());
    }
    for r in &report.repaired {
        println!("{}: repaired: {r}", args.lun.display());
    }
    println!(
        "{}: {} inodes, {} extents, {} orphans; {}",
        args.lun.display(),
        report.inodes,
        report.extents,
        report.orphans,
        if report.is_clean() {
            "clean".to_string()
        } else {
            format!("{} problems", report.problems.len())
        }
    );
    Ok(if report.is_clean() {
        0
    } else if args.repair && report.problems.iter().all(|p| p.repairable) {
        1
    } else {
        4
    })
}
