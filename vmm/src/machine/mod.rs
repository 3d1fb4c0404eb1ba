//! A KVM virtual machine with one vCPU: its memory, its devices, and the thread that
//! runs the vCPU. A [`Machine`] boots the test guest (or, on hardware, a Linux
//! kernel), pauses and resumes, and hands out its complete state ([`SavedState`] and
//! its memory) from which [`Machine::restore`] builds a VM that goes on exactly where
//! the first one stopped: the base of `vmm save`/`restore` and of live migration.
//!
//! What this module does not own: where the VM's files are (the VM's directory on a
//! volume), the VM lease, the migration stream.

pub mod layout;
pub mod linux_boot;
pub mod long_mode;
pub mod memory;
pub mod state_codec;
pub mod vcpu_state;
mod vcpu_thread;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, kvm_clock_data, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use parking_lot::Mutex;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::devices::serial::ConsoleSink;
use crate::devices::{Devices, DevicesState};
use crate::test_guest::{self, TestGuestParams, TestGuestStatus};
use crate::vhd::VhdImage;
use layout::{LOAD_ADDR, TEST_GUEST_PARAMS_ADDR, TSS_ADDR, VIRTIO_BLK_IRQ};
use memory::{GuestRam, new_ram, ram_size};
use vcpu_state::{VcpuState, supported_msrs};
use vcpu_thread::RunControl;
pub use vcpu_thread::RunState;
use vmm_sys_util::eventfd::EventFd;

/// Why a VM could not be made, run, saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("{what} failed: {source} (is /dev/kvm there and usable?)")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the VM is {0:?}, not in a state for this")]
    State(RunState),
}

impl MachineError {
    /// Wraps the error of the KVM call `what`.
    pub fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> MachineError {
        move |source| MachineError::Kvm { what, source }
    }
}

/// Everything but memory that a paused VM needs to go on elsewhere.
pub struct SavedState {
    pub memory_bytes: u64,
    pub vcpu: VcpuState,
    pub clock: kvm_clock_data,
    pub devices: DevicesState,
}

/// A VM with one vCPU. Dropping it stops the vCPU.
pub struct Machine {
    run: Arc<RunControl>,
    thread: Option<JoinHandle<()>>,
    vcpu: Arc<Mutex<VcpuFd>>,
    devices: Arc<Mutex<Devices>>,
    vm: VmFd,
    _kvm: Kvm,
    ram: Arc<GuestRam>,
    msr_indexes: Vec<u32>,
}

impl Machine {
    /// A VM of `memory_bytes` whose console goes to `console` and whose disk is
    /// `disk`, not yet loaded with anything.
    pub fn new(
        memory_bytes: u64,
        console: ConsoleSink,
        disk: VhdImage<File>,
    ) -> Result<Machine, MachineError> {
        Machine::build(memory_bytes, Devices::new(console, disk))
    }

    /// A VM in the state `state` with memory `memory` (from [`Machine::save`] and
    /// [`memory::snapshot`] of a paused VM), ready to [`Machine::start`].
    pub fn restore(
        state: &SavedState,
        memory: &[u8],
        console: ConsoleSink,
        disk: VhdImage<File>,
    ) -> Result<Machine, MachineError> {
        if memory.len() as u64 != state.memory_bytes {
            return Err(MachineError::Config(format!(
                "{} bytes of memory for a VM of {} bytes",
                memory.len(),
                state.memory_bytes
            )));
        }
        let devices =
            Devices::from_state(&state.devices, console, disk).map_err(MachineError::Config)?;
        let m = Machine::build(state.memory_bytes, devices)?;
        m.ram
            .write_slice(memory, GuestAddress(0))
            .map_err(|e| MachineError::Config(format!("cannot fill guest memory: {e}")))?;
        m.apply_state(state)?;
        Ok(m)
    }

    /// Puts a VM made with [`Machine::new`] (never started, its memory already
    /// filled, as a live migration's destination does while the pages arrive) into
    /// the state `state`, with `devices` in place of the ones it was made with.
    pub fn restore_state(&self, state: &SavedState, devices: Devices) -> Result<(), MachineError> {
        if self.run_state() != RunState::Created {
            return Err(MachineError::State(self.run_state()));
        }
        if ram_size(&self.ram) != state.memory_bytes {
            return Err(MachineError::Config(format!(
                "a state of a VM of {} bytes for one of {}",
                state.memory_bytes,
                ram_size(&self.ram)
            )));
        }
        let mut devices = devices;
        {
            let mut old = self.devices.lock();
            if let Some(irq) = old.blk.take_interrupt() {
                devices.blk.set_interrupt(irq);
            }
            *old = devices;
        }
        self.apply_state(state)
    }

    fn apply_state(&self, state: &SavedState) -> Result<(), MachineError> {
        state.vcpu.apply(&self.vcpu.lock())?;
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.vm
            .set_clock(&clock)
            .map_err(MachineError::kvm("KVM_SET_CLOCK"))
    }

    fn build(memory_bytes: u64, devices: Devices) -> Result<Machine, MachineError> {
        let k = MachineError::kvm;
        let ram = Arc::new(new_ram(memory_bytes)?);
        let kvm = Kvm::new().map_err(k("opening /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(k("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDR)
            .map_err(k("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip().map_err(k("KVM_CREATE_IRQCHIP"))?;
        set_memory_slot(&vm, &ram, false)?;
        let mut devices = devices;
        let irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| MachineError::Config(format!("cannot make an eventfd: {e}")))?;
        vm.register_irqfd(&irq, VIRTIO_BLK_IRQ)
            .map_err(k("KVM_IRQFD"))?;
        devices.blk.set_interrupt(irq);
        let vcpu = vm.create_vcpu(0).map_err(k("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(k("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(k("KVM_SET_CPUID2"))?;
        let msr_indexes = supported_msrs(&kvm)?;
        Ok(Machine {
            run: Arc::new(RunControl::new()),
            thread: None,
            vcpu: Arc::new(Mutex::new(vcpu)),
            devices: Arc::new(Mutex::new(devices)),
            vm,
            _kvm: kvm,
            ram,
            msr_indexes,
        })
    }

    /// Loads the test guest and points the vCPU at it, in 64-bit mode.
    pub fn load_test_guest(&self, params: &TestGuestParams) -> Result<(), MachineError> {
        let size = ram_size(&self.ram);
        let bad = |e: vm_memory::GuestMemoryError| {
            MachineError::Config(format!("cannot load the test guest: {e}"))
        };
        self.ram
            .write_slice(test_guest::BINARY, GuestAddress(LOAD_ADDR))
            .map_err(bad)?;
        self.ram
            .write_slice(&params.encode(size), GuestAddress(TEST_GUEST_PARAMS_ADDR))
            .map_err(bad)?;
        self.enter_long_mode(LOAD_ADDR, TEST_GUEST_PARAMS_ADDR, 0)
    }

    /// Loads a Linux kernel (bzImage or ELF vmlinux), its initramfs and command line
    /// ([`linux_boot`]) and points the vCPU at its 64-bit entry.
    pub fn load_linux(
        &self,
        kernel: &Path,
        initramfs: Option<&Path>,
        cmdline: &str,
    ) -> Result<(), MachineError> {
        let open = |p: &Path| {
            File::open(p)
                .map_err(|e| MachineError::Config(format!("cannot open {}: {e}", p.display())))
        };
        let mut k = open(kernel)?;
        let mut initrd = initramfs.map(open).transpose()?;
        let entry = linux_boot::load(&self.ram, &mut k, initrd.as_mut(), cmdline)?;
        self.enter_long_mode(entry.rip, 0, entry.rsi)
    }

    /// Sets up the boot tables and the vCPU to start at `rip` in 64-bit mode with
    /// `rdi` and `rsi` as its first two arguments.
    pub fn enter_long_mode(&self, rip: u64, rdi: u64, rsi: u64) -> Result<(), MachineError> {
        let k = MachineError::kvm;
        long_mode::write_tables(&self.ram)?;
        let vcpu = self.vcpu.lock();
        let sregs = vcpu.get_sregs().map_err(k("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&long_mode::long_mode_sregs(sregs))
            .map_err(k("KVM_SET_SREGS"))?;
        vcpu.set_regs(&long_mode::entry_regs(rip, rdi, rsi))
            .map_err(k("KVM_SET_REGS"))?;
        vcpu.set_fpu(&long_mode::initial_fpu())
            .map_err(k("KVM_SET_FPU"))?;
        Ok(())
    }

    /// Starts the vCPU.
    pub fn start(&mut self) -> Result<(), MachineError> {
        if self.thread.is_some() {
            return Err(MachineError::State(self.run_state()));
        }
        self.devices.lock().clock.run();
        self.run.set(RunState::Running);
        let (vcpu, devices, ram, run) = (
            self.vcpu.clone(),
            self.devices.clone(),
            self.ram.clone(),
            self.run.clone(),
        );
        self.thread = Some(
            std::thread::Builder::new()
                .name("vcpu0".into())
                .spawn(move || vcpu_thread::run_vcpu(&vcpu, &devices, &ram, &run))
                .map_err(|e| MachineError::Config(format!("cannot start the vCPU thread: {e}")))?,
        );
        Ok(())
    }

    /// Stops the vCPU at its next exit and waits until it has; the guest clock stops.
    pub fn pause(&self) -> Result<(), MachineError> {
        self.run.pause(Duration::from_secs(10))
    }

    /// Lets a paused vCPU go on.
    pub fn resume(&self) -> Result<(), MachineError> {
        if self.run_state() != RunState::Paused {
            return Err(MachineError::State(self.run_state()));
        }
        self.devices.lock().clock.run();
        self.run.set(RunState::Running);
        Ok(())
    }

    /// The vCPU's state of running.
    pub fn run_state(&self) -> RunState {
        self.run.get()
    }

    /// The state of a paused (or never started) VM, memory aside.
    pub fn save(&self) -> Result<SavedState, MachineError> {
        match self.run_state() {
            RunState::Paused | RunState::Created => {}
            other => return Err(MachineError::State(other)),
        }
        let vcpu = VcpuState::capture(&self.vcpu.lock(), &self.msr_indexes)?;
        let clock = self
            .vm
            .get_clock()
            .map_err(MachineError::kvm("KVM_GET_CLOCK"))?;
        Ok(SavedState {
            memory_bytes: ram_size(&self.ram),
            vcpu,
            clock,
            devices: self.devices.lock().state(),
        })
    }

    /// The state of the vCPU as KVM has it now (the VM paused).
    pub fn vcpu_state(&self) -> Result<VcpuState, MachineError> {
        VcpuState::capture(&self.vcpu.lock(), &self.msr_indexes)
    }

    /// Guest memory.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The devices.
    pub fn devices(&self) -> parking_lot::MutexGuard<'_, Devices> {
        self.devices.lock()
    }

    /// What the test guest reports in memory.
    pub fn test_guest_status(&self) -> TestGuestStatus {
        TestGuestStatus::read(&self.ram)
    }

    /// Turns KVM's dirty page log of guest memory on or off.
    pub fn log_dirty_pages(&self, on: bool) -> Result<(), MachineError> {
        set_memory_slot(&self.vm, &self.ram, on)
    }

    /// Takes KVM's dirty page log since the last call: a bitmap of 4 KiB pages
    /// written by the guest. Writes by the VMM are in [`memory::take_vmm_dirty`].
    pub fn take_guest_dirty(&self) -> Result<Vec<u64>, MachineError> {
        self.vm
            .get_dirty_log(0, ram_size(&self.ram) as usize)
            .map_err(MachineError::kvm("KVM_GET_DIRTY_LOG"))
    }

    /// Stops the vCPU for good and waits for its thread.
    pub fn stop(&mut self) {
        self.run.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Registers all of `ram` as memory slot 0, with KVM's dirty log on if `log_dirty`.
fn set_memory_slot(vm: &VmFd, ram: &GuestRam, log_dirty: bool) -> Result<(), MachineError> {
    let host = ram
        .get_host_address(GuestAddress(0))
        .map_err(|e| MachineError::Config(format!("guest memory has no host mapping: {e}")))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: if log_dirty {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: 0,
        memory_size: ram_size(ram),
        userspace_addr: host as u64,
    };
    // SAFETY: the region is one live anonymous mapping of exactly memory_size bytes
    // that the Machine keeps (through its Arc) for as long as the VM exists: the VmFd
    // is dropped before the mapping.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(MachineError::kvm("KVM_SET_USER_MEMORY_REGION"))
}
