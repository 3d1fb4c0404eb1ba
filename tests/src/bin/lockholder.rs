//! A process that takes a lock on a file, for the cluster lock tests:
//!
//! `lockholder FILE MODE HOLD_MS`, MODE one of `setlk` (fcntl F_SETLK, whole file,
//! write), `setlkw` (F_SETLKW), `getlk` (F_GETLK for a write lock; prints what
//! conflicts), `flock` (flock LOCK_EX) or `flocknb` (LOCK_EX | LOCK_NB).
//!
//! Prints `locked` once it holds the lock (or `busy` and exits 11 when a non-blocking
//! attempt is refused), holds it HOLD_MS milliseconds, and exits 0 (closing the file
//! lets the lock go).

use std::io::Write;
use std::os::fd::AsRawFd;

fn whole_file(typ: i32) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: lockholder FILE setlk|setlkw|getlk|flock|flocknb HOLD_MS");
        std::process::exit(2);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&args[1])
        .unwrap_or_else(|e| {
            eprintln!("lockholder: {}: {e}", args[1]);
            std::process::exit(1)
        });
    let hold: u64 = args[3].parse().expect("HOLD_MS");
    let fd = file.as_raw_fd();
    // SAFETY: fcntl/flock on a descriptor this process owns, with a valid flock struct.
    let rc = unsafe {
        match args[2].as_str() {
            "setlk" => libc::fcntl(fd, libc::F_SETLK, &whole_file(libc::F_WRLCK)),
            "setlkw" => libc::fcntl(fd, libc::F_SETLKW, &whole_file(libc::F_WRLCK)),
            "getlk" => {
                let mut fl = whole_file(libc::F_WRLCK);
                let rc = libc::fcntl(fd, libc::F_GETLK, &mut fl);
                if rc == 0 {
                    let kind = match i32::from(fl.l_type) {
                        libc::F_UNLCK => "unlocked",
                        libc::F_RDLCK => "read",
                        _ => "write",
                    };
                    println!("{kind} {} {}", fl.l_start, fl.l_len);
                    return;
                }
                rc
            }
            "flock" => libc::flock(fd, libc::LOCK_EX),
            "flocknb" => libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB),
            m => {
                eprintln!("lockholder: unknown mode {m}");
                std::process::exit(2)
            }
        }
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
            println!("busy");
            std::process::exit(11);
        }
        eprintln!("lockholder: {e}");
        std::process::exit(1);
    }
    println!("locked");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(hold));
}
