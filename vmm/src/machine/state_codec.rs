//! [`SavedState`] as bytes: what `vmm save` writes beside the memory image and what a
//! migration sends after the last memory pages. The decoder takes bytes from a file
//! or a peer, so it checks everything and refuses bad input with an error naming
//! what is wrong; it never panics (a fuzz target holds it to that).
//!
//! Layout (little-endian): the magic `CSVVMST1`, the memory size, then the vCPU's
//! KVM structures as KVM lays them out (regs, sregs, fpu, xsave, xcrs, lapic,
//! events, mp_state), the MSRs (count, then index and value each), the KVM clock,
//! and the devices (serial registers and input buffer, the guest clock, the
//! virtio-blk transport and queue).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_xsave};
use virtio_queue::QueueState;
use vm_superio::SerialState;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::SavedState;
use super::layout::{MAX_MEMORY, MIN_MEMORY};
use super::vcpu_state::VcpuState;
use crate::devices::DevicesState;
use crate::devices::virtio_blk::VirtioBlkState;

const MAGIC: [u8; 8] = *b"CSVVMST1";
/// More MSRs than any saved state carries.
const MAX_MSRS: u32 = 64;
/// The serial port's input FIFO holds at most this much.
const MAX_SERIAL_INPUT: u32 = 64;

/// Why saved state could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad VM state: {0}")]
pub struct StateError(String);

/// Encodes `state`.
pub fn encode(state: &SavedState) -> Vec<u8> {
    let mut out = Vec::with_capacity(8192);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&state.memory_bytes.to_le_bytes());
    let v = &state.vcpu;
    out.extend_from_slice(v.regs.as_bytes());
    out.extend_from_slice(v.sregs.as_bytes());
    encode_fpu(&v.fpu, &mut out);
    out.extend_from_slice(v.xsave.region.as_bytes());
    out.extend_from_slice(v.xcrs.as_bytes());
    out.extend_from_slice(v.lapic.as_bytes());
    out.extend_from_slice(v.events.as_bytes());
    out.extend_from_slice(v.mp_state.as_bytes());
    out.extend_from_slice(&(v.msrs.len() as u32).to_le_bytes());
    for m in &v.msrs {
        out.extend_from_slice(&m.index.to_le_bytes());
        out.extend_from_slice(&m.data.to_le_bytes());
    }
    out.extend_from_slice(state.clock.as_bytes());
    let s = &state.devices.serial;
    out.extend_from_slice(&[
        s.baud_divisor_low,
        s.baud_divisor_high,
        s.interrupt_enable,
        s.interrupt_identification,
        s.line_control,
        s.line_status,
        s.modem_control,
        s.modem_status,
        s.scratch,
    ]);
    out.extend_from_slice(&(s.in_buffer.len() as u32).to_le_bytes());
    out.extend_from_slice(&s.in_buffer);
    out.extend_from_slice(&state.devices.clock_ms.to_le_bytes());
    let b = &state.devices.blk;
    for x in [b.device_features_sel, b.driver_features_sel] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&b.driver_features.to_le_bytes());
    for x in [b.status, b.interrupt_status] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let q = &b.queue;
    for x in [q.max_size, q.next_avail, q.next_used, q.size] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&[q.event_idx_enabled as u8, q.ready as u8]);
    for x in [q.desc_table, q.avail_ring, q.used_ring] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes state written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<SavedState, StateError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(8, "the magic")? != MAGIC {
        return Err(StateError(
            "no 'CSVVMST1' magic: not VM state from this VMM".into(),
        ));
    }
    let memory_bytes = r.u64("the memory size")?;
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory_bytes) || !memory_bytes.is_multiple_of(1 << 20) {
        return Err(StateError(format!(
            "memory size {memory_bytes} is not a whole MiB from 8 MiB to 3 GiB"
        )));
    }
    let regs = r.pod("the general registers")?;
    let sregs = r.pod("the special registers")?;
    let fpu = decode_fpu(&mut r)?;
    let xsave = kvm_xsave {
        region: r.pod("the XSAVE area")?,
        ..Default::default()
    };
    let xcrs = r.pod("the XCRs")?;
    let lapic = r.pod("the local APIC")?;
    let events = r.pod("the vCPU events")?;
    let mp_state = r.pod("the MP state")?;
    let n = r.u32("the MSR count")?;
    if n > MAX_MSRS {
        return Err(StateError(format!(
            "{n} MSRs, more than the {MAX_MSRS} a state holds"
        )));
    }
    let mut msrs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let index = r.u32("an MSR index")?;
        let data = r.u64("an MSR value")?;
        msrs.push(kvm_msr_entry {
            index,
            data,
            ..Default::default()
        });
    }
    let clock = r.pod("the KVM clock")?;
    let regs8 = r.take(9, "the serial registers")?;
    let input = r.u32("the serial input length")?;
    if input > MAX_SERIAL_INPUT {
        return Err(StateError(format!(
            "{input} bytes of serial input, more than its FIFO's {MAX_SERIAL_INPUT}"
        )));
    }
    let serial = SerialState {
        baud_divisor_low: regs8[0],
        baud_divisor_high: regs8[1],
        interrupt_enable: regs8[2],
        interrupt_identification: regs8[3],
        line_control: regs8[4],
        line_status: regs8[5],
        modem_control: regs8[6],
        modem_status: regs8[7],
        scratch: regs8[8],
        in_buffer: r.take(input as usize, "the serial input")?.to_vec(),
    };
    let clock_ms = r.u64("the guest clock")?;
    let blk = VirtioBlkState {
        device_features_sel: r.u32("virtio-blk registers")?,
        driver_features_sel: r.u32("virtio-blk registers")?,
        driver_features: r.u64("virtio-blk features")?,
        status: r.u32("virtio-blk status")?,
        interrupt_status: r.u32("virtio-blk interrupt status")?,
        queue: QueueState {
            max_size: r.u16("the virtqueue")?,
            next_avail: r.u16("the virtqueue")?,
            next_used: r.u16("the virtqueue")?,
            size: r.u16("the virtqueue")?,
            event_idx_enabled: r.flag("the virtqueue")?,
            ready: r.flag("the virtqueue")?,
            desc_table: r.u64("the virtqueue")?,
            avail_ring: r.u64("the virtqueue")?,
            used_ring: r.u64("the virtqueue")?,
        },
    };
    if r.at != bytes.len() {
        return Err(StateError(format!(
            "{} bytes after the end of the state",
            bytes.len() - r.at
        )));
    }
    Ok(SavedState {
        memory_bytes,
        vcpu: VcpuState {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            msrs,
            lapic,
            events,
            mp_state,
        },
        clock,
        devices: DevicesState {
            serial,
            clock_ms,
            blk,
        },
    })
}

/// The FPU, field by field (its KVM structure has no byte view).
fn encode_fpu(f: &kvm_fpu, out: &mut Vec<u8>) {
    out.extend_from_slice(f.fpr.as_flattened());
    out.extend_from_slice(&f.fcw.to_le_bytes());
    out.extend_from_slice(&f.fsw.to_le_bytes());
    out.push(f.ftwx);
    out.extend_from_slice(&f.last_opcode.to_le_bytes());
    out.extend_from_slice(&f.last_ip.to_le_bytes());
    out.extend_from_slice(&f.last_dp.to_le_bytes());
    out.extend_from_slice(f.xmm.as_flattened());
    out.extend_from_slice(&f.mxcsr.to_le_bytes());
}

fn decode_fpu(r: &mut Reader) -> Result<kvm_fpu, StateError> {
    let what = "the FPU state";
    Ok(kvm_fpu {
        fpr: r.pod(what)?,
        fcw: r.u16(what)?,
        fsw: r.u16(what)?,
        ftwx: r.take(1, what)?[0],
        last_opcode: r.u16(what)?,
        last_ip: r.u64(what)?,
        last_dp: r.u64(what)?,
        xmm: r.pod(what)?,
        mxcsr: r.u32(what)?,
        ..Default::default()
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], StateError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(StateError(format!(
                "it ends inside {what} (at byte {})",
                self.at
            )));
        };
        let b = &self.bytes[self.at..end];
        self.at = end;
        Ok(b)
    }

    fn pod<T: FromBytes + IntoBytes + Immutable>(&mut self, what: &str) -> Result<T, StateError> {
        let b = self.take(std::mem::size_of::<T>(), what)?;
        T::read_from_bytes(b).map_err(|_| StateError(format!("{what} has the wrong size")))
    }

    fn u16(&mut self, what: &str) -> Result<u16, StateError> {
        self.pod(what)
    }

    fn u32(&mut self, what: &str) -> Result<u32, StateError> {
        self.pod(what)
    }

    fn u64(&mut self, what: &str) -> Result<u64, StateError> {
        self.pod(what)
    }

    fn flag(&mut self, what: &str) -> Result<bool, StateError> {
        match self.take(1, what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(StateError(format!(
                "{what} has a flag byte {b}, not 0 or 1"
            ))),
        }
    }
}

/// What the fuzz target and its corpus replay check: `bytes` is refused with an
/// error, or decodes to a state that encodes back to exactly `bytes`.
pub fn check_untrusted(bytes: &[u8]) -> Result<(), StateError> {
    let state = decode(bytes)?;
    assert!(
        encode(&state) == bytes,
        "decoded state does not encode back to its bytes"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedState {
        let mut vcpu = VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            fpu: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            msrs: vec![kvm_msr_entry {
                index: 0x10,
                data: 12345,
                ..Default::default()
            }],
            lapic: Default::default(),
            events: Default::default(),
            mp_state: Default::default(),
        };
        vcpu.regs.rip = 0x10_0000;
        vcpu.fpu.fcw = 0x37f;
        vcpu.xsave.region[7] = 9;
        SavedState {
            memory_bytes: 64 << 20,
            vcpu,
            clock: Default::default(),
            devices: DevicesState {
                serial: SerialState {
                    in_buffer: vec![1, 2, 3],
                    ..Default::default()
                },
                clock_ms: 777,
                blk: VirtioBlkState {
                    device_features_sel: 1,
                    driver_features_sel: 1,
                    driver_features: 1 << 32,
                    status: 15,
                    interrupt_status: 1,
                    queue: QueueState {
                        max_size: 256,
                        size: 8,
                        ready: true,
                        desc_table: 0x10_0e80,
                        ..Default::default()
                    },
                },
            },
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample());
        let back = decode(&bytes).unwrap();
        assert_eq!(back.vcpu.regs.rip, 0x10_0000);
        assert_eq!(back.vcpu.fpu.fcw, 0x37f);
        assert_eq!(back.vcpu.xsave.region[7], 9);
        assert_eq!(back.devices, sample().devices);
        assert!(encode(&back) == bytes);
        check_untrusted(&bytes).unwrap();
    }

    #[test]
    fn bad_input_is_refused_with_what_is_wrong() {
        let good = encode(&sample());
        let msg = |b: &[u8]| decode(b).err().unwrap().to_string();
        assert!(msg(b"hello").contains("ends inside the magic"));
        assert!(msg(&[b'x'; 16]).contains("magic"));
        for cut in [9, 100, 5000, good.len() - 1] {
            assert!(
                msg(&good[..cut]).contains("it ends inside"),
                "cut at {cut}: {}",
                msg(&good[..cut])
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(msg(&extra).contains("after the end"));
        let mut mem = good.clone();
        mem[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(msg(&mem).contains("memory size"));
        let mut flag = good.clone();
        let n = flag.len();
        flag[n - 25] = 7; // the queue's ready flag
        assert!(msg(&flag).contains("flag byte 7"), "{}", msg(&flag));
    }
}
