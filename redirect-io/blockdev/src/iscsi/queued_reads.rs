//! Reads kept outstanding by one thread on an [`IscsiDevice`]: submit many, take each
//! as it ends. The common case (GOOD status, every byte there) is served from the
//! queue; a lost connection or another status (a UNIT ATTENTION, BUSY, a conflict) is
//! read again synchronously with the device's retry rules, and a timeout is an error,
//! so a queued read fails when a [`BlockDevice::read_at`] would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::completion_queue::CompletionQueue;
use super::device::{IscsiDevice, MAX_COMMAND_BYTES};
use super::scsi;
use super::sense;
use super::session::CommandError;
use crate::{BlockDevice, BlockError};

/// A read that has ended: the submitter's number, its offset, the buffer (holding the
/// data if the read succeeded) and how it ended.
#[derive(Debug)]
pub struct EndedRead {
    pub token: u64,
    pub offset: u64,
    pub buffer: Vec<u8>,
    pub result: Result<(), BlockError>,
}

/// One submitter's outstanding reads on one device.
pub struct ReadQueue<'d> {
    dev: &'d IscsiDevice,
    queue: Arc<CompletionQueue>,
    read_again: AtomicU64,
}

impl<'d> ReadQueue<'d> {
    pub fn new(dev: &'d IscsiDevice) -> ReadQueue<'d> {
        ReadQueue {
            dev,
            queue: Arc::new(CompletionQueue::new()),
            read_again: AtomicU64::new(0),
        }
    }

    /// How many reads ended otherwise than GOOD and were read again synchronously.
    pub fn read_again(&self) -> u64 {
        self.read_again.load(Ordering::Relaxed)
    }

    /// Reads submitted and not yet taken.
    pub fn outstanding(&self) -> usize {
        self.queue.outstanding()
    }

    /// Sends a read of `buffer.len()` bytes (whole blocks, at most 1 MiB) at `offset`
    /// without waiting; `token` (unique among the outstanding reads) names it when it
    /// ends. A read that cannot be sent comes back at once, buffer included.
    pub fn submit(
        &self,
        token: u64,
        offset: u64,
        buffer: Vec<u8>,
    ) -> Result<(), (Vec<u8>, BlockError)> {
        if let Err(e) = self.dev.check_range(offset, buffer.len()) {
            return Err((buffer, e));
        }
        if buffer.len() > MAX_COMMAND_BYTES {
            let len = buffer.len();
            return Err((
                buffer,
                BlockError::Protocol {
                    lun: self.dev.name().to_string(),
                    detail: format!(
                        "a queued read is at most {MAX_COMMAND_BYTES} bytes, not {len}"
                    ),
                },
            ));
        }
        let bs = u64::from(self.dev.block_size());
        let cdb = scsi::read16(offset / bs, (buffer.len() as u64 / bs) as u32);
        self.dev
            .session()
            .submit_read(cdb, buffer, token, &self.queue)
            .map_err(|(buffer, e)| {
                let e = self.dev.failed("read", offset, e);
                (buffer, e)
            })
    }

    /// The next read to end, waiting for it; None when none is outstanding.
    pub fn next(&self) -> Option<EndedRead> {
        let ended = self.dev.session().next_queued(&self.queue)?;
        let bs = u64::from(self.dev.block_size());
        let lba = u64::from_be_bytes(ended.cdb[2..10].try_into().expect("8 bytes"));
        let offset = lba * bs;
        let mut buffer = ended.buffer;
        let result = match ended.result {
            Ok(c) if c.status == sense::GOOD => {
                self.dev.check_read_length(&c, buffer.len(), offset)
            }
            // Another status (BUSY, a UNIT ATTENTION, a conflict) or a lost connection:
            // read again on the synchronous path, which knows what each means (a UNIT
            // ATTENTION is noted first: the read sent again would not see it).
            Ok(c) => {
                self.read_again.fetch_add(1, Ordering::Relaxed);
                self.dev
                    .note_read_status(&c)
                    .and_then(|()| self.dev.read_at(&mut buffer, offset))
            }
            Err(CommandError::ConnectionLost(_)) => {
                self.read_again.fetch_add(1, Ordering::Relaxed);
                self.dev.read_at(&mut buffer, offset)
            }
            Err(e) => Err(self.dev.failed("read", offset, e)),
        };
        Some(EndedRead {
            token: ended.token,
            offset,
            buffer,
            result,
        })
    }
}

impl Drop for ReadQueue<'_> {
    /// Waits for the reads still out (each ends by its deadline: an overdue one is
    /// aborted), so none is left in the session's tables.
    fn drop(&mut self) {
        while self.dev.session().next_queued(&self.queue).is_some() {}
    }
}
