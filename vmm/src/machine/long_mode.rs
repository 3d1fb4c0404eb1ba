//! Entering a guest directly in 64-bit mode: a flat GDT, page tables that
//! identity-map the first 4 GiB with 2 MiB pages, and the control registers that turn
//! on protection, paging and long mode. Both the test guest and a 64-bit Linux entry
//! start from this state.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::MachineError;
use super::layout::{GDT_ADDR, PD_ADDR, PD_COUNT, PDPT_ADDR, PML4_ADDR, STACK_TOP};
use super::memory::GuestRam;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_HUGE: u64 = 0x80;

/// The GDT: null, a 64-bit code segment (selector 0x08), a data segment (0x10).
const GDT: [u64; 3] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;

/// Writes the GDT and page tables into `ram`.
pub fn write_tables(ram: &GuestRam) -> Result<(), MachineError> {
    let w = |v: u64, at: u64| {
        ram.write_obj(v, GuestAddress(at)).map_err(|e| {
            MachineError::Config(format!("guest memory too small for the boot tables: {e}"))
        })
    };
    for (i, &entry) in GDT.iter().enumerate() {
        w(entry, GDT_ADDR + i as u64 * 8)?;
    }
    w(PDPT_ADDR | PAGE_PRESENT_RW, PML4_ADDR)?;
    for d in 0..PD_COUNT {
        let pd = PD_ADDR + d * 0x1000;
        w(pd | PAGE_PRESENT_RW, PDPT_ADDR + d * 8)?;
        for e in 0..512u64 {
            let phys = ((d * 512) + e) << 21;
            w(phys | PAGE_PRESENT_RW | PAGE_HUGE, pd + e * 8)?;
        }
    }
    Ok(())
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: if code { 0 } else { 1 },
        s: 1,
        l: if code { 1 } else { 0 },
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// `sregs` (as KVM created them) changed to 64-bit mode with the tables above.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.cs = segment(CODE_SELECTOR, true);
    let data = segment(DATA_SELECTOR, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers at entry: `rip`, the stack, `rdi` (the first argument of the
/// test guest) and `rsi` (the zero page of a Linux kernel).
pub fn entry_regs(rip: u64, rdi: u64, rsi: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rdi,
        rsi,
        rsp: STACK_TOP,
        rbp: STACK_TOP,
        rflags: 0x2,
        ..Default::default()
    }
}

/// The FPU in its power-on state.
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::memory::new_ram;

    #[test]
    fn tables_identity_map_the_first_4_gib() {
        let ram = new_ram(8 << 20).unwrap();
        write_tables(&ram).unwrap();
        let r = |at: u64| ram.read_obj::<u64>(GuestAddress(at)).unwrap();
        assert_eq!(r(PML4_ADDR), PDPT_ADDR | 3);
        assert_eq!(r(PDPT_ADDR + 3 * 8), (PD_ADDR + 0x3000) | 3);
        // 0xd000_0000 (the MMIO window): PD 3, entry 128.
        assert_eq!(r(PD_ADDR + 0x3000 + 128 * 8), 0xd000_0000 | 0x83);
        assert_eq!(r(GDT_ADDR + 8), GDT[1]);
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    }
}
