//! Opens a LUN (a path or an iscsi:// URL), prints what it is, and checks that a block
//! written near its end reads back: `cargo run -p blockdev --example lun_probe -- LUN`.
//! It overwrites the LUN's last 4 KiB: use it on scratch LUNs only.

use blockdev::{AlignedBuf, open_lun};

fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: lun_probe LUN");
        std::process::exit(2);
    };
    let dev = open_lun(&url, false).unwrap_or_else(|e| {
        eprintln!("lun_probe: {e}");
        std::process::exit(1);
    });
    println!(
        "{}: {} bytes, {}-byte blocks",
        dev.name(),
        dev.capacity(),
        dev.block_size()
    );
    let off = dev.capacity() - 4096;
    let mut data = AlignedBuf::zeroed(4096);
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let t = std::time::Instant::now();
    dev.write_at(&data, off).expect("write");
    dev.flush().expect("flush");
    let mut back = AlignedBuf::zeroed(4096);
    dev.read_at(&mut back, off).expect("read");
    assert_eq!(&back[..], &data[..], "read back differs");
    println!(
        "wrote, flushed and read back 4 KiB at {off} in {:?}",
        t.elapsed()
    );
}
