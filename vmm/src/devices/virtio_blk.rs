//! virtio-blk over virtio-mmio (version 2, the "modern" register layout), backed by a
//! VHD. One request queue; requests are served synchronously when the guest writes
//! QueueNotify, so the used ring is up to date when the guest's write returns and a
//! polling driver needs no interrupt.
//!
//! Every write the device makes to guest memory goes through vm-memory, whose dirty
//! bitmap records it: KVM's dirty log does not see these writes, and a migration
//! must send those pages too.

use std::fs::File;

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use crate::machine::memory::GuestRam;
use crate::vhd::{SECTOR, VhdImage};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const DEVICE_ID_BLOCK: u32 = 2;
const VENDOR_ID: u32 = 0x5643_5346; // "FSCV"
const QUEUE_SIZE_MAX: u16 = 256;
/// VIRTIO_F_VERSION_1 and VIRTIO_BLK_F_FLUSH.
const FEATURES: u64 = (1 << 32) | (1 << 9);

const REQ_IN: u32 = 0;
const REQ_OUT: u32 = 1;
const REQ_FLUSH: u32 = 4;
const REQ_GET_ID: u32 = 8;
const STATUS_OK: u8 = 0;
const STATUS_IOERR: u8 = 1;
const STATUS_UNSUPP: u8 = 2;
/// Device status bits the driver sets.
const DEVICE_STATUS_FEATURES_OK: u32 = 8;

/// The transport's registers and the queue: what a save or migration carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioBlkState {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    pub queue: QueueState,
}

/// The virtio-blk device.
pub struct VirtioBlk {
    disk: VhdImage<File>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    queue: Queue,
    /// Raised (through KVM's irqfd) when requests complete; polling guests ignore it.
    interrupt: Option<EventFd>,
    /// Requests served, for status and tests.
    pub requests: u64,
}

impl VirtioBlk {
    /// A device in its reset state over `disk`.
    pub fn new(disk: VhdImage<File>) -> VirtioBlk {
        VirtioBlk {
            disk,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            queue: Queue::new(QUEUE_SIZE_MAX).expect("256 is a valid queue size"),
            interrupt: None,
            requests: 0,
        }
    }

    /// A device in the state `state` (saved from another VM) over `disk`.
    pub fn from_state(disk: VhdImage<File>, state: &VirtioBlkState) -> Result<VirtioBlk, String> {
        let queue =
            Queue::try_from(state.queue).map_err(|e| format!("bad virtqueue state: {e}"))?;
        Ok(VirtioBlk {
            disk,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            driver_features: state.driver_features,
            status: state.status,
            interrupt_status: state.interrupt_status,
            queue,
            interrupt: None,
            requests: 0,
        })
    }

    /// The registers and queue, for a save or a migration.
    pub fn state(&self) -> VirtioBlkState {
        VirtioBlkState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            queue: self.queue.state(),
        }
    }

    /// Takes the interrupt away (to give it to the device that replaces this one).
    pub fn take_interrupt(&mut self) -> Option<EventFd> {
        self.interrupt.take()
    }

    /// Signals `interrupt` when requests complete.
    pub fn set_interrupt(&mut self, interrupt: EventFd) {
        self.interrupt = Some(interrupt);
    }

    /// The disk.
    pub fn disk(&self) -> &VhdImage<File> {
        &self.disk
    }

    /// A guest's read of `data.len()` bytes at `offset` in the MMIO window.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            // Configuration space: the capacity in sectors, then zeros.
            let mut config = [0u8; 64];
            config[..8].copy_from_slice(&(self.disk.size() / SECTOR).to_le_bytes());
            let at = (offset - 0x100) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = config.get(at + i).copied().unwrap_or(0);
            }
            return;
        }
        let value: u32 = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => DEVICE_ID_BLOCK,
            0x00c => VENDOR_ID,
            0x010 => match self.device_features_sel {
                0 => FEATURES as u32,
                1 => (FEATURES >> 32) as u32,
                _ => 0,
            },
            0x034 => QUEUE_SIZE_MAX as u32,
            0x044 => self.queue.ready() as u32,
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => 0, // config generation: the configuration never changes
            _ => 0,
        };
        write_le(data, value);
    }

    /// A guest's write of `data` at `offset` in the MMIO window.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], ram: &GuestRam) {
        let value = read_le(data);
        match offset {
            0x014 => self.device_features_sel = value,
            0x020 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value as u64,
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | ((value as u64) << 32)
                }
                _ => {}
            },
            0x024 => self.driver_features_sel = value,
            0x030 => {} // one queue: selecting another selects nothing
            0x038 => self.queue.set_size(value as u16),
            0x044 => self.queue.set_ready(value == 1),
            0x050 => self.process_queue(ram),
            0x064 => self.interrupt_status &= !value,
            0x070 => {
                if value == 0 {
                    self.reset();
                } else if value & DEVICE_STATUS_FEATURES_OK != 0
                    && self.driver_features & !FEATURES != 0
                {
                    // Features the device never offered: refuse FEATURES_OK.
                    self.status = value & !DEVICE_STATUS_FEATURES_OK;
                } else {
                    self.status = value;
                }
            }
            0x080 => self.queue.set_desc_table_address(Some(value), None),
            0x084 => self.queue.set_desc_table_address(None, Some(value)),
            0x090 => self.queue.set_avail_ring_address(Some(value), None),
            0x094 => self.queue.set_avail_ring_address(None, Some(value)),
            0x0a0 => self.queue.set_used_ring_address(Some(value), None),
            0x0a4 => self.queue.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.queue.reset();
    }

    /// Serves every request the driver has made available.
    fn process_queue(&mut self, ram: &GuestRam) {
        if !self.queue.ready() {
            return;
        }
        while let Some(chain) = self.queue.pop_descriptor_chain(ram) {
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let (status, written) = self.serve(ram, &descs);
            if let Some(last) = descs.last().filter(|d| d.is_write_only() && d.len() >= 1) {
                let _ = ram.write_obj(status, last.addr());
            }
            // A broken ring (addresses outside memory) is the guest's fault; the
            // request is dropped.
            let _ = self.queue.add_used(ram, head, written + 1);
            self.requests += 1;
        }
        self.interrupt_status |= 1;
        if let Some(irq) = &self.interrupt {
            // A full eventfd counter still means "raised".
            let _ = irq.write(1);
        }
    }

    /// Executes one request; returns its status and the bytes written to the guest.
    fn serve(&self, ram: &GuestRam, descs: &[virtio_queue::desc::split::Descriptor]) -> (u8, u32) {
        let [header, data @ .., status] = descs else {
            return (STATUS_IOERR, 0);
        };
        if header.is_write_only() || header.len() < 16 || !status.is_write_only() {
            return (STATUS_IOERR, 0);
        }
        let mut raw = [0u8; 16];
        if ram.read_slice(&mut raw, header.addr()).is_err() {
            return (STATUS_IOERR, 0);
        }
        let kind = u32::from_le_bytes(raw[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(raw[8..16].try_into().unwrap());
        let Some(mut at) = sector.checked_mul(SECTOR) else {
            return (STATUS_IOERR, 0);
        };
        let mut written = 0u32;
        match kind {
            REQ_IN | REQ_OUT => {
                for d in data {
                    let len = d.len() as usize;
                    if (kind == REQ_IN) != d.is_write_only() || !(len as u64).is_multiple_of(SECTOR)
                    {
                        return (STATUS_IOERR, written);
                    }
                    let mut buf = vec![0u8; len];
                    let ok = if kind == REQ_IN {
                        self.disk.read_at(&mut buf, at).is_ok()
                            && ram.write_slice(&buf, d.addr()).is_ok()
                    } else {
                        ram.read_slice(&mut buf, d.addr()).is_ok()
                            && self.disk.write_at(&buf, at).is_ok()
                    };
                    if !ok {
                        return (STATUS_IOERR, written);
                    }
                    if kind == REQ_IN {
                        written += len as u32;
                    }
                    at += len as u64;
                }
                (STATUS_OK, written)
            }
            REQ_FLUSH => match self.disk.flush() {
                Ok(()) => (STATUS_OK, 0),
                Err(_) => (STATUS_IOERR, 0),
            },
            REQ_GET_ID => {
                let id = b"csvfs-vhd\0";
                match data.first() {
                    Some(d) if d.is_write_only() && d.len() as usize >= id.len() => {
                        let ok = ram.write_slice(id, d.addr()).is_ok();
                        if ok {
                            (STATUS_OK, id.len() as u32)
                        } else {
                            (STATUS_IOERR, 0)
                        }
                    }
                    _ => (STATUS_IOERR, 0),
                }
            }
            _ => (STATUS_UNSUPP, 0),
        }
    }
}

fn read_le(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

fn write_le(data: &mut [u8], value: u32) {
    let b = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = b.get(i).copied().unwrap_or(0);
    }
}
