//! `vmm disk`: VHD files by hand — create an empty one, import a raw image into one,
//! export one to a raw image, and show what one holds (checking it on the way).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use anyhow::{Context, Result};
use blockdev::size::parse_size;
use clap::Subcommand;
use vmm::vhd::{DiskType, VhdImage, convert};
use vmm::vm_config::DiskFormat;

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Create an empty VHD of the given size.
    Create {
        /// The new VHD file (must not exist).
        file: PathBuf,
        /// The disk's size as the guest sees it (a multiple of 512; K, M, G, T).
        #[arg(long)]
        size: String,
        #[arg(long, value_enum, default_value = "vhd-dynamic")]
        format: DiskFormat,
    },
    /// Copy a raw image into a new VHD (zero runs are not written).
    Import {
        /// The raw image to read.
        raw: PathBuf,
        /// The new VHD file (must not exist).
        vhd: PathBuf,
        #[arg(long, value_enum, default_value = "vhd-dynamic")]
        format: DiskFormat,
    },
    /// Copy a VHD's disk into a raw image (sparse where the disk reads as zeros).
    Export {
        /// The VHD to read.
        vhd: PathBuf,
        /// The raw image to write (created or truncated).
        raw: PathBuf,
    },
    /// Check a VHD and print its type, size and allocation.
    Info {
        /// The VHD to read.
        vhd: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: DiskCommand) -> Result<()> {
    match cmd {
        DiskCommand::Create { file, size, format } => {
            let size = parse_size(&size)?;
            let vhd = VhdImage::create_path(&file, format.disk_type(), size)
                .with_context(|| format!("cannot create {}", file.display()))?;
            println!(
                "created {} ({}, {} bytes)",
                file.display(),
                kind(vhd.disk_type()),
                vhd.size()
            );
        }
        DiskCommand::Import { raw, vhd, format } => {
            let mut src =
                File::open(&raw).with_context(|| format!("cannot open {}", raw.display()))?;
            let dest = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&vhd)
                .with_context(|| format!("cannot create {}", vhd.display()))?;
            match convert::import(&mut src, dest, format.disk_type()) {
                Ok(image) => println!(
                    "imported {} into {} ({}, {} bytes, {} allocated)",
                    raw.display(),
                    vhd.display(),
                    kind(image.disk_type()),
                    image.size(),
                    image.allocated()
                ),
                Err(e) => {
                    // Nothing half-done: the new file goes.
                    let _ = std::fs::remove_file(&vhd);
                    return Err(e).with_context(|| format!("cannot import {}", raw.display()));
                }
            }
        }
        DiskCommand::Export { vhd, raw } => {
            let image = VhdImage::open_path(&vhd, true)
                .with_context(|| format!("cannot open {}", vhd.display()))?;
            let dest = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&raw)
                .with_context(|| format!("cannot open {}", raw.display()))?;
            convert::export(&image, &dest)
                .with_context(|| format!("cannot export {}", vhd.display()))?;
            println!(
                "exported {} to {} ({} bytes)",
                vhd.display(),
                raw.display(),
                image.size()
            );
        }
        DiskCommand::Info { vhd, json } => {
            let image = VhdImage::open_path(&vhd, true)
                .with_context(|| format!("cannot open {}", vhd.display()))?;
            let f = image.footer();
            let creator = String::from_utf8_lossy(&f.creator_app).into_owned();
            if json {
                let info = serde_json::json!({
                    "file": vhd,
                    "type": kind(image.disk_type()),
                    "size": image.size(),
                    "allocated": image.allocated(),
                    "creator": creator,
                });
                println!("{info}");
            } else {
                println!("file:      {}", vhd.display());
                println!("type:      {}", kind(image.disk_type()));
                println!("size:      {} bytes", image.size());
                println!("allocated: {} bytes", image.allocated());
                println!("creator:   {creator:?}");
            }
        }
    }
    Ok(())
}

fn kind(t: DiskType) -> &'static str {
    match t {
        DiskType::Fixed => "fixed",
        DiskType::Dynamic => "dynamic",
    }
}
