//! A vCPU's architectural state, as KVM gives it: everything a paused guest needs to
//! go on exactly where it stopped, in another VM of this process or on another node.

use kvm_bindings::{
    Msrs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};

use super::MachineError;

/// MSRs carried across a save: the system-call and TSC ones a 64-bit guest relies on,
/// those of them this host's KVM supports.
const MSRS: [u32; 11] = [
    0x10,        // IA32_TIME_STAMP_COUNTER
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0x277,       // IA32_PAT
    0x1a0,       // IA32_MISC_ENABLE
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
];

/// One vCPU's state.
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
}

/// The MSRs of [`MSRS`] this host supports.
pub fn supported_msrs(kvm: &Kvm) -> Result<Vec<u32>, MachineError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(MachineError::kvm("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(MSRS
        .into_iter()
        .filter(|m| list.as_slice().contains(m))
        .collect())
}

impl VcpuState {
    /// Reads the state of `vcpu`, which must not be running.
    pub fn capture(vcpu: &VcpuFd, msr_indexes: &[u32]) -> Result<VcpuState, MachineError> {
        let k = MachineError::kvm;
        let entries: Vec<kvm_msr_entry> = msr_indexes
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| MachineError::Config(format!("MSR list: {e:?}")))?;
        let n = vcpu.get_msrs(&mut msrs).map_err(k("KVM_GET_MSRS"))?;
        if n != entries.len() {
            return Err(MachineError::Config(format!(
                "KVM read {n} of {} MSRs",
                entries.len()
            )));
        }
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(k("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(k("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(k("KVM_GET_FPU"))?,
            xsave: vcpu.get_xsave().map_err(k("KVM_GET_XSAVE"))?,
            xcrs: vcpu.get_xcrs().map_err(k("KVM_GET_XCRS"))?,
            msrs: msrs.as_slice().to_vec(),
            lapic: vcpu.get_lapic().map_err(k("KVM_GET_LAPIC"))?,
            events: vcpu.get_vcpu_events().map_err(k("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(k("KVM_GET_MP_STATE"))?,
        })
    }

    /// Loads this state into `vcpu` (created with the same CPUID), in the order KVM
    /// needs: the APIC base (in sregs) before the LAPIC, events last.
    pub fn apply(&self, vcpu: &VcpuFd) -> Result<(), MachineError> {
        let k = MachineError::kvm;
        vcpu.set_mp_state(self.mp_state)
            .map_err(k("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(k("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs).map_err(k("KVM_SET_SREGS"))?;
        vcpu.set_fpu(&self.fpu).map_err(k("KVM_SET_FPU"))?;
        // SAFETY: the buffer is a kvm_xsave read by KVM_GET_XSAVE from a vCPU of the
        // same kind; this VMM never enables the larger XSAVE2 state, so the legacy
        // 4 KiB structure holds all of it.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(k("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(k("KVM_SET_XCRS"))?;
        vcpu.set_lapic(&self.lapic).map_err(k("KVM_SET_LAPIC"))?;
        let msrs = Msrs::from_entries(&self.msrs)
            .map_err(|e| MachineError::Config(format!("MSR list: {e:?}")))?;
        let n = vcpu.set_msrs(&msrs).map_err(k("KVM_SET_MSRS"))?;
        if n != self.msrs.len() {
            return Err(MachineError::Config(format!(
                "KVM took {n} of {} MSRs (MSR {:#x} refused)",
                self.msrs.len(),
                self.msrs[n].index
            )));
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(k("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}
