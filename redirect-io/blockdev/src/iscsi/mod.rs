//! The built-in iSCSI initiator (RFC 7143), pure Rust: how a node reaches a LUN on an
//! iSCSI target when no kernel initiator is there.
//!
//! - [`url`]: `iscsi://` addresses; [`pdu`], [`text`], [`wire`]: the protocol's
//!   framing; [`login`]: login with no authentication or CHAP;
//! - [`session`]: one session shared by many threads, with the command window,
//!   R2T-driven writes, timeouts with ABORT TASK and reconnects;
//!   [`completion_queue`]: reads submitted without waiting, their ends on a queue;
//!   [`queued_reads`]: the same on the device, with its retry rules;
//! - [`scsi`], [`sense`]: the commands and what they answer;
//! - [`device`]: the [`crate::BlockDevice`] over all of it, with the rules that keep
//!   fencing sound across reconnects.
//!
//! Every decoder of what a target sends returns an error on bad input, never panics;
//! each has a fuzz target (redirect-io/blockdev/fuzz).

pub mod completion_queue;
mod conn_reader;
pub mod device;
pub mod fuzz_inputs;
pub mod login;
pub mod pdu;
pub mod queued_reads;
pub mod scsi;
pub mod sense;
pub mod session;
pub mod text;
pub mod url;
pub mod wire;

pub use device::IscsiDevice;
pub use queued_reads::ReadQueue;
pub use url::IscsiUrl;
