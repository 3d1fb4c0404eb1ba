//! mkfs.csvfs: format a LUN as a csvfs volume.

use std::path::Path;

use anyhow::{Result, bail};
use blockdev::{FileDevice, LunUrl, open_lun_exclusive};
use clap::Parser;
use metadata::{FormatOptions, Volume};

use blockdev::size::parse_size;

/// Format a LUN (an image file, a block device or an iscsi:// URL) as a csvfs volume.
#[derive(Parser, Debug)]
#[command(name = "mkfs.csvfs", version)]
pub struct MkfsArgs {
    /// The LUN: an image file (created if --size is given), a block device, or
    /// iscsi://[USER%SECRET@]HOST[:PORT]/TARGET-IQN/LUN.
    pub lun: String,
    /// The volume's label; it is mounted at /ClusterStorage/<label>.
    #[arg(short = 'L', long, default_value = "Volume1")]
    pub label: String,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Print nothing but errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// How to format, for mkfs and `csvctl volume create`.
#[derive(clap::Args, Debug)]
pub struct FormatArgs {
    /// Create or grow the image file to this size (e.g. 2G).
    #[arg(long)]
    pub size: Option<String>,
    /// Size of the metadata region (default: 1/32 of the LUN, 64M to 64G).
    #[arg(long, value_name = "SIZE")]
    pub metadata_size: Option<String>,
    /// Overwrite a LUN that already holds a csvfs volume (refused while cluster nodes
    /// use it: while its disk heartbeats advance).
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Runs mkfs.
pub fn run(args: MkfsArgs) -> Result<()> {
    let size = args.format.size.as_deref().map(parse_size).transpose()?;
    let metadata_bytes = args
        .format
        .metadata_size
        .as_deref()
        .map(parse_size)
        .transpose()?;
    let lun = args.lun.as_str();
    let path = match LunUrl::parse(lun)? {
        LunUrl::Path(p) => Some(p),
        LunUrl::Iscsi(_) => None,
    };
    match (size, &path) {
        (Some(_), None) => bail!("--size only applies to image files; {lun} is an iSCSI LUN"),
        (Some(s), Some(p)) => {
            if p.exists() && !p.is_file() {
                bail!("--size only applies to image files; {lun} is not one");
            }
            FileDevice::create_image(p, s)?;
        }
        (None, Some(p)) if !Path::new(p).exists() => {
            bail!("LUN {lun} does not exist (give --size to create an image file)")
        }
        (None, _) => {}
    }
    let dev = open_lun_exclusive(lun, false)?;
    let name = dev.name().to_string();
    if args.format.force {
        crate::in_use::refuse_if_in_use(dev.as_ref())?;
    }
    let sb = Volume::format(
        dev,
        &FormatOptions {
            label: args.label.clone(),
            metadata_bytes,
            force: args.format.force,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !args.quiet {
        let mib = |blocks: u64| blocks * 4096 / (1 << 20);
        println!(
            "formatted {} as csvfs volume {:?} ({}): {} MiB data, {} MiB metadata; mount it with: csvfs mount {}",
            name,
            sb.label,
            sb.uuid_string(),
            mib(sb.data.blocks),
            mib(sb.metadata.blocks),
            name
        );
    }
    Ok(())
}
