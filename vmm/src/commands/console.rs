//! `vmm console`: what a running VM's guest printed on its serial console, and with
//! `--follow` what it prints next, until the VM stops.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use vmm::runner::control;

use super::lifecycle::{VmArgs, vm_socket};

#[derive(Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Keep printing what the guest prints until the VM stops (or Ctrl-C).
    #[arg(long, short)]
    follow: bool,
}

pub fn run(a: ConsoleArgs) -> Result<()> {
    let (_, socket, run_dir) = vm_socket(&a.vm)?;
    let name = socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = control::console_path(&run_dir, &name);
    let mut file = std::fs::File::open(&path)
        .with_context(|| format!("cannot open the console log {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !a.follow || !socket.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
