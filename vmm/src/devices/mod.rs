//! The devices a VM has: the serial console on COM1, the paravirtual clock, and a
//! virtio-blk disk backed by a VHD. [`Devices`] routes the vCPU's port and MMIO
//! exits to them and gathers their state for a save or a migration.

pub mod clock;
pub mod serial;
pub mod virtio_blk;

use std::fs::File;

use vm_superio::SerialState;

use crate::machine::layout::{CLOCK_PORT, COM1, VIRTIO_BLK_MMIO, VIRTIO_MMIO_SIZE};
use crate::machine::memory::GuestRam;
use crate::vhd::VhdImage;
use clock::GuestClock;
use serial::{ConsoleSink, SerialConsole};
use virtio_blk::{VirtioBlk, VirtioBlkState};

/// Every device's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicesState {
    pub serial: SerialState,
    pub clock_ms: u64,
    pub blk: VirtioBlkState,
}

/// A VM's devices.
pub struct Devices {
    pub serial: SerialConsole,
    pub clock: GuestClock,
    pub blk: VirtioBlk,
    /// Accesses to ports and addresses no device claims, for diagnosis.
    pub unclaimed: u64,
}

impl Devices {
    /// Fresh devices: console output to `console`, the disk `disk`.
    pub fn new(console: ConsoleSink, disk: VhdImage<File>) -> Devices {
        Devices {
            serial: SerialConsole::new(console),
            clock: GuestClock::new(0),
            blk: VirtioBlk::new(disk),
            unclaimed: 0,
        }
    }

    /// Devices in the state `state`, saved from another VM.
    pub fn from_state(
        state: &DevicesState,
        console: ConsoleSink,
        disk: VhdImage<File>,
    ) -> Result<Devices, String> {
        Ok(Devices {
            serial: SerialConsole::from_state(&state.serial, console)?,
            clock: GuestClock::new(state.clock_ms),
            blk: VirtioBlk::from_state(disk, &state.blk)?,
            unclaimed: 0,
        })
    }

    /// Every device's state; the clock must be stopped (the VM paused).
    pub fn state(&self) -> DevicesState {
        DevicesState {
            serial: self.serial.state(),
            clock_ms: self.clock.now_ms(),
            blk: self.blk.state(),
        }
    }

    /// A guest's `out` to `port`.
    pub fn io_out(&mut self, port: u16, data: &[u8]) {
        match port {
            p if (COM1..COM1 + 8).contains(&p) => {
                if let Some(&b) = data.first() {
                    self.serial.write((p - COM1) as u8, b);
                }
            }
            _ => self.unclaimed += 1,
        }
    }

    /// A guest's `in` from `port`.
    pub fn io_in(&mut self, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1..COM1 + 8).contains(&p) => {
                let v = self.serial.read((p - COM1) as u8);
                data.fill(0);
                data[0] = v;
            }
            CLOCK_PORT => {
                let v = self.clock.read_port().to_le_bytes();
                for (i, d) in data.iter_mut().enumerate() {
                    *d = v.get(i).copied().unwrap_or(0);
                }
            }
            _ => {
                self.unclaimed += 1;
                data.fill(0xff);
            }
        }
    }

    /// A guest's read at physical address `addr` outside memory.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        match addr.checked_sub(VIRTIO_BLK_MMIO) {
            Some(off) if off < VIRTIO_MMIO_SIZE => self.blk.mmio_read(off, data),
            _ => {
                self.unclaimed += 1;
                data.fill(0xff);
            }
        }
    }

    /// A guest's write at physical address `addr` outside memory.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8], ram: &GuestRam) {
        match addr.checked_sub(VIRTIO_BLK_MMIO) {
            Some(off) if off < VIRTIO_MMIO_SIZE => self.blk.mmio_write(off, data, ram),
            _ => self.unclaimed += 1,
        }
    }
}
