//! An iSCSI LUN as a [`BlockDevice`]: READ(16) / WRITE(16) / SYNCHRONIZE CACHE(16) and
//! the persistent reservation calls over one [`Session`], with the retry rules that
//! keep fencing sound (DESIGN.md, "What tgtd really does"):
//!
//! - reads are retried after a reconnect or a UNIT ATTENTION, as often as it takes
//!   within the timeout;
//! - writes are retried the same way only while this node holds no registration. Once
//!   it has registered a key, a reconnect (tgtd forgets the registrations of a session
//!   that ends) or a UNIT ATTENTION for a reset or a reservation change makes every
//!   write fail with [`BlockError::PossiblyFenced`] until the node registers again: a
//!   write is never re-sent on the chance that the node is still allowed to write;
//! - RESERVATION CONFLICT is [`BlockError::Fenced`].

use std::io;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::scsi::{self, Capacity, Inquiry};
use super::sense::{self, ILLEGAL_REQUEST, NOT_READY, UNIT_ATTENTION};
use super::session::{CommandError, Completion, Session, Transfer};
use super::url::IscsiUrl;
use crate::{BlockDevice, BlockError, PrHolder, PrKey, PrKeys, PrOut};

/// The most data one READ(16) or WRITE(16) moves; larger I/O is split.
pub(super) const MAX_COMMAND_BYTES: usize = 1 << 20;

/// A LUN reached through the built-in iSCSI initiator.
#[derive(Debug)]
pub struct IscsiDevice {
    session: Session,
    name: String,
    capacity: u64,
    block_size: u32,
    product: String,
    /// The key this node registered, and the session generation it is known to hold
    /// at; None while it holds none.
    registration: Mutex<Option<Registration>>,
    /// The host lock of an exclusive open (see `open_lun_exclusive`), held until drop.
    host_lock: Option<std::fs::File>,
}

#[derive(Debug, Clone, Copy)]
struct Registration {
    key: PrKey,
    generation: u64,
}

enum Op {
    Read,
    Write,
    /// A command that may be sent again after a reconnect.
    Other(&'static str),
    /// PERSISTENT RESERVE OUT: never sent again on its own (a REGISTER repeated on a
    /// new session would fail, a PREEMPT repeated could preempt the wrong holder).
    ReserveOut,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Other(n) => n,
            Op::ReserveOut => "persistent reserve out",
        }
    }
}

impl IscsiDevice {
    /// Logs in to the LUN at `url` and reads its size.
    pub fn open(url: &str) -> Result<IscsiDevice, BlockError> {
        let parsed = IscsiUrl::parse(url).map_err(|e| BlockError::BadLun(url.into(), e))?;
        IscsiDevice::open_url(parsed)
    }

    /// [`IscsiDevice::open`] of a URL already parsed.
    pub fn open_url(parsed: IscsiUrl) -> Result<IscsiDevice, BlockError> {
        let name = parsed.display_name();
        let session = Session::open(parsed).map_err(|e| BlockError::Io {
            op: "login",
            lun: name.clone(),
            offset: 0,
            source: io::Error::other(e.to_string()),
        })?;
        let mut dev = IscsiDevice {
            session,
            name,
            capacity: 0,
            block_size: 512,
            product: String::new(),
            registration: Mutex::new(None),
            host_lock: None,
        };
        // The first commands of a session meet the target's UNIT ATTENTIONs; TEST UNIT
        // READY takes them.
        dev.command(
            Op::Other("test unit ready"),
            scsi::test_unit_ready(),
            Transfer::None,
        )?;
        let mut inq = vec![0u8; scsi::INQUIRY_LEN as usize];
        let c = dev.command(
            Op::Other("inquiry"),
            scsi::inquiry(),
            Transfer::Read(&mut inq),
        )?;
        let inquiry = Inquiry::decode(&inq[..c.data_in]).map_err(|e| dev.protocol(e))?;
        if inquiry.device_type != 0 {
            return Err(BlockError::BadLun(
                dev.name.clone(),
                format!(
                    "LUN is a SCSI device of type {:#04x}, not a block device",
                    inquiry.device_type
                ),
            ));
        }
        let mut cap = vec![0u8; scsi::CAPACITY_LEN as usize];
        let c = dev.command(
            Op::Other("read capacity"),
            scsi::read_capacity16(),
            Transfer::Read(&mut cap),
        )?;
        let cap = Capacity::decode(&cap[..c.data_in]).map_err(|e| dev.protocol(e))?;
        dev.capacity = cap.blocks * u64::from(cap.block_size);
        dev.block_size = cap.block_size;
        dev.product = inquiry.product;
        Ok(dev)
    }

    /// Keeps `lock` (a host lock file) for as long as the device lives.
    pub fn holding(mut self, lock: std::fs::File) -> IscsiDevice {
        self.host_lock = Some(lock);
        self
    }

    /// Vendor, product and revision from INQUIRY.
    pub fn product(&self) -> &str {
        &self.product
    }

    /// The initiator name this node logs in with.
    pub fn initiator_name(&self) -> &str {
        &self.session.url().initiator
    }

    /// This session's initiator port name, `NAME,i,0xISID`: what another node gives as
    /// the receiver of REGISTER AND MOVE (the ISID is kept across reconnects).
    pub fn initiator_port(&self) -> String {
        scsi::port_name(&self.session.url().initiator, self.session.isid())
    }

    /// Sends TEST UNIT READY (a cheap probe of the path).
    pub fn test_unit_ready(&self) -> Result<(), BlockError> {
        self.command(
            Op::Other("test unit ready"),
            scsi::test_unit_ready(),
            Transfer::None,
        )
        .map(|_| ())
    }

    fn protocol(&self, e: impl std::fmt::Display) -> BlockError {
        BlockError::Protocol {
            lun: self.name.clone(),
            detail: e.to_string(),
        }
    }

    fn io(&self, op: &'static str, offset: u64, kind: io::ErrorKind, msg: String) -> BlockError {
        BlockError::Io {
            op,
            lun: self.name.clone(),
            offset,
            source: io::Error::new(kind, msg),
        }
    }

    /// A command that did not complete, as a [`BlockError`] (no retry considered).
    pub(super) fn failed(&self, op: &'static str, offset: u64, e: CommandError) -> BlockError {
        match e {
            CommandError::ConnectionLost(why) => {
                self.io(op, offset, io::ErrorKind::ConnectionReset, why)
            }
            CommandError::TimedOut(why) => self.io(op, offset, io::ErrorKind::TimedOut, why),
            CommandError::Closed => self.io(
                op,
                offset,
                io::ErrorKind::NotConnected,
                "the iSCSI session is closed".into(),
            ),
            CommandError::Protocol(why) => self.protocol(why),
        }
    }

    /// What a read's status other than GOOD says about this node's registration: a
    /// UNIT ATTENTION is noted (and the registration checked) as on the synchronous
    /// path, since the target reports it once and a read sent again would not see it.
    pub(super) fn note_read_status(&self, c: &Completion) -> Result<(), BlockError> {
        if c.status == sense::CHECK_CONDITION
            && let Some(s) = c.sense()
            && s.key == UNIT_ATTENTION
            && self.session.note_unit_attention(&s)
        {
            self.recheck_registration(&Op::Read)?;
        }
        Ok(())
    }

    /// A GOOD READ(16) of `len` bytes at `offset`: every byte must have come.
    pub(super) fn check_read_length(
        &self,
        c: &Completion,
        len: usize,
        offset: u64,
    ) -> Result<(), BlockError> {
        if c.data_in != len || c.residual.is_some_and(|r| r != 0) {
            return Err(self.protocol(format!(
                "READ(16) of {len} bytes at {offset} returned {} bytes",
                c.data_in
            )));
        }
        Ok(())
    }

    /// The session, for queued reads.
    pub(super) fn session(&self) -> &Session {
        &self.session
    }

    /// The LUN's name in messages.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    fn possibly_fenced(&self, reason: &str) -> BlockError {
        BlockError::PossiblyFenced {
            lun: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// Refuses a write while this node's registration may be gone.
    fn check_write_allowed(&self) -> Result<(), BlockError> {
        match *self.registration.lock() {
            Some(r) if r.generation != self.session.generation() => Err(self.possibly_fenced(
                "the connection to the target was re-established since this node registered",
            )),
            _ => Ok(()),
        }
    }

    fn registered(&self) -> bool {
        self.registration.lock().is_some()
    }

    /// After a UNIT ATTENTION for a reset or a reservation change on this session: is
    /// this node's key still registered? tgtd tells a preempted node only "reservations
    /// preempted", so READ KEYS decides. A key gone means fenced: a write then fails
    /// with [`BlockError::Fenced`], and later writes go to the target, which refuses
    /// them for as long as this node is not registered.
    fn recheck_registration(&self, op: &Op) -> Result<(), BlockError> {
        let Some(reg) = *self.registration.lock() else {
            return Ok(());
        };
        let generation = self.session.generation();
        let keys = self.keys(false)?;
        let mut slot = self.registration.lock();
        if keys.keys.contains(&reg.key) {
            if let Some(r) = slot.as_mut().filter(|r| r.key == reg.key) {
                r.generation = generation;
            }
            return Ok(());
        }
        *slot = None;
        drop(slot);
        tracing::warn!(lun = %self.name, key = reg.key, "this node's registration was preempted");
        if matches!(op, Op::Write) {
            return Err(BlockError::Fenced {
                op: "write",
                lun: self.name.clone(),
            });
        }
        Ok(())
    }

    /// Runs one command with the retry rules of the module doc.
    fn command(
        &self,
        op: Op,
        cdb: [u8; 16],
        transfer: Transfer<'_>,
    ) -> Result<Completion, BlockError> {
        self.command_checked(op, cdb, transfer, true)
    }

    /// [`Self::command`]; `recheck` says whether a UNIT ATTENTION makes it check the
    /// registration (not for the READ KEYS of that check itself).
    fn command_checked(
        &self,
        op: Op,
        cdb: [u8; 16],
        mut transfer: Transfer<'_>,
        recheck: bool,
    ) -> Result<Completion, BlockError> {
        let deadline = Instant::now() + self.session.url().timeout;
        let offset = u64::from_be_bytes(cdb[2..10].try_into().expect("8 bytes"));
        let offset = if matches!(op, Op::Read | Op::Write) {
            offset * u64::from(self.block_size)
        } else {
            0
        };
        let is_write = matches!(op, Op::Write);
        let mut unit_attentions = 0;
        loop {
            if is_write {
                self.check_write_allowed()?;
            }
            let t = match &mut transfer {
                Transfer::None => Transfer::None,
                Transfer::Read(b) => Transfer::Read(b),
                Transfer::Write(b) => Transfer::Write(b),
            };
            let c = match self.session.execute(cdb, t) {
                Ok(c) => c,
                Err(CommandError::ConnectionLost(why)) => {
                    if matches!(op, Op::ReserveOut) {
                        return Err(self.io(
                            op.name(),
                            0,
                            io::ErrorKind::ConnectionReset,
                            format!("{why}; the action may or may not have been applied"),
                        ));
                    }
                    if is_write && self.registered() {
                        return Err(self.possibly_fenced(&format!(
                            "connection lost while the write was in flight ({why}); it may or may not have reached the LUN"
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(self.io(
                            op.name(),
                            offset,
                            io::ErrorKind::ConnectionReset,
                            why,
                        ));
                    }
                    continue;
                }
                Err(e) => return Err(self.failed(op.name(), offset, e)),
            };
            match c.status {
                sense::GOOD => return Ok(c),
                sense::RESERVATION_CONFLICT => {
                    return Err(BlockError::Fenced {
                        op: op.name(),
                        lun: self.name.clone(),
                    });
                }
                sense::BUSY | sense::TASK_SET_FULL => {
                    if Instant::now() >= deadline {
                        return Err(self.io(
                            op.name(),
                            offset,
                            io::ErrorKind::TimedOut,
                            "the target stayed busy".into(),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                sense::CHECK_CONDITION => {
                    let s = c.sense().ok_or_else(|| {
                        self.protocol("CHECK CONDITION without readable sense data")
                    })?;
                    let retry = match s.key {
                        UNIT_ATTENTION => {
                            if self.session.note_unit_attention(&s) && recheck {
                                self.recheck_registration(&op)?;
                            }
                            unit_attentions += 1;
                            unit_attentions < 16
                        }
                        NOT_READY => {
                            std::thread::sleep(Duration::from_millis(50));
                            Instant::now() < deadline
                        }
                        _ => false,
                    };
                    if !retry {
                        return Err(if s.key == ILLEGAL_REQUEST {
                            BlockError::Refused {
                                op: op.name(),
                                lun: self.name.clone(),
                                detail: s.to_string(),
                            }
                        } else {
                            self.io(op.name(), offset, io::ErrorKind::Other, s.to_string())
                        });
                    }
                }
                other => {
                    return Err(self.io(
                        op.name(),
                        offset,
                        io::ErrorKind::Other,
                        format!("SCSI status {other:#04x}"),
                    ));
                }
            }
        }
    }

    /// READ KEYS; `recheck` as in [`Self::command_checked`].
    fn keys(&self, recheck: bool) -> Result<PrKeys, BlockError> {
        let d = self.persistent_reserve_in(0, recheck)?;
        scsi::decode_read_keys(&d).map_err(|e| self.protocol(e))
    }

    fn persistent_reserve_in(
        &self,
        service_action: u8,
        recheck: bool,
    ) -> Result<Vec<u8>, BlockError> {
        let mut buf = vec![0u8; scsi::PR_IN_LEN as usize];
        let c = self.command_checked(
            Op::Other("persistent reserve in"),
            scsi::pr_in(service_action),
            Transfer::Read(&mut buf),
            recheck,
        )?;
        buf.truncate(c.data_in);
        Ok(buf)
    }
}

impl BlockDevice for IscsiDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let bs = u64::from(self.block_size);
        for (i, chunk) in buf.chunks_mut(MAX_COMMAND_BYTES).enumerate() {
            let off = offset + (i * MAX_COMMAND_BYTES) as u64;
            let len = chunk.len();
            let c = self.command(
                Op::Read,
                scsi::read16(off / bs, (len as u64 / bs) as u32),
                Transfer::Read(chunk),
            )?;
            self.check_read_length(&c, len, off)?;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len())?;
        let bs = u64::from(self.block_size);
        for (i, chunk) in buf.chunks(MAX_COMMAND_BYTES).enumerate() {
            let off = offset + (i * MAX_COMMAND_BYTES) as u64;
            let c = self.command(
                Op::Write,
                scsi::write16(off / bs, (chunk.len() as u64 / bs) as u32),
                Transfer::Write(chunk),
            )?;
            if c.residual.is_some_and(|r| r != 0) {
                return Err(self.protocol(format!(
                    "WRITE(16) of {} bytes at {off} left a residual of {:?}",
                    chunk.len(),
                    c.residual
                )));
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.command(
            Op::Other("flush"),
            scsi::synchronize_cache16(),
            Transfer::None,
        )
        .map(|_| ())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn persistent_reserve_out(&self, action: &PrOut) -> Result<(), BlockError> {
        let (cdb, params) = scsi::pr_out(action);
        let c = match (
            self.command(Op::ReserveOut, cdb, Transfer::Write(&params)),
            action,
        ) {
            // tgtd compares the TransportID of REGISTER AND MOVE in a layout of its own:
            // try that one when the standard one is refused.
            (
                Err(BlockError::Refused { .. }),
                PrOut::RegisterAndMove {
                    key,
                    new_key,
                    to_initiator,
                    unregister,
                },
            ) if scsi::split_port_name(to_initiator).1.is_some() => {
                let params =
                    scsi::register_and_move_params(*key, *new_key, to_initiator, *unregister, true);
                let mut cdb = cdb;
                cdb[5..9].copy_from_slice(&(params.len() as u32).to_be_bytes());
                self.command(Op::ReserveOut, cdb, Transfer::Write(&params))?
            }
            (r, _) => r?,
        };
        let mut reg = self.registration.lock();
        match action {
            // Registered as of the connection (and UNIT ATTENTIONs) the command ran on.
            PrOut::Register { new_key, .. } | PrOut::RegisterIgnoreExisting { new_key }
                if *new_key != 0 =>
            {
                *reg = Some(Registration {
                    key: *new_key,
                    generation: c.generation,
                });
            }
            PrOut::Register { .. }
            | PrOut::RegisterIgnoreExisting { .. }
            | PrOut::Clear { .. }
            | PrOut::RegisterAndMove {
                unregister: true, ..
            } => *reg = None,
            _ => {}
        }
        Ok(())
    }

    fn read_keys(&self) -> Result<PrKeys, BlockError> {
        self.keys(true)
    }

    fn read_reservation(&self) -> Result<Option<PrHolder>, BlockError> {
        let d = self.persistent_reserve_in(1, true)?;
        scsi::decode_read_reservation(&d).map_err(|e| self.protocol(e))
    }

    fn write_ready(&self) -> Result<(), BlockError> {
        self.check_write_allowed()
    }

    fn path_generation(&self) -> u64 {
        self.session.generation()
    }

    fn reservation_port(&self) -> Option<String> {
        Some(self.initiator_port())
    }
}
