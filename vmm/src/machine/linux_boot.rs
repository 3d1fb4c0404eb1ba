//! The Linux boot path, for hosts with hardware virtualisation: a bzImage or an ELF
//! vmlinux loaded at 1 MiB, the initramfs near the top of memory, the command line
//! and the "zero page" (boot_params: setup header, e820 map) written as the x86
//! 64-bit boot protocol asks, and the entry point in 64-bit mode with %rsi pointing
//! at the zero page.
//!
//! Verified only by its unit tests here: the development machines' nested KVM does
//! not boot a stock kernel. The virtio-blk device is announced on the command line
//! (`virtio_mmio.device=`) with its interrupt line.

use std::fs::File;
use std::io::Seek;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader, load_cmdline};
use vm_memory::{Bytes, GuestAddress};

use super::MachineError;
use super::layout::{LOAD_ADDR, VIRTIO_BLK_IRQ, VIRTIO_BLK_MMIO, VIRTIO_MMIO_SIZE};
use super::memory::{GuestRam, ram_size};

/// The zero page (boot_params).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The longest command line, with its terminating zero.
pub const CMDLINE_MAX: usize = 4096;
/// Where the BIOS data area and the legacy hole begin and end.
const EBDA_START: u64 = 0x9_fc00;
const HIMEM_START: u64 = 0x10_0000;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS: u32 = 0x5372_6448;
/// "Undefined" boot loader.
const LOADER_TYPE: u8 = 0xff;
/// The highest address an initramfs may end at when the kernel does not say.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Where the vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxEntry {
    /// The kernel's 64-bit entry point.
    pub rip: u64,
    /// The zero page, passed in %rsi.
    pub rsi: u64,
}

/// The command line the kernel gets: the VM's own, then the virtio-blk device.
pub fn full_cmdline(cmdline: &str) -> String {
    format!(
        "{cmdline} virtio_mmio.device={}K@{:#x}:{}",
        VIRTIO_MMIO_SIZE >> 10,
        VIRTIO_BLK_MMIO,
        VIRTIO_BLK_IRQ
    )
    .trim_start()
    .to_string()
}

/// Loads `kernel` (bzImage, else ELF vmlinux), `initramfs` and `cmdline` into `ram`
/// and writes the zero page; returns where to enter.
pub fn load(
    ram: &GuestRam,
    kernel: &mut File,
    initramfs: Option<&mut File>,
    cmdline: &str,
) -> Result<LinuxEntry, MachineError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| MachineError::Config(format!("{what}: {e}"));
    let himem = Some(GuestAddress(HIMEM_START));
    let (entry, header, kernel_end) =
        match BzImage::load(ram, Some(GuestAddress(LOAD_ADDR)), kernel, himem) {
            Ok(r) => {
                let header = r
                    .setup_header
                    .ok_or_else(|| bad("the bzImage", &"has no setup header"))?;
                // The 64-bit entry point is 0x200 past the protected-mode code's start.
                (r.kernel_load.0 + 0x200, header, r.kernel_end)
            }
            Err(bz) => {
                kernel
                    .rewind()
                    .map_err(|e| bad("cannot read the kernel", &e))?;
                let r = Elf::load(ram, None, kernel, himem).map_err(|elf| {
                    MachineError::Config(format!(
                        "the kernel is neither a bzImage ({bz}) nor an ELF vmlinux ({elf})"
                    ))
                })?;
                let header = setup_header {
                    boot_flag: BOOT_FLAG,
                    header: HDRS,
                    kernel_alignment: 0x100_0000,
                    ..Default::default()
                };
                (r.kernel_load.0, header, r.kernel_end)
            }
        };
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS;

    let text = full_cmdline(cmdline);
    let mut line = Cmdline::new(CMDLINE_MAX).map_err(|e| bad("the command line", &e))?;
    line.insert_str(&text)
        .map_err(|e| bad("the command line", &e))?;
    load_cmdline(ram, GuestAddress(CMDLINE_ADDR), &line)
        .map_err(|e| bad("cannot write the command line", &e))?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = text.len() as u32 + 1;

    let mem_end = ram_size(ram);
    if let Some(initrd) = initramfs {
        let size = initrd
            .metadata()
            .map_err(|e| bad("cannot read the initramfs", &e))?
            .len();
        let max = match params.hdr.initrd_addr_max {
            0 => DEFAULT_INITRD_ADDR_MAX,
            m => m as u64,
        };
        let top = mem_end.min(max + 1);
        let at = top
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= kernel_end);
        let Some(at) = at else {
            return Err(MachineError::Config(format!(
                "an initramfs of {size} bytes does not fit between the kernel (ending at {kernel_end:#x}) and {top:#x}"
            )));
        };
        ram.read_exact_volatile_from(GuestAddress(at), initrd, size as usize)
            .map_err(|e| bad("cannot read the initramfs into guest memory", &e))?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let e820 = [
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        (HIMEM_START, mem_end - HIMEM_START, E820_RAM),
    ];
    for (i, (addr, size, kind)) in e820.into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestRam>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        ram,
    )
    .map_err(|e| bad("cannot write the zero page", &e))?;
    Ok(LinuxEntry {
        rip: entry,
        rsi: ZERO_PAGE_ADDR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::memory::new_ram;
    use std::io::{Read, Write};

    fn read_all(f: &mut File) -> Vec<u8> {
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    /// A minimal bzImage: boot sector and setup header (one setup sector), then a
    /// protected-mode kernel of recognisable bytes.
    fn fake_bzimage(kernel: &[u8]) -> File {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&HDRS.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&(LOAD_ADDR as u32).to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
        img.extend_from_slice(kernel);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&img).unwrap();
        f
    }

    fn zero_page(ram: &GuestRam) -> boot_params {
        ram.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
    }

    #[test]
    fn a_bzimage_loads_at_1_mib_with_initramfs_cmdline_and_e820() {
        let ram = new_ram(64 << 20).unwrap();
        let payload: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let mut kernel = fake_bzimage(&payload);
        let mut initrd = tempfile::tempfile().unwrap();
        initrd.write_all(&[0x5a; 10_000]).unwrap();
        initrd.rewind().unwrap();
        let entry = load(&ram, &mut kernel, Some(&mut initrd), "console=ttyS0 quiet").unwrap();
        assert_eq!(
            entry,
            LinuxEntry {
                rip: LOAD_ADDR + 0x200,
                rsi: ZERO_PAGE_ADDR
            }
        );
        let mut got = vec![0u8; payload.len()];
        ram.read_slice(&mut got, GuestAddress(LOAD_ADDR)).unwrap();
        assert_eq!(got, payload, "the protected-mode kernel at 1 MiB");

        let p = zero_page(&ram);
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ hdr.header }, HDRS);
        assert_eq!({ hdr.type_of_loader }, LOADER_TYPE);
        assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE_ADDR);
        let mut line = vec![0u8; { hdr.cmdline_size } as usize];
        ram.read_slice(&mut line, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        let expected =
            format!("console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:{VIRTIO_BLK_IRQ}\0");
        assert_eq!(String::from_utf8(line).unwrap(), expected);

        let (at, size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
        assert_eq!(size, 10_000);
        assert_eq!(at % 4096, 0);
        assert!(at + size <= 64 << 20 && at >= LOAD_ADDR + payload.len() as u64);
        let mut rd = vec![0u8; size as usize];
        ram.read_slice(&mut rd, GuestAddress(at)).unwrap();
        assert!(rd.iter().all(|&b| b == 0x5a));

        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table;
        assert_eq!(
            ({ e[0].addr }, { e[0].size }, { e[0].r#type }),
            (0, EBDA_START, E820_RAM)
        );
        assert_eq!({ e[1].r#type }, E820_RESERVED);
        assert_eq!(
            ({ e[2].addr }, { e[2].addr } + { e[2].size }),
            (HIMEM_START, 64 << 20)
        );
    }

    #[test]
    fn what_is_not_a_kernel_or_does_not_fit_is_refused() {
        let ram = new_ram(8 << 20).unwrap();
        let mut junk = tempfile::tempfile().unwrap();
        junk.write_all(&[7u8; 4096]).unwrap();
        let e = load(&ram, &mut junk, None, "").unwrap_err().to_string();
        assert!(e.contains("neither a bzImage"), "{e}");
        assert_eq!(read_all(&mut junk).len(), 4096);

        let mut kernel = fake_bzimage(&[1u8; 4096]);
        let mut big = tempfile::tempfile().unwrap();
        big.set_len(16 << 20).unwrap();
        let e = load(&ram, &mut kernel, Some(&mut big), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit"), "{e}");

        let mut kernel = fake_bzimage(&[1u8; 4096]);
        let e = load(&ram, &mut kernel, None, &"x".repeat(5000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("command line"), "{e}");
    }
}
