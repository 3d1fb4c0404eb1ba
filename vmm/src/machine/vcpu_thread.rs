//! The thread that runs a vCPU, and how the VMM stops it: a request in
//! [`RunControl`], then a signal that makes KVM_RUN return (it returns EINTR), sent
//! until the thread has seen the request. Between exits the thread holds no lock, so
//! a paused vCPU's state can be read and written from outside.

use std::sync::Once;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use parking_lot::{Condvar, Mutex};

use super::MachineError;
use super::layout::{IDLE_PORT, MAX_IDLE_MS};
use super::memory::GuestRam;
use crate::devices::Devices;

/// Where a vCPU is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Made, not started.
    Created,
    Running,
    PauseRequested,
    Paused,
    StopRequested,
    /// Stopped for good, with why.
    Stopped(String),
}

/// The requests to a vCPU thread and its answers.
pub struct RunControl {
    state: Mutex<RunState>,
    changed: Condvar,
    thread: Mutex<Option<libc::pthread_t>>,
}

impl RunControl {
    pub fn new() -> RunControl {
        RunControl {
            state: Mutex::new(RunState::Created),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        }
    }

    pub fn get(&self) -> RunState {
        self.state.lock().clone()
    }

    pub fn set(&self, s: RunState) {
        *self.state.lock() = s;
        self.changed.notify_all();
    }

    /// Asks the vCPU to pause and waits until it has (or has stopped).
    pub fn pause(&self, limit: Duration) -> Result<(), MachineError> {
        {
            let mut s = self.state.lock();
            match &*s {
                RunState::Running => {
                    *s = RunState::PauseRequested;
                    // An idle vCPU waits on `changed`: wake it.
                    self.changed.notify_all();
                }
                RunState::Paused | RunState::PauseRequested => {}
                other => return Err(MachineError::State(other.clone())),
            }
        }
        let deadline = Instant::now() + limit;
        loop {
            self.kick();
            let mut s = self.state.lock();
            match &*s {
                RunState::Paused => return Ok(()),
                RunState::PauseRequested => {}
                other => return Err(MachineError::State(other.clone())),
            }
            if Instant::now() > deadline {
                return Err(MachineError::Config(format!(
                    "the vCPU did not pause within {limit:?}"
                )));
            }
            self.changed.wait_for(&mut s, Duration::from_millis(5));
        }
    }

    /// Asks the vCPU to stop for good and waits until it has.
    pub fn stop(&self) {
        {
            let mut s = self.state.lock();
            match &*s {
                RunState::Stopped(_) => return,
                RunState::Created => {
                    *s = RunState::Stopped("stopped before it started".into());
                    return;
                }
                _ => *s = RunState::StopRequested,
            }
            self.changed.notify_all();
        }
        loop {
            self.kick();
            let mut s = self.state.lock();
            if matches!(&*s, RunState::Stopped(_)) || self.thread.lock().is_none() {
                return;
            }
            self.changed.wait_for(&mut s, Duration::from_millis(5));
        }
    }

    /// Makes a KVM_RUN in progress return.
    fn kick(&self) {
        if let Some(t) = *self.thread.lock() {
            // SAFETY: `t` is the vCPU thread, which clears it (under this lock) before
            // it exits, so it names a live thread; the signal's handler does nothing.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// Called by the vCPU thread before each KVM_RUN: waits while paused; false once
    /// it must stop.
    fn may_run(&self, devices: &Mutex<Devices>) -> bool {
        let mut s = self.state.lock();
        loop {
            match &*s {
                RunState::Running => return true,
                RunState::PauseRequested => {
                    devices.lock().clock.stop();
                    *s = RunState::Paused;
                    self.changed.notify_all();
                }
                RunState::Paused | RunState::Created => self.changed.wait(&mut s),
                RunState::StopRequested => {
                    devices.lock().clock.stop();
                    *s = RunState::Stopped("stopped by the VMM".into());
                    self.changed.notify_all();
                    return false;
                }
                RunState::Stopped(_) => return false,
            }
        }
    }

    /// The guest idles for `ms` milliseconds (at most [`MAX_IDLE_MS`]): waits without
    /// using the CPU, ending early when the VMM asks the vCPU to pause or stop.
    fn idle(&self, ms: u32) {
        let mut s = self.state.lock();
        if *s == RunState::Running {
            let wait = Duration::from_millis(u64::from(ms.min(MAX_IDLE_MS)));
            self.changed.wait_for(&mut s, wait);
        }
    }

    /// Records that the guest can go no further.
    fn guest_stopped(&self, why: String) {
        self.set(RunState::Stopped(why));
    }
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs the kick signal's do-nothing handler, once per process. Without
/// SA_RESTART, so KVM_RUN returns EINTR.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (it
        // does nothing) and the signal is used for nothing else in this process.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// The vCPU thread's body: runs the vCPU and serves its exits until told to stop or
/// the guest can go no further.
pub fn run_vcpu(vcpu: &Mutex<VcpuFd>, devices: &Mutex<Devices>, ram: &GuestRam, run: &RunControl) {
    install_kick_handler();
    // SAFETY: pthread_self has no preconditions.
    *run.thread.lock() = Some(unsafe { libc::pthread_self() });
    while run.may_run(devices) {
        let mut fd = vcpu.lock();
        let mut idle_ms = 0;
        let stopped = match fd.run() {
            Ok(VcpuExit::IoOut(IDLE_PORT, data)) => {
                let mut ms = [0u8; 4];
                let n = data.len().min(4);
                ms[..n].copy_from_slice(&data[..n]);
                idle_ms = u32::from_le_bytes(ms);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                devices.lock().io_out(port, data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                devices.lock().io_in(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                devices.lock().mmio_read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                devices.lock().mmio_write(addr, data, ram);
                None
            }
            Ok(VcpuExit::Hlt) => Some("the guest halted".to_string()),
            Ok(VcpuExit::Shutdown) => Some("the guest shut down (a triple fault)".to_string()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(format!(
                "KVM could not enter the guest (hardware reason {reason:#x}, CPU {cpu})"
            )),
            Ok(VcpuExit::InternalError) => Some("KVM reported an internal error".to_string()),
            Ok(other) => Some(format!("unexpected vCPU exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(format!("KVM_RUN failed: {e}")),
        };
        drop(fd);
        if idle_ms > 0 {
            run.idle(idle_ms);
        }
        if let Some(why) = stopped {
            devices.lock().clock.stop();
            run.guest_stopped(why);
            break;
        }
    }
    *run.thread.lock() = None;
    run.changed.notify_all();
}
