//! Where things are in a guest's physical address space and I/O ports: the fixed
//! layout the VMM sets up before the first instruction runs.

/// The GDT of the long-mode entry: null, 64-bit code, data.
pub const GDT_ADDR: u64 = 0x500;
/// The status block the test guest keeps (its counter, records written, ...).
pub const TEST_GUEST_STATUS_ADDR: u64 = 0x6000;
/// The test guest's parameters, passed in %rdi.
pub const TEST_GUEST_PARAMS_ADDR: u64 = 0x7000;
/// Page tables: the PML4, one PDPT, and four page directories of 2 MiB pages that
/// identity-map the first 4 GiB (memory and the MMIO hole above it).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const PD_COUNT: u64 = 4;
/// The initial stack pointer (the stack grows down from here).
pub const STACK_TOP: u64 = 0x8_0000;
/// Where a kernel or the test guest is loaded and entered.
pub const LOAD_ADDR: u64 = 0x10_0000;
/// The memory the test guest dirties: from here to the end of memory.
pub const DIRTY_BASE: u64 = 0x40_0000;
/// The virtio-blk device's MMIO window.
pub const VIRTIO_BLK_MMIO: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The virtio-blk device's interrupt line (GSI), raised when it completes requests.
pub const VIRTIO_BLK_IRQ: u32 = 5;
/// Guest memory must end below the MMIO hole.
pub const MAX_MEMORY: u64 = 0xc000_0000;
/// The smallest memory a VM may have: the layout above, and room to dirty.
pub const MIN_MEMORY: u64 = 8 << 20;
/// COM1, the serial console: eight ports from here.
pub const COM1: u16 = 0x3f8;
/// The paravirtual clock port: a 32-bit read gives the guest's milliseconds.
pub const CLOCK_PORT: u16 = 0x510;
/// The paravirtual idle port: a 32-bit write of n makes the vCPU wait n milliseconds
/// (at most [`MAX_IDLE_MS`]) or until the VMM wants it, without using the host's CPU;
/// the guest's stand-in for HLT with a timer.
pub const IDLE_PORT: u16 = 0x518;
/// The longest wait one write to [`IDLE_PORT`] asks for.
pub const MAX_IDLE_MS: u32 = 10;
/// The TSS the kernel's in-kernel irqchip needs (three pages, above memory).
pub const TSS_ADDR: usize = 0xfffb_d000;
