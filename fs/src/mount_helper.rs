//! `mount.fuse.csvfs`: what mount(8) runs for `mount -t fuse.csvfs LUN DIR -o OPTS` and
//! for fstab lines of type `fuse.csvfs`. It is the csvfs binary itself, installed as a
//! symlink under that name in /sbin; it turns mount(8)'s arguments into `csvfs mount`.

use std::path::PathBuf;

use crate::mount::{MountRequest, run};
use crate::options::MountOptions;

/// True when the program was started under the helper's name.
pub fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "mount.fuse.csvfs"))
        .unwrap_or(false)
}

fn usage() -> ! {
    eprintln!("usage: mount.fuse.csvfs LUN MOUNTPOINT [-o OPTIONS] [-s] [-f] [-n] [-v]");
    std::process::exit(1);
}

/// Runs the helper: `LUN MOUNTPOINT [-o OPTIONS] [-s] [-f] [-n] [-v]`.
pub fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut options = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-o" => options.push(args.next().unwrap_or_else(|| usage())),
            // Flags mount(8) passes to helpers: sloppy, fake, no-mtab, verbose.
            "-s" | "-n" | "-v" => {}
            "-f" => return Ok(()),
            "-t" => {
                args.next();
            }
            "-h" | "--help" => usage(),
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            _ => positional.push(a),
        }
    }
    if positional.len() != 2 {
        usage();
    }
    let options = MountOptions::parse(&options.join(","))?;
    run(MountRequest {
        lun: positional[0].clone(),
        mountpoint: Some(PathBuf::from(&positional[1])),
        options,
        foreground: false,
        log: None,
    })
}
