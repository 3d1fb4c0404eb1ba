//! Builds the bundled test guest (guest/test_guest.c) into a flat binary with the
//! system's gcc, ld and objcopy, for `include_bytes!` in src/guest/test_guest.rs.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = PathBuf::from("guest/test_guest.c");
    let script = PathBuf::from("guest/test_guest.ld");
    println!("cargo::rerun-if-changed={}", src.display());
    println!("cargo::rerun-if-changed={}", script.display());
    let obj = out.join("test_guest.o");
    let elf = out.join("test_guest.elf");
    let bin = out.join("test_guest.bin");
    run(Command::new("gcc")
        .args([
            "-m64",
            "-ffreestanding",
            "-fno-pic",
            "-fno-pie",
            "-nostdlib",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-O2",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fno-builtin",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-c",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&obj));
    run(Command::new("ld")
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "--no-warn-rwx-segments",
            "-T",
        ])
        .arg(&script)
        .arg(&obj)
        .arg("-o")
        .arg(&elf));
    run(Command::new("objcopy")
        .args([
            "-O",
            "binary",
            "--set-section-flags",
            ".bss=alloc,load,contents",
        ])
        .arg(&elf)
        .arg(&bin));
}

fn run(cmd: &mut Command) {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("building the test guest needs {program} ({e}): apt-get install -y gcc binutils")
    });
    assert!(status.success(), "building the test guest: {cmd:?} failed");
}
