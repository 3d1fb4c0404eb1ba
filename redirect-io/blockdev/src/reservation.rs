//! SCSI-3 persistent reservations as csvfs uses them for election and fencing.
//!
//! The types here name the PERSISTENT RESERVE OUT service actions and the answers of
//! PERSISTENT RESERVE IN, the same for every backend: the iSCSI initiator sends them to
//! the target, the image-file backend emulates them in a side file.
//! [`PrState`](crate::PrState) is the target side of the protocol with no I/O: the
//! rules SPC-3 gives (as tgtd implements them) for who may register, reserve, preempt
//! and write. The image-file emulation keeps one in its side file, and the cluster
//! simulation uses it as its target.

/// A reservation key. 0 means "no key" in SPC-3.
pub type PrKey = u64;

/// The reservation types of SPC-3 (the TYPE field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationType {
    /// Only the holder writes; everyone reads.
    WriteExclusive,
    /// Only the holder reads and writes.
    ExclusiveAccess,
    /// Every registered initiator writes; the holder is the one that reserved.
    WriteExclusiveRegistrantsOnly,
    /// Every registered initiator reads and writes.
    ExclusiveAccessRegistrantsOnly,
    /// Every registered initiator writes; every registrant holds the reservation.
    WriteExclusiveAllRegistrants,
    /// Every registered initiator reads and writes; every registrant holds it.
    ExclusiveAccessAllRegistrants,
}

impl ReservationType {
    /// The TYPE code in CDBs and in READ RESERVATION data.
    pub fn code(self) -> u8 {
        match self {
            ReservationType::WriteExclusive => 1,
            ReservationType::ExclusiveAccess => 3,
            ReservationType::WriteExclusiveRegistrantsOnly => 5,
            ReservationType::ExclusiveAccessRegistrantsOnly => 6,
            ReservationType::WriteExclusiveAllRegistrants => 7,
            ReservationType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// The type a TYPE code names, if any.
    pub fn from_code(code: u8) -> Option<ReservationType> {
        Some(match code {
            1 => ReservationType::WriteExclusive,
            3 => ReservationType::ExclusiveAccess,
            5 => ReservationType::WriteExclusiveRegistrantsOnly,
            6 => ReservationType::ExclusiveAccessRegistrantsOnly,
            7 => ReservationType::WriteExclusiveAllRegistrants,
            8 => ReservationType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// True for the types under which every registrant may write.
    pub fn registrants_write(self) -> bool {
        !matches!(
            self,
            ReservationType::WriteExclusive | ReservationType::ExclusiveAccess
        )
    }

    /// True for the types that also keep non-holders (or non-registrants) from reading.
    pub fn excludes_reads(self) -> bool {
        matches!(
            self,
            ReservationType::ExclusiveAccess
                | ReservationType::ExclusiveAccessRegistrantsOnly
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }

    /// True for the "all registrants" types, under which every registrant is a holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            ReservationType::WriteExclusiveAllRegistrants
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }
}

/// A PERSISTENT RESERVE OUT service action, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrOut {
    /// Registers `new_key` for this initiator; `key` is its current key (0 if none).
    /// A `new_key` of 0 unregisters.
    Register {
        /// The key this initiator holds now (0 if it holds none).
        key: PrKey,
        /// The key to hold from now on (0 to unregister).
        new_key: PrKey,
    },
    /// Registers `new_key` whatever this initiator held before.
    RegisterIgnoreExisting {
        /// The key to hold from now on (0 to unregister).
        new_key: PrKey,
    },
    /// Takes the reservation.
    Reserve {
        /// This initiator's registered key.
        key: PrKey,
        /// The reservation type.
        kind: ReservationType,
    },
    /// Gives the reservation up.
    Release {
        /// This initiator's registered key.
        key: PrKey,
        /// The type of the reservation held.
        kind: ReservationType,
    },
    /// Removes every registration and the reservation.
    Clear {
        /// This initiator's registered key.
        key: PrKey,
    },
    /// Removes the registrations of `victim` (and its reservation, which this
    /// initiator then holds with `kind`).
    Preempt {
        /// This initiator's registered key.
        key: PrKey,
        /// The key whose registrations go.
        victim: PrKey,
        /// The reservation type to hold afterwards.
        kind: ReservationType,
        /// PREEMPT AND ABORT: also abort the victim's commands (tgtd refuses it).
        abort: bool,
    },
    /// Hands the reservation to another initiator, registered with `new_key`, and with
    /// `unregister` unregisters this one (UNREG); without it, this one stays registered
    /// (and may go on writing under a Registrants Only type). (SPC registers the
    /// receiver if it is not yet; tgtd requires it to be registered with `new_key`
    /// already, so callers register it first.)
    RegisterAndMove {
        /// This initiator's registered key (the holder's).
        key: PrKey,
        /// The key the receiving initiator is registered with.
        new_key: PrKey,
        /// The receiver: an initiator port name `NAME,i,0xISID` (what
        /// `IscsiDevice::initiator_port` gives; tgtd needs the ISID) or a name alone.
        to_initiator: String,
        /// UNREG: this initiator's registration goes too.
        unregister: bool,
    },
}

impl PrOut {
    /// The SERVICE ACTION code of the PERSISTENT RESERVE OUT CDB.
    pub fn service_action(&self) -> u8 {
        match self {
            PrOut::Register { .. } => 0,
            PrOut::Reserve { .. } => 1,
            PrOut::Release { .. } => 2,
            PrOut::Clear { .. } => 3,
            PrOut::Preempt { abort: false, .. } => 4,
            PrOut::Preempt { abort: true, .. } => 5,
            PrOut::RegisterIgnoreExisting { .. } => 6,
            PrOut::RegisterAndMove { .. } => 7,
        }
    }

    /// The reservation type the CDB carries (0 where the action has none).
    pub fn type_code(&self) -> u8 {
        match self {
            PrOut::Reserve { kind, .. }
            | PrOut::Release { kind, .. }
            | PrOut::Preempt { kind, .. } => kind.code(),
            _ => 0,
        }
    }

    /// True for the actions that (re)register this initiator with a non-zero key.
    pub fn registers(&self) -> bool {
        match self {
            PrOut::Register { new_key, .. } | PrOut::RegisterIgnoreExisting { new_key } => {
                *new_key != 0
            }
            _ => false,
        }
    }
}

/// The answer of PERSISTENT RESERVE IN, READ KEYS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrKeys {
    /// The PRgeneration counter: bumped by every change of the registrations.
    pub generation: u32,
    /// Every registered key, once per registered I_T nexus.
    pub keys: Vec<PrKey>,
}

/// The answer of PERSISTENT RESERVE IN, READ RESERVATION, when a reservation exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrHolder {
    /// The PRgeneration counter.
    pub generation: u32,
    /// The holder's key (0 for the "all registrants" types).
    pub key: PrKey,
    /// The reservation type; `None` for a reservation without one (tgtd leaves it so
    /// after REGISTER AND MOVE, until the holder sets one by PREEMPTing its own key).
    /// Write access then follows the holder's and the registrations' (tgtd conflicts
    /// every command of an unregistered initiator).
    pub kind: Option<ReservationType>,
}

/// Why a target refused a reservation action or an I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrRefusal {
    /// RESERVATION CONFLICT: the initiator is not allowed (not registered, wrong key,
    /// someone else's reservation).
    #[error("reservation conflict")]
    Conflict,
    /// ILLEGAL REQUEST: the target does not do this (PREEMPT AND ABORT on tgtd,
    /// a bad parameter).
    #[error("the target refused the request as invalid")]
    Invalid,
}
