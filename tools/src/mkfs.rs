//! mkfs.csvfs: format a LUN as a csvfs volume.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use blockdev::FileDevice;
use clap::Parser;
use metadata::{FormatOptions, Volume};

use crate::lun_lock::refuse_if_mounted;
use crate::size::parse_size;

/// Format a LUN (an image file or a block device) as a csvfs volume.
#[derive(Parser, Debug)]
#[command(name = "mkfs.csvfs", version)]
pub struct MkfsArgs {
    /// The LUN: an image file (created if --size is given) or a block device.
    pub lun: PathBuf,
    /// The volume's label; it is mounted at /ClusterStorage/<label>.
    #[arg(short = 'L', long, default_value = "Volume1")]
    pub label: String,
    /// Create or grow the image file to this size (e.g. 2G).
    #[arg(long)]
    pub size: Option<String>,
    /// Size of the metadata region (default: 1/32 of the LUN, 64M to 64G).
    #[arg(long, value_name = "SIZE")]
    pub metadata_size: Option<String>,
    /// Overwrite a LUN that already holds a csvfs volume.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Print nothing but errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Runs mkfs.
pub fn run(args: MkfsArgs) -> Result<()> {
    let size = args.size.as_deref().map(parse_size).transpose()?;
    let metadata_bytes = args.metadata_size.as_deref().map(parse_size).transpose()?;
    let lun: &Path = &args.lun;
    match size {
        Some(s) => {
            if lun.exists() && !lun.is_file() {
                bail!(
                    "--size only applies to image files; {} is not one",
                    lun.display()
                );
            }
            FileDevice::create_image(lun, s)?;
        }
        None if !lun.exists() => bail!(
            "LUN {} does not exist (give --size to create an image file)",
            lun.display()
        ),
        None => {}
    }
    let dev = FileDevice::open(lun, false)?;
    refuse_if_mounted(&dev)?;
    let dev = Arc::new(dev);
    let sb = Volume::format(
        dev,
        &FormatOptions {
            label: args.label.clone(),
            metadata_bytes,
            force: args.force,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !args.quiet {
        let mib = |blocks: u64| blocks * 4096 / (1 << 20);
        println!(
            "formatted {} as csvfs volume {:?} ({}): {} MiB data, {} MiB metadata; mount it with: csvfs mount {}",
            lun.display(),
            sb.label,
            sb.uuid_string(),
            mib(sb.data.blocks),
            mib(sb.metadata.blocks),
            lun.display()
        );
    }
    Ok(())
}
