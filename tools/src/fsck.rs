//! fsck.csvfs: check a csvfs volume and repair what is safe to repair.
//!
//! Exit codes follow fsck(8): 0 clean, 1 errors corrected, 4 errors left uncorrected,
//! 8 operational error.

use anyhow::Result;
use blockdev::open_lun_exclusive;
use clap::Parser;

/// Check a csvfs volume (it must not be mounted).
#[derive(Parser, Debug)]
#[command(name = "fsck.csvfs", version)]
pub struct FsckArgs {
    /// The LUN: an image file, a block device, or an iscsi:// URL.
    pub lun: String,
    /// Repair what is safe to repair (also -y, -p, -a as fsck(8) passes them).
    #[arg(short = 'r', long, visible_short_aliases = ['y', 'p', 'a'])]
    pub repair: bool,
    /// Check only, never write (the default).
    #[arg(short = 'n', long, conflicts_with = "repair")]
    pub no_repair: bool,
}

/// Runs fsck; returns the exit code.
pub fn run(args: FsckArgs) -> Result<i32> {
    let dev = open_lun_exclusive(&args.lun, !args.repair)?;
    let name = dev.name().to_string();
    crate::in_use::refuse_if_in_use(dev.as_ref())?;
    let report = metadata::fsck::check(dev, args.repair).map_err(|e| anyhow::anyhow!("{e}"))?;
    for p in &report.problems {
        println!("{}: {p}", name);
    }
    for r in &report.repaired {
        println!("{}: repaired: {r}", name);
    }
    println!(
        "{}: {} inodes, {} extents, {} orphans; {}",
        name,
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
