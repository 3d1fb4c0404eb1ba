//! The target side of SCSI-3 persistent reservations, as pure state with no I/O.
//!
//! [`PrState`] is what a target keeps per logical unit: one key per registered I_T
//! nexus, the reservation, and the PRgeneration counter. [`PrState::apply`] answers a
//! PERSISTENT RESERVE OUT the way Debian's tgtd 1.0.85 does, and
//! [`PrState::may_write`] / [`PrState::may_read`] say whether a nexus's WRITE or READ
//! would meet RESERVATION CONFLICT. The image-file emulation keeps one in a side file
//! ([`PrState::encode`], [`PrState::decode`]); the cluster simulation uses one as its
//! target. Sessions, CDBs, sense data and UNIT ATTENTIONs are not here.
//!
//! # tgtd or SPC-3
//!
//! Where tgtd departs from SPC-3 in a way a correct initiator sees, `PrState` does what
//! tgtd does, so that tests predict the real target:
//!
//! - Registrations outlive the session that made them: a nexus that logs in again is a
//!   new nexus and is not registered. [`PrState::forget_nexus`] is therefore *not*
//!   what tgtd does on logout. tgtd keeps no state across a restart (no APTPL):
//!   that is [`PrState::reset`].
//! - PREEMPT AND ABORT is ILLEGAL REQUEST, unless the state is made with
//!   `PrState::new(true)` to stand for a target that implements it (the abort itself
//!   is not modelled).
//! - Under WRITE EXCLUSIVE, a READ from a nexus that does not hold the reservation
//!   meets RESERVATION CONFLICT, as under EXCLUSIVE ACCESS: tgtd's access check does
//!   not tell the two types apart (SPC-3 lets those READs through).
//!
//! Where tgtd is laxer than SPC-3 only towards requests a correct initiator does not
//! send (or crashes on them), `PrState` follows SPC-3 and refuses, so that initiator
//! bugs fail in tests rather than pass on tgtd by luck:
//!
//! - RESERVE and RELEASE check the reservation key (tgtd never checks it in RESERVE,
//!   and in RELEASE only from the holder).
//! - PREEMPT with a zero victim key when there is no reservation is ILLEGAL REQUEST
//!   (tgtd answers GOOD and does nothing).
//! - REGISTER AND MOVE registers the receiving initiator with the new key, hands it the
//!   reservation with its type, and unregisters the mover. tgtd instead looks for a
//!   registration that already has the new key, leaves the type at 0, unregisters the
//!   mover only with the UNREG bit, answers GOOD without doing anything when the mover
//!   does not hold the reservation, and crashes when there is no reservation. Here a
//!   mover that does not hold the reservation, or an all-registrants reservation, is
//!   RESERVATION CONFLICT; no reservation, a zero new key, or the mover's own
//!   initiator name is ILLEGAL REQUEST.
//!
//! PRgeneration goes up by one with every REGISTER, REGISTER AND IGNORE EXISTING KEY,
//! CLEAR, PREEMPT and REGISTER AND MOVE that succeeds, whether or not it changed
//! anything, and never for RESERVE, RELEASE or a refused request (SPC-3 table 127; tgtd
//! adds a second bump when an unregistration releases the reservation, which this does
//! not copy).
//!
//! # Encoding
//!
//! Little-endian, byte-exact: every value has exactly one encoding, and [`PrState::decode`]
//! rejects anything else with a [`PrStateError`].
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CSVFSPR\0` |
//! | 8 | 2 | format version (1) |
//! | 10 | 2 | flags: bit 0 = PREEMPT AND ABORT is accepted; the other bits are zero |
//! | 12 | 4 | body length B, at most [`PrState::MAX_BODY_LEN`] |
//! | 16 | B | body |
//! | 16 + B | 32 | blake3 of bytes 0..16 + B |
//!
//! The body:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | PRgeneration |
//! | 4 | 1 | reservation TYPE code (1, 3, 5, 6, 7, 8), 0 when there is no reservation |
//! | 5 | 3 | zero |
//! | 8 | 4 | holder: index of its registration; `0xFFFF_FFFF` when there is no reservation or it is an all-registrants type |
//! | 12 | 4 | registration count R, at most [`PrState::MAX_REGISTRATIONS`] |
//! | 16 | | R registrations, in registration order (the order of READ KEYS) |
//!
//! A registration:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | reservation key, not 0 |
//! | 8 | 8 | session id of the nexus |
//! | 16 | 2 | length L of the initiator name, 1 to [`PrState::MAX_INITIATOR_NAME`] |
//! | 18 | L | initiator name, UTF-8 |
//!
//! No two registrations have the same nexus.

use std::fmt;

use crate::{PrHolder, PrKey, PrKeys, PrOut, PrRefusal, ReservationType};

/// An I_T nexus as the target tells them apart: the initiator's name and a session.
///
/// For iSCSI the session stands for the ISID and TSIH of one login: when the initiator
/// logs in again it is a new nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexus {
    /// The initiator's name (an iSCSI initiator name, or the image-file emulation's).
    pub initiator: String,
    /// Which session of that initiator.
    pub session: u64,
}

impl Nexus {
    /// The nexus of `initiator`'s session `session`.
    pub fn new(initiator: impl Into<String>, session: u64) -> Nexus {
        Nexus {
            initiator: initiator.into(),
            session,
        }
    }
}

impl fmt::Display for Nexus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (session {:#x})", self.initiator, self.session)
    }
}

/// Why bytes are not an encoded [`PrState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrStateError {
    /// Fewer bytes than the header and the checksum take.
    #[error("persistent reservation state is {len} bytes, shorter than the {min}-byte minimum")]
    TooShort {
        /// How many bytes there were.
        len: usize,
        /// The least an encoding takes.
        min: usize,
    },
    /// The magic is not `CSVFSPR\0`.
    #[error("not a persistent reservation state (bad magic)")]
    BadMagic,
    /// A format version this code does not read.
    #[error("persistent reservation state has format version {0}; this code reads version 1")]
    UnsupportedVersion(u16),
    /// The header's body length does not match the number of bytes.
    #[error(
        "persistent reservation state declares a {declared}-byte body but {actual} bytes follow the header"
    )]
    LengthMismatch {
        /// The body length in the header.
        declared: u32,
        /// What the bytes hold between the header and the checksum.
        actual: usize,
    },
    /// The blake3 checksum does not match the bytes.
    #[error("persistent reservation state fails its checksum")]
    ChecksumMismatch,
    /// Flag bits this version does not define.
    #[error("persistent reservation state has unknown flags {0:#06x}")]
    UnknownFlags(u16),
    /// The body ends in the middle of a field.
    #[error("persistent reservation state ends inside {what} at body byte {offset}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where in the body it starts.
        offset: usize,
    },
    /// Bytes left over after the last registration.
    #[error("persistent reservation state has {0} bytes after its last registration")]
    TrailingBytes(usize),
    /// A reserved byte that is not zero.
    #[error("persistent reservation state has non-zero reserved bytes")]
    ReservedNotZero,
    /// A TYPE code that is not a reservation type.
    #[error("persistent reservation state has unknown reservation type {0}")]
    BadReservationType(u8),
    /// More registrations than [`PrState::MAX_REGISTRATIONS`].
    #[error("persistent reservation state has {0} registrations, more than the maximum")]
    TooManyRegistrations(u32),
    /// A registration with key 0, which means "no key".
    #[error("registration {0} has key 0")]
    ZeroKey(usize),
    /// An initiator name that is empty, too long, or not UTF-8.
    #[error("registration {0} has an invalid initiator name")]
    BadInitiatorName(usize),
    /// Two registrations for one nexus.
    #[error("registration {0} repeats the nexus of an earlier one")]
    DuplicateNexus(usize),
    /// The holder field does not fit the reservation type and the registrations.
    #[error(
        "persistent reservation state has holder {holder:#x} for reservation type {code} and {count} registrations"
    )]
    BadHolder {
        /// The holder field.
        holder: u32,
        /// The reservation TYPE code (0: none).
        code: u8,
        /// How many registrations there are.
        count: usize,
    },
}

/// The reservation, when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reservation {
    /// One registered nexus holds it (the types other than "all registrants").
    Single {
        holder: Nexus,
        kind: ReservationType,
    },
    /// Every registrant holds it; it lasts while there is one.
    AllRegistrants { kind: ReservationType },
}

impl Reservation {
    fn new(kind: ReservationType, holder: &Nexus) -> Reservation {
        if kind.all_registrants() {
            Reservation::AllRegistrants { kind }
        } else {
            Reservation::Single {
                holder: holder.clone(),
                kind,
            }
        }
    }

    fn kind(&self) -> ReservationType {
        match self {
            Reservation::Single { kind, .. } | Reservation::AllRegistrants { kind } => *kind,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Registration {
    nexus: Nexus,
    key: PrKey,
}

/// The persistent reservation state of one logical unit, as a target keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrState {
    preempt_and_abort: bool,
    generation: u32,
    /// In registration order, which is the order READ KEYS reports.
    registrations: Vec<Registration>,
    reservation: Option<Reservation>,
}

impl Default for PrState {
    /// The state of a freshly started tgtd: nothing registered, PREEMPT AND ABORT
    /// refused.
    fn default() -> PrState {
        PrState::new(false)
    }
}

const MAGIC: [u8; 8] = *b"CSVFSPR\0";
const VERSION: u16 = 1;
const FLAG_PREEMPT_AND_ABORT: u16 = 1;

const O_VERSION: usize = 8;
const O_FLAGS: usize = 10;
const O_BODY_LEN: usize = 12;
const HEADER_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;

const B_RESERVED: usize = 5;
const B_HOLDER: usize = 8;
const B_REGISTRATIONS: usize = 16;
const NO_HOLDER: u32 = u32::MAX;
/// Key, session and name length: a registration without its name.
const REGISTRATION_FIXED_LEN: usize = 18;

impl PrState {
    /// The format version [`PrState::encode`] writes.
    pub const VERSION: u16 = VERSION;
    /// The magic an encoding starts with.
    pub const MAGIC: [u8; 8] = MAGIC;
    /// The longest initiator name, in bytes: the longest iSCSI name (RFC 3720).
    pub const MAX_INITIATOR_NAME: usize = 223;
    /// The most registrations a state holds; one more is refused as ILLEGAL REQUEST
    /// (INSUFFICIENT REGISTRATION RESOURCES in SPC-3).
    pub const MAX_REGISTRATIONS: usize = 4096;
    /// The longest body an encoding has.
    pub const MAX_BODY_LEN: usize = B_REGISTRATIONS
        + PrState::MAX_REGISTRATIONS * (REGISTRATION_FIXED_LEN + PrState::MAX_INITIATOR_NAME);

    /// An empty state. `preempt_and_abort` says whether PREEMPT AND ABORT is accepted
    /// (as PREEMPT); tgtd refuses it, which is `false` and the [`Default`].
    pub fn new(preempt_and_abort: bool) -> PrState {
        PrState {
            preempt_and_abort,
            generation: 0,
            registrations: Vec::new(),
            reservation: None,
        }
    }

    /// Whether PREEMPT AND ABORT is accepted.
    pub fn accepts_preempt_and_abort(&self) -> bool {
        self.preempt_and_abort
    }

    /// The PRgeneration counter.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The key `nexus` is registered with, if it is.
    pub fn key_of(&self, nexus: &Nexus) -> Option<PrKey> {
        self.registration(nexus).map(|i| self.registrations[i].key)
    }

    /// Every registered nexus with its key, in registration order.
    pub fn registrations(&self) -> impl Iterator<Item = (&Nexus, PrKey)> {
        self.registrations.iter().map(|r| (&r.nexus, r.key))
    }

    /// PERSISTENT RESERVE IN, READ KEYS.
    pub fn read_keys(&self) -> PrKeys {
        PrKeys {
            generation: self.generation,
            keys: self.registrations.iter().map(|r| r.key).collect(),
        }
    }

    /// PERSISTENT RESERVE IN, READ RESERVATION: the holder's key (0 for the
    /// all-registrants types) and the type, if there is a reservation.
    pub fn read_reservation(&self) -> Option<PrHolder> {
        let r = self.reservation.as_ref()?;
        let key = match r {
            Reservation::Single { holder, .. } => self.key_of(holder).unwrap_or(0),
            Reservation::AllRegistrants { .. } => 0,
        };
        Some(PrHolder {
            generation: self.generation,
            key,
            kind: r.kind(),
        })
    }

    /// True when `nexus` holds the reservation (every registrant does under the
    /// all-registrants types).
    pub fn holds(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(Reservation::Single { holder, .. }) => holder == nexus,
            Some(Reservation::AllRegistrants { .. }) => self.registration(nexus).is_some(),
        }
    }

    /// Whether a WRITE from `nexus` would be carried out rather than meet RESERVATION
    /// CONFLICT.
    pub fn may_write(&self, nexus: &Nexus) -> bool {
        let Some(r) = &self.reservation else {
            return true;
        };
        if self.holds(nexus) {
            return true;
        }
        r.kind().registrants_write() && self.registration(nexus).is_some()
    }

    /// Whether a READ from `nexus` would be carried out rather than meet RESERVATION
    /// CONFLICT. As in tgtd, a non-holder's READ conflicts under WRITE EXCLUSIVE too.
    pub fn may_read(&self, nexus: &Nexus) -> bool {
        let Some(r) = &self.reservation else {
            return true;
        };
        if self.holds(nexus) {
            return true;
        }
        let kind = r.kind();
        if !kind.registrants_write() {
            // WRITE EXCLUSIVE and EXCLUSIVE ACCESS: tgtd refuses every non-holder.
            return false;
        }
        self.registration(nexus).is_some() || !kind.excludes_reads()
    }

    /// Carries out a PERSISTENT RESERVE OUT from `nexus`. A refusal leaves the state as
    /// it was.
    pub fn apply(&mut self, nexus: &Nexus, action: &PrOut) -> Result<(), PrRefusal> {
        if !valid_initiator_name(&nexus.initiator) {
            return Err(PrRefusal::Invalid);
        }
        match action {
            PrOut::Register { key, new_key } => self.register(nexus, Some(*key), *new_key),
            PrOut::RegisterIgnoreExisting { new_key } => self.register(nexus, None, *new_key),
            PrOut::Reserve { key, kind } => self.reserve(nexus, *key, *kind),
            PrOut::Release { key, kind } => self.release(nexus, *key, *kind),
            PrOut::Clear { key } => self.clear(nexus, *key),
            PrOut::Preempt {
                key,
                victim,
                kind,
                abort,
            } => {
                if *abort && !self.preempt_and_abort {
                    return Err(PrRefusal::Invalid);
                }
                self.preempt(nexus, *key, *victim, *kind)
            }
            PrOut::RegisterAndMove {
                key,
                new_key,
                to_initiator,
            } => self.register_and_move(nexus, *key, *new_key, to_initiator),
        }
    }

    /// Drops `nexus`'s registration as if it had unregistered (releasing a reservation
    /// it held). tgtd does *not* do this when a session ends: its registrations stay
    /// until they are preempted, cleared, or the target restarts. For targets that drop
    /// registrations with the nexus, and for tests.
    pub fn forget_nexus(&mut self, nexus: &Nexus) {
        if let Some(i) = self.registration(nexus) {
            self.unregister(i);
            self.bump();
        }
    }

    /// Forgets every registration and the reservation and starts PRgeneration again at
    /// 0: a restart of tgtd, which has no persistence through power loss (APTPL).
    pub fn reset(&mut self) {
        *self = PrState::new(self.preempt_and_abort);
    }

    fn registration(&self, nexus: &Nexus) -> Option<usize> {
        self.registrations.iter().position(|r| &r.nexus == nexus)
    }

    /// The index of `nexus`'s registration, if it is registered with `key`.
    fn registered_with(&self, nexus: &Nexus, key: PrKey) -> Result<usize, PrRefusal> {
        match self.registration(nexus) {
            Some(i) if self.registrations[i].key == key => Ok(i),
            _ => Err(PrRefusal::Conflict),
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Removes registration `i`, and with it a reservation it held alone or the
    /// all-registrants reservation it was the last registrant of.
    fn unregister(&mut self, i: usize) {
        let gone = self.registrations.remove(i);
        let release = match &self.reservation {
            Some(Reservation::Single { holder, .. }) => *holder == gone.nexus,
            Some(Reservation::AllRegistrants { .. }) => self.registrations.is_empty(),
            None => false,
        };
        if release {
            self.reservation = None;
        }
    }

    /// REGISTER (`key` is `Some`) or REGISTER AND IGNORE EXISTING KEY (`None`).
    fn register(
        &mut self,
        nexus: &Nexus,
        key: Option<PrKey>,
        new_key: PrKey,
    ) -> Result<(), PrRefusal> {
        match self.registration(nexus) {
            Some(i) => {
                if key.is_some_and(|k| k != self.registrations[i].key) {
                    return Err(PrRefusal::Conflict);
                }
                if new_key == 0 {
                    self.unregister(i);
                } else {
                    self.registrations[i].key = new_key;
                }
            }
            None => {
                if key.is_some_and(|k| k != 0) {
                    return Err(PrRefusal::Conflict);
                }
                if new_key != 0 {
                    if self.registrations.len() >= PrState::MAX_REGISTRATIONS {
                        return Err(PrRefusal::Invalid);
                    }
                    self.registrations.push(Registration {
                        nexus: nexus.clone(),
                        key: new_key,
                    });
                }
            }
        }
        self.bump();
        Ok(())
    }

    fn reserve(
        &mut self,
        nexus: &Nexus,
        key: PrKey,
        kind: ReservationType,
    ) -> Result<(), PrRefusal> {
        self.registered_with(nexus, key)?;
        match &self.reservation {
            None => {
                self.reservation = Some(Reservation::new(kind, nexus));
                Ok(())
            }
            Some(r) if self.holds(nexus) && r.kind() == kind => Ok(()),
            Some(_) => Err(PrRefusal::Conflict),
        }
    }

    fn release(
        &mut self,
        nexus: &Nexus,
        key: PrKey,
        kind: ReservationType,
    ) -> Result<(), PrRefusal> {
        self.registered_with(nexus, key)?;
        match &self.reservation {
            // Releasing what one does not hold is GOOD and does nothing (SPC-3, tgtd).
            None => Ok(()),
            Some(_) if !self.holds(nexus) => Ok(()),
            // ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION.
            Some(r) if r.kind() != kind => Err(PrRefusal::Invalid),
            Some(_) => {
                self.reservation = None;
                Ok(())
            }
        }
    }

    fn clear(&mut self, nexus: &Nexus, key: PrKey) -> Result<(), PrRefusal> {
        self.registered_with(nexus, key)?;
        self.registrations.clear();
        self.reservation = None;
        self.bump();
        Ok(())
    }

    fn preempt(
        &mut self,
        nexus: &Nexus,
        key: PrKey,
        victim: PrKey,
        kind: ReservationType,
    ) -> Result<(), PrRefusal> {
        self.registered_with(nexus, key)?;
        if victim != 0 && !self.registrations.iter().any(|r| r.key == victim) {
            return Err(PrRefusal::Conflict);
        }
        // Which registrations go (never the preempter's own), and whether the preempter
        // takes the reservation.
        let (remove_all, take) = match &self.reservation {
            Some(Reservation::AllRegistrants { .. }) => (victim == 0, victim == 0),
            Some(Reservation::Single { holder, .. }) => {
                if self.key_of(holder) == Some(victim) {
                    (false, true)
                } else if victim == 0 {
                    return Err(PrRefusal::Invalid);
                } else {
                    (false, false)
                }
            }
            // A zero victim key names the all-registrants reservation, which is not there.
            None if victim == 0 => return Err(PrRefusal::Invalid),
            None => (false, false),
        };
        if take {
            self.reservation = Some(Reservation::new(kind, nexus));
        }
        self.registrations
            .retain(|r| r.nexus == *nexus || !(remove_all || r.key == victim));
        self.bump();
        Ok(())
    }

    fn register_and_move(
        &mut self,
        nexus: &Nexus,
        key: PrKey,
        new_key: PrKey,
        to_initiator: &str,
    ) -> Result<(), PrRefusal> {
        let mover = self.registered_with(nexus, key)?;
        let kind = match &self.reservation {
            None => return Err(PrRefusal::Invalid),
            Some(Reservation::AllRegistrants { .. }) => return Err(PrRefusal::Conflict),
            Some(Reservation::Single { holder, kind }) => {
                if holder != nexus {
                    return Err(PrRefusal::Conflict);
                }
                *kind
            }
        };
        if new_key == 0 || to_initiator == nexus.initiator || !valid_initiator_name(to_initiator) {
            return Err(PrRefusal::Invalid);
        }
        // The receiving nexus: a registered session of that initiator if there is one,
        // else its session 0 (a TransportID names the initiator, not the session).
        let dest = self
            .registrations
            .iter()
            .position(|r| r.nexus.initiator == to_initiator);
        let dest_nexus = match dest {
            Some(d) => {
                self.registrations[d].key = new_key;
                self.registrations[d].nexus.clone()
            }
            None => {
                let n = Nexus::new(to_initiator, 0);
                // The mover's registration goes below, so the count does not grow.
                self.registrations.push(Registration {
                    nexus: n.clone(),
                    key: new_key,
                });
                n
            }
        };
        self.reservation = Some(Reservation::Single {
            holder: dest_nexus,
            kind,
        });
        self.registrations.remove(mover);
        self.bump();
        Ok(())
    }

    /// The encoding described in the module documentation.
    pub fn encode(&self) -> Vec<u8> {
        let (code, holder) = match &self.reservation {
            None => (0, NO_HOLDER),
            Some(Reservation::AllRegistrants { kind }) => (kind.code(), NO_HOLDER),
            Some(Reservation::Single { holder, kind }) => {
                let i = self.registration(holder).expect("the holder is registered");
                (kind.code(), i as u32)
            }
        };
        let mut body = Vec::with_capacity(
            B_REGISTRATIONS + self.registrations.len() * (REGISTRATION_FIXED_LEN + 32),
        );
        body.extend_from_slice(&self.generation.to_le_bytes());
        body.push(code);
        body.extend_from_slice(&[0; B_HOLDER - B_RESERVED]);
        body.extend_from_slice(&holder.to_le_bytes());
        body.extend_from_slice(&(self.registrations.len() as u32).to_le_bytes());
        for r in &self.registrations {
            body.extend_from_slice(&r.key.to_le_bytes());
            body.extend_from_slice(&r.nexus.session.to_le_bytes());
            body.extend_from_slice(&(r.nexus.initiator.len() as u16).to_le_bytes());
            body.extend_from_slice(r.nexus.initiator.as_bytes());
        }
        let flags = if self.preempt_and_abort {
            FLAG_PREEMPT_AND_ABORT
        } else {
            0
        };
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Decodes what [`PrState::encode`] wrote; anything else is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<PrState, PrStateError> {
        let min = HEADER_LEN + CHECKSUM_LEN;
        if b.len() < min {
            return Err(PrStateError::TooShort { len: b.len(), min });
        }
        if b[..O_VERSION] != MAGIC {
            return Err(PrStateError::BadMagic);
        }
        let version = u16::from_le_bytes([b[O_VERSION], b[O_VERSION + 1]]);
        if version != VERSION {
            return Err(PrStateError::UnsupportedVersion(version));
        }
        let declared = u32::from_le_bytes([
            b[O_BODY_LEN],
            b[O_BODY_LEN + 1],
            b[O_BODY_LEN + 2],
            b[O_BODY_LEN + 3],
        ]);
        let actual = b.len() - min;
        if usize::try_from(declared).ok() != Some(actual) {
            return Err(PrStateError::LengthMismatch { declared, actual });
        }
        let end = HEADER_LEN + actual;
        if blake3::hash(&b[..end]).as_bytes()[..] != b[end..] {
            return Err(PrStateError::ChecksumMismatch);
        }
        let flags = u16::from_le_bytes([b[O_FLAGS], b[O_FLAGS + 1]]);
        if flags & !FLAG_PREEMPT_AND_ABORT != 0 {
            return Err(PrStateError::UnknownFlags(flags));
        }
        let mut state = PrState::decode_body(&b[HEADER_LEN..end])?;
        state.preempt_and_abort = flags & FLAG_PREEMPT_AND_ABORT != 0;
        Ok(state)
    }

    fn decode_body(body: &[u8]) -> Result<PrState, PrStateError> {
        let mut r = Reader { b: body, at: 0 };
        let generation = r.u32("the generation")?;
        let code = r.u8("the reservation type")?;
        if r.take(B_HOLDER - B_RESERVED, "the reserved bytes")? != [0; B_HOLDER - B_RESERVED] {
            return Err(PrStateError::ReservedNotZero);
        }
        let holder = r.u32("the holder")?;
        let count = r.u32("the registration count")?;
        if count as usize > PrState::MAX_REGISTRATIONS {
            return Err(PrStateError::TooManyRegistrations(count));
        }
        let count = count as usize;
        let mut registrations: Vec<Registration> = Vec::with_capacity(count);
        for i in 0..count {
            let key = r.u64("a registration's key")?;
            let session = r.u64("a registration's session")?;
            let len = usize::from(r.u16("a registration's name length")?);
            let name = r.take(len, "a registration's initiator name")?;
            if key == 0 {
                return Err(PrStateError::ZeroKey(i));
            }
            let initiator = match std::str::from_utf8(name) {
                Ok(s) if valid_initiator_name(s) => s.to_string(),
                _ => return Err(PrStateError::BadInitiatorName(i)),
            };
            let nexus = Nexus { initiator, session };
            if registrations.iter().any(|r| r.nexus == nexus) {
                return Err(PrStateError::DuplicateNexus(i));
            }
            registrations.push(Registration { nexus, key });
        }
        if r.at != body.len() {
            return Err(PrStateError::TrailingBytes(body.len() - r.at));
        }
        let bad_holder = PrStateError::BadHolder {
            holder,
            code,
            count,
        };
        let reservation = if code == 0 {
            if holder != NO_HOLDER {
                return Err(bad_holder);
            }
            None
        } else {
            let kind =
                ReservationType::from_code(code).ok_or(PrStateError::BadReservationType(code))?;
            if kind.all_registrants() {
                if holder != NO_HOLDER || registrations.is_empty() {
                    return Err(bad_holder);
                }
                Some(Reservation::AllRegistrants { kind })
            } else {
                match registrations.get(holder as usize) {
                    Some(h) if holder != NO_HOLDER => Some(Reservation::Single {
                        holder: h.nexus.clone(),
                        kind,
                    }),
                    _ => return Err(bad_holder),
                }
            }
        };
        Ok(PrState {
            preempt_and_abort: false,
            generation,
            registrations,
            reservation,
        })
    }
}

fn valid_initiator_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= PrState::MAX_INITIATOR_NAME
}

/// Reads fields off the body, refusing to run past its end.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PrStateError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(PrStateError::Truncated {
                what,
                offset: self.at,
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], PrStateError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PrStateError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, PrStateError> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, PrStateError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, PrStateError> {
        self.array(what).map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReservationType::*;
    use proptest::prelude::*;

    const ALL_TYPES: [ReservationType; 6] = [
        WriteExclusive,
        ExclusiveAccess,
        WriteExclusiveRegistrantsOnly,
        ExclusiveAccessRegistrantsOnly,
        WriteExclusiveAllRegistrants,
        ExclusiveAccessAllRegistrants,
    ];

    fn a() -> Nexus {
        Nexus::new("iqn.2026-01.test:a", 1)
    }
    fn b() -> Nexus {
        Nexus::new("iqn.2026-01.test:b", 2)
    }
    fn c() -> Nexus {
        Nexus::new("iqn.2026-01.test:c", 3)
    }

    fn reg(key: PrKey) -> PrOut {
        PrOut::Register {
            key: 0,
            new_key: key,
        }
    }
    fn reserve(key: PrKey, kind: ReservationType) -> PrOut {
        PrOut::Reserve { key, kind }
    }
    fn preempt(key: PrKey, victim: PrKey, kind: ReservationType) -> PrOut {
        PrOut::Preempt {
            key,
            victim,
            kind,
            abort: false,
        }
    }

    /// A registered with 0xA, B with 0xB, C not registered.
    fn two_registered() -> PrState {
        let mut s = PrState::default();
        s.apply(&a(), &reg(0xA)).unwrap();
        s.apply(&b(), &reg(0xB)).unwrap();
        s
    }

    /// Applies an action that must be refused with `refusal`, and checks that the state
    /// is unchanged.
    fn refused(s: &mut PrState, n: &Nexus, action: PrOut, refusal: PrRefusal) {
        let before = s.clone();
        assert_eq!(s.apply(n, &action), Err(refusal), "{action:?} from {n}");
        assert_eq!(*s, before, "a refused {action:?} changed the state");
    }

    #[test]
    fn register_from_an_unregistered_nexus_needs_key_zero() {
        let mut s = PrState::default();
        refused(
            &mut s,
            &a(),
            PrOut::Register {
                key: 5,
                new_key: 0xA,
            },
            PrRefusal::Conflict,
        );
        s.apply(&a(), &reg(0xA)).unwrap();
        assert_eq!(s.key_of(&a()), Some(0xA));
        assert_eq!(
            s.read_keys(),
            PrKeys {
                generation: 1,
                keys: vec![0xA]
            }
        );
    }

    #[test]
    fn register_with_zero_keys_when_unregistered_does_nothing_but_counts() {
        let mut s = PrState::default();
        s.apply(&a(), &reg(0)).unwrap();
        assert_eq!(
            s.read_keys(),
            PrKeys {
                generation: 1,
                keys: vec![]
            }
        );
    }

    #[test]
    fn register_checks_the_current_key_then_replaces_it_in_place() {
        let mut s = two_registered();
        refused(
            &mut s,
            &a(),
            PrOut::Register {
                key: 0xB,
                new_key: 0xC,
            },
            PrRefusal::Conflict,
        );
        refused(&mut s, &a(), reg(0xC), PrRefusal::Conflict);
        s.apply(
            &a(),
            &PrOut::Register {
                key: 0xA,
                new_key: 0xAA,
            },
        )
        .unwrap();
        assert_eq!(
            s.read_keys().keys,
            vec![0xAA, 0xB],
            "READ KEYS keeps registration order"
        );
    }

    #[test]
    fn register_with_new_key_zero_unregisters() {
        let mut s = two_registered();
        s.apply(
            &a(),
            &PrOut::Register {
                key: 0xA,
                new_key: 0,
            },
        )
        .unwrap();
        assert_eq!(s.key_of(&a()), None);
        assert_eq!(s.read_keys().keys, vec![0xB]);
    }

    #[test]
    fn register_and_ignore_existing_key_needs_no_key() {
        let mut s = two_registered();
        s.apply(&a(), &PrOut::RegisterIgnoreExisting { new_key: 0xAA })
            .unwrap();
        s.apply(&c(), &PrOut::RegisterIgnoreExisting { new_key: 0xC })
            .unwrap();
        assert_eq!(s.read_keys().keys, vec![0xAA, 0xB, 0xC]);
        s.apply(&b(), &PrOut::RegisterIgnoreExisting { new_key: 0 })
            .unwrap();
        assert_eq!(s.read_keys().keys, vec![0xAA, 0xC]);
    }

    #[test]
    fn one_initiator_registers_per_session() {
        let mut s = PrState::default();
        let a2 = Nexus::new(a().initiator, 99);
        s.apply(&a(), &reg(0xA)).unwrap();
        s.apply(&a2, &reg(0xA)).unwrap();
        assert_eq!(s.read_keys().keys, vec![0xA, 0xA]);
        assert_eq!(s.key_of(&Nexus::new(a().initiator, 7)), None);
    }

    #[test]
    fn the_holder_keeps_the_reservation_when_it_changes_its_key() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        s.apply(
            &a(),
            &PrOut::Register {
                key: 0xA,
                new_key: 0xAA,
            },
        )
        .unwrap();
        assert!(s.holds(&a()));
        assert_eq!(s.read_reservation().unwrap().key, 0xAA);
    }

    #[test]
    fn unregistering_the_holder_releases_the_reservation() {
        for kind in [
            WriteExclusive,
            ExclusiveAccess,
            WriteExclusiveRegistrantsOnly,
        ] {
            let mut s = two_registered();
            s.apply(&a(), &reserve(0xA, kind)).unwrap();
            s.apply(
                &a(),
                &PrOut::Register {
                    key: 0xA,
                    new_key: 0,
                },
            )
            .unwrap();
            assert_eq!(s.read_reservation(), None, "{kind:?}");
        }
    }

    #[test]
    fn an_all_registrants_reservation_lasts_while_anyone_is_registered() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusiveAllRegistrants))
            .unwrap();
        s.apply(
            &a(),
            &PrOut::Register {
                key: 0xA,
                new_key: 0,
            },
        )
        .unwrap();
        assert!(s.holds(&b()));
        assert_eq!(
            s.read_reservation().unwrap().kind,
            WriteExclusiveAllRegistrants
        );
        s.apply(
            &b(),
            &PrOut::Register {
                key: 0xB,
                new_key: 0,
            },
        )
        .unwrap();
        assert_eq!(s.read_reservation(), None);
    }

    #[test]
    fn registrations_are_limited() {
        let mut s = PrState::default();
        for i in 0..PrState::MAX_REGISTRATIONS as u64 {
            s.apply(&Nexus::new("iqn.x", i), &reg(1)).unwrap();
        }
        let one_more = Nexus::new("iqn.x", u64::MAX);
        refused(&mut s, &one_more, reg(1), PrRefusal::Invalid);
        // A registered nexus can still change its key.
        s.apply(
            &Nexus::new("iqn.x", 0),
            &PrOut::Register { key: 1, new_key: 2 },
        )
        .unwrap();
        assert_eq!(PrState::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn initiator_names_must_be_1_to_223_bytes() {
        let mut s = PrState::default();
        refused(&mut s, &Nexus::new("", 1), reg(1), PrRefusal::Invalid);
        refused(
            &mut s,
            &Nexus::new("x".repeat(224), 1),
            reg(1),
            PrRefusal::Invalid,
        );
        s.apply(&Nexus::new("x".repeat(223), 1), &reg(1)).unwrap();
    }

    #[test]
    fn reserve_needs_a_registration_and_its_key() {
        let mut s = two_registered();
        refused(
            &mut s,
            &c(),
            reserve(0, WriteExclusive),
            PrRefusal::Conflict,
        );
        refused(
            &mut s,
            &c(),
            reserve(0xC, WriteExclusive),
            PrRefusal::Conflict,
        );
        refused(
            &mut s,
            &a(),
            reserve(0xB, WriteExclusive),
            PrRefusal::Conflict,
        );
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        assert_eq!(
            s.read_reservation(),
            Some(PrHolder {
                generation: 2,
                key: 0xA,
                kind: WriteExclusive
            })
        );
    }

    #[test]
    fn reserve_again_is_good_only_for_the_holder_and_the_same_type() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusiveRegistrantsOnly))
            .unwrap();
        s.apply(&a(), &reserve(0xA, WriteExclusiveRegistrantsOnly))
            .unwrap();
        refused(
            &mut s,
            &a(),
            reserve(0xA, WriteExclusive),
            PrRefusal::Conflict,
        );
        refused(
            &mut s,
            &b(),
            reserve(0xB, WriteExclusiveRegistrantsOnly),
            PrRefusal::Conflict,
        );
        assert!(s.holds(&a()) && !s.holds(&b()));
    }

    #[test]
    fn under_all_registrants_every_registrant_holds_and_may_reserve_the_same_type() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, ExclusiveAccessAllRegistrants))
            .unwrap();
        assert!(s.holds(&a()) && s.holds(&b()) && !s.holds(&c()));
        s.apply(&b(), &reserve(0xB, ExclusiveAccessAllRegistrants))
            .unwrap();
        refused(
            &mut s,
            &b(),
            reserve(0xB, WriteExclusiveAllRegistrants),
            PrRefusal::Conflict,
        );
        assert_eq!(
            s.read_reservation().unwrap().key,
            0,
            "all registrants: key 0"
        );
    }

    #[test]
    fn release_rules() {
        let mut s = two_registered();
        // Nothing to release: GOOD.
        s.apply(
            &a(),
            &PrOut::Release {
                key: 0xA,
                kind: WriteExclusive,
            },
        )
        .unwrap();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        refused(
            &mut s,
            &c(),
            PrOut::Release {
                key: 0,
                kind: WriteExclusive,
            },
            PrRefusal::Conflict,
        );
        refused(
            &mut s,
            &a(),
            PrOut::Release {
                key: 0xB,
                kind: WriteExclusive,
            },
            PrRefusal::Conflict,
        );
        // A registrant that does not hold it: GOOD, and the reservation stays.
        s.apply(
            &b(),
            &PrOut::Release {
                key: 0xB,
                kind: WriteExclusive,
            },
        )
        .unwrap();
        assert!(s.holds(&a()));
        refused(
            &mut s,
            &a(),
            PrOut::Release {
                key: 0xA,
                kind: ExclusiveAccess,
            },
            PrRefusal::Invalid,
        );
        let generation = s.generation();
        s.apply(
            &a(),
            &PrOut::Release {
                key: 0xA,
                kind: WriteExclusive,
            },
        )
        .unwrap();
        assert_eq!(s.read_reservation(), None);
        assert_eq!(s.generation(), generation, "RELEASE does not count");
        assert_eq!(s.read_keys().keys, vec![0xA, 0xB], "registrations stay");
    }

    #[test]
    fn any_registrant_releases_an_all_registrants_reservation() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusiveAllRegistrants))
            .unwrap();
        s.apply(
            &b(),
            &PrOut::Release {
                key: 0xB,
                kind: WriteExclusiveAllRegistrants,
            },
        )
        .unwrap();
        assert_eq!(s.read_reservation(), None);
    }

    #[test]
    fn clear_removes_everything() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        refused(&mut s, &c(), PrOut::Clear { key: 0 }, PrRefusal::Conflict);
        refused(&mut s, &b(), PrOut::Clear { key: 0xA }, PrRefusal::Conflict);
        s.apply(&b(), &PrOut::Clear { key: 0xB }).unwrap();
        assert_eq!(
            s.read_keys(),
            PrKeys {
                generation: 3,
                keys: vec![]
            }
        );
        assert_eq!(s.read_reservation(), None);
    }

    #[test]
    fn preempt_needs_a_registration_its_key_and_a_registered_victim() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        refused(
            &mut s,
            &c(),
            preempt(0, 0xA, WriteExclusive),
            PrRefusal::Conflict,
        );
        refused(
            &mut s,
            &b(),
            preempt(0xC, 0xA, WriteExclusive),
            PrRefusal::Conflict,
        );
        refused(
            &mut s,
            &b(),
            preempt(0xB, 0x99, WriteExclusive),
            PrRefusal::Conflict,
        );
    }

    #[test]
    fn preempting_the_holder_takes_its_reservation_with_the_new_type() {
        let mut s = two_registered();
        s.apply(&c(), &reg(0xC)).unwrap();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        s.apply(&b(), &preempt(0xB, 0xA, WriteExclusiveRegistrantsOnly))
            .unwrap();
        assert_eq!(s.key_of(&a()), None);
        assert_eq!(s.read_keys().keys, vec![0xB, 0xC], "other registrants stay");
        assert_eq!(
            s.read_reservation(),
            Some(PrHolder {
                generation: 4,
                key: 0xB,
                kind: WriteExclusiveRegistrantsOnly
            })
        );
    }

    #[test]
    fn preempt_removes_every_registration_with_the_victim_key() {
        let mut s = two_registered();
        let a2 = Nexus::new(a().initiator, 42);
        s.apply(&a2, &reg(0xA)).unwrap();
        s.apply(&c(), &reg(0xC)).unwrap();
        s.apply(&c(), &reserve(0xC, WriteExclusiveRegistrantsOnly))
            .unwrap();
        s.apply(&b(), &preempt(0xB, 0xA, WriteExclusive)).unwrap();
        assert_eq!(s.read_keys().keys, vec![0xB, 0xC]);
        // The victim did not hold the reservation: it stays as it was.
        assert!(s.holds(&c()));
        assert_eq!(
            s.read_reservation().unwrap().kind,
            WriteExclusiveRegistrantsOnly
        );
    }

    #[test]
    fn preempt_without_a_reservation_only_removes_registrations() {
        let mut s = two_registered();
        s.apply(&b(), &preempt(0xB, 0xA, WriteExclusive)).unwrap();
        assert_eq!(s.read_keys().keys, vec![0xB]);
        assert_eq!(s.read_reservation(), None);
    }

    #[test]
    fn preempt_with_victim_zero_is_only_for_all_registrants_reservations() {
        let mut s = two_registered();
        refused(
            &mut s,
            &b(),
            preempt(0xB, 0, WriteExclusive),
            PrRefusal::Invalid,
        );
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        refused(
            &mut s,
            &b(),
            preempt(0xB, 0, WriteExclusive),
            PrRefusal::Invalid,
        );

        let mut s = two_registered();
        s.apply(&c(), &reg(0xC)).unwrap();
        s.apply(&a(), &reserve(0xA, WriteExclusiveAllRegistrants))
            .unwrap();
        s.apply(&b(), &preempt(0xB, 0, WriteExclusiveRegistrantsOnly))
            .unwrap();
        assert_eq!(s.read_keys().keys, vec![0xB], "everyone else is removed");
        assert!(s.holds(&b()));
        assert_eq!(
            s.read_reservation().unwrap().kind,
            WriteExclusiveRegistrantsOnly
        );
    }

    #[test]
    fn preempting_a_key_under_all_registrants_keeps_the_reservation() {
        let mut s = two_registered();
        s.apply(&c(), &reg(0xC)).unwrap();
        s.apply(&a(), &reserve(0xA, WriteExclusiveAllRegistrants))
            .unwrap();
        s.apply(&b(), &preempt(0xB, 0xA, WriteExclusive)).unwrap();
        assert_eq!(s.read_keys().keys, vec![0xB, 0xC]);
        assert_eq!(
            s.read_reservation().unwrap().kind,
            WriteExclusiveAllRegistrants
        );
    }

    #[test]
    fn the_holder_preempting_its_own_key_changes_the_type_and_stays() {
        let mut s = two_registered();
        let a2 = Nexus::new(a().initiator, 42);
        s.apply(&a2, &reg(0xA)).unwrap();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        s.apply(&a(), &preempt(0xA, 0xA, ExclusiveAccess)).unwrap();
        assert!(s.holds(&a()));
        assert_eq!(s.key_of(&a2), None, "the other nexus with that key goes");
        assert_eq!(s.read_reservation().unwrap().kind, ExclusiveAccess);
    }

    #[test]
    fn preempt_and_abort_is_refused_like_tgtd_unless_enabled() {
        let abort = PrOut::Preempt {
            key: 0xB,
            victim: 0xA,
            kind: WriteExclusive,
            abort: true,
        };
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        refused(&mut s, &b(), abort.clone(), PrRefusal::Invalid);
        // Even from an unregistered nexus: the service action itself is unknown.
        refused(&mut s, &c(), abort.clone(), PrRefusal::Invalid);

        let mut s = PrState::new(true);
        s.apply(&a(), &reg(0xA)).unwrap();
        s.apply(&b(), &reg(0xB)).unwrap();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        s.apply(&b(), &abort).unwrap();
        assert!(s.holds(&b()));
        assert!(s.accepts_preempt_and_abort());
    }

    #[test]
    fn register_and_move_hands_the_reservation_to_a_registered_session() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusiveRegistrantsOnly))
            .unwrap();
        let mv = PrOut::RegisterAndMove {
            key: 0xA,
            new_key: 0xBB,
            to_initiator: b().initiator,
        };
        s.apply(&a(), &mv).unwrap();
        assert_eq!(s.key_of(&a()), None, "the mover is unregistered");
        assert_eq!(s.key_of(&b()), Some(0xBB));
        assert!(s.holds(&b()));
        assert_eq!(
            s.read_reservation(),
            Some(PrHolder {
                generation: 3,
                key: 0xBB,
                kind: WriteExclusiveRegistrantsOnly
            })
        );
    }

    #[test]
    fn register_and_move_to_an_unregistered_initiator_registers_its_session_zero() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        let mv = PrOut::RegisterAndMove {
            key: 0xA,
            new_key: 0xCC,
            to_initiator: "iqn.z".into(),
        };
        s.apply(&a(), &mv).unwrap();
        let z = Nexus::new("iqn.z", 0);
        assert!(s.holds(&z));
        assert_eq!(s.read_keys().keys, vec![0xB, 0xCC]);
    }

    #[test]
    fn register_and_move_refusals() {
        let mv = |key, new_key, to: &str| PrOut::RegisterAndMove {
            key,
            new_key,
            to_initiator: to.into(),
        };
        let mut s = two_registered();
        refused(&mut s, &a(), mv(0xA, 0xC, "iqn.z"), PrRefusal::Invalid); // no reservation
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        refused(&mut s, &c(), mv(0, 0xC, "iqn.z"), PrRefusal::Conflict); // unregistered
        refused(&mut s, &a(), mv(0xB, 0xC, "iqn.z"), PrRefusal::Conflict); // wrong key
        refused(&mut s, &b(), mv(0xB, 0xC, "iqn.z"), PrRefusal::Conflict); // not the holder
        refused(&mut s, &a(), mv(0xA, 0, "iqn.z"), PrRefusal::Invalid); // no new key
        refused(
            &mut s,
            &a(),
            mv(0xA, 0xC, &a().initiator),
            PrRefusal::Invalid,
        ); // itself
        refused(&mut s, &a(), mv(0xA, 0xC, ""), PrRefusal::Invalid);

        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusiveAllRegistrants))
            .unwrap();
        refused(&mut s, &a(), mv(0xA, 0xC, "iqn.z"), PrRefusal::Conflict);
    }

    /// (may_write, may_read) for the holder A, the registrant B, the unregistered C.
    fn access(s: &PrState) -> [(bool, bool); 3] {
        [a(), b(), c()].map(|n| (s.may_write(&n), s.may_read(&n)))
    }

    #[test]
    fn access_by_reservation_type() {
        let s = two_registered();
        assert_eq!(access(&s), [(true, true); 3], "no reservation: everyone");
        let expected = [
            // Non-holders conflict on READ too under WRITE EXCLUSIVE: tgtd's rule.
            (
                WriteExclusive,
                [(true, true), (false, false), (false, false)],
            ),
            (
                ExclusiveAccess,
                [(true, true), (false, false), (false, false)],
            ),
            (
                WriteExclusiveRegistrantsOnly,
                [(true, true), (true, true), (false, true)],
            ),
            (
                ExclusiveAccessRegistrantsOnly,
                [(true, true), (true, true), (false, false)],
            ),
            (
                WriteExclusiveAllRegistrants,
                [(true, true), (true, true), (false, true)],
            ),
            (
                ExclusiveAccessAllRegistrants,
                [(true, true), (true, true), (false, false)],
            ),
        ];
        for (kind, want) in expected {
            let mut s = two_registered();
            s.apply(&a(), &reserve(0xA, kind)).unwrap();
            assert_eq!(access(&s), want, "{kind:?}");
        }
    }

    #[test]
    fn generation_counts_registration_changes_only() {
        let mut s = PrState::default();
        let expect = |s: &PrState, g: u32| assert_eq!(s.generation(), g);
        s.apply(&a(), &reg(0xA)).unwrap();
        expect(&s, 1);
        s.apply(&b(), &PrOut::RegisterIgnoreExisting { new_key: 0xB })
            .unwrap();
        expect(&s, 2);
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        s.apply(
            &a(),
            &PrOut::Release {
                key: 0xA,
                kind: WriteExclusive,
            },
        )
        .unwrap();
        expect(&s, 2);
        s.apply(&c(), &reg(0xC)).unwrap();
        expect(&s, 3);
        refused(&mut s, &c(), PrOut::Clear { key: 1 }, PrRefusal::Conflict);
        expect(&s, 3);
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        s.apply(&b(), &preempt(0xB, 0xC, WriteExclusive)).unwrap();
        expect(&s, 4);
        s.apply(
            &a(),
            &PrOut::RegisterAndMove {
                key: 0xA,
                new_key: 0xD,
                to_initiator: "iqn.d".into(),
            },
        )
        .unwrap();
        expect(&s, 5);
        s.apply(&b(), &PrOut::Clear { key: 0xB }).unwrap();
        expect(&s, 6);
    }

    #[test]
    fn forget_nexus_drops_one_registration_and_reset_everything() {
        let mut s = two_registered();
        s.apply(&a(), &reserve(0xA, WriteExclusiveRegistrantsOnly))
            .unwrap();
        s.forget_nexus(&c());
        assert_eq!(
            s.generation(),
            2,
            "forgetting an unregistered nexus changes nothing"
        );
        s.forget_nexus(&a());
        assert_eq!(
            s.read_keys(),
            PrKeys {
                generation: 3,
                keys: vec![0xB]
            }
        );
        assert_eq!(s.read_reservation(), None);

        let mut s = PrState::new(true);
        s.apply(&a(), &reg(0xA)).unwrap();
        s.apply(&a(), &reserve(0xA, WriteExclusive)).unwrap();
        s.reset();
        assert_eq!(s, PrState::new(true));
    }

    // ---- encoding ----

    /// An envelope around `body` with a correct checksum.
    fn seal(version: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// A body with `reservation` = (type code, holder) and `regs` = (key, session, name).
    fn body(generation: u32, code: u8, holder: u32, regs: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut b = generation.to_le_bytes().to_vec();
        b.extend_from_slice(&[code, 0, 0, 0]);
        b.extend_from_slice(&holder.to_le_bytes());
        b.extend_from_slice(&(regs.len() as u32).to_le_bytes());
        for (key, session, name) in regs {
            b.extend_from_slice(&key.to_le_bytes());
            b.extend_from_slice(&session.to_le_bytes());
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name);
        }
        b
    }

    #[test]
    fn the_encoding_is_the_documented_layout() {
        assert_eq!(
            PrState::default().encode(),
            seal(1, 0, &body(0, 0, NO_HOLDER, &[])),
            "empty state"
        );
        let mut s = PrState::new(true);
        s.apply(&Nexus::new("n1", 7), &reg(0x1122)).unwrap();
        s.apply(&Nexus::new("n2", 8), &reg(0x3344)).unwrap();
        s.apply(
            &Nexus::new("n2", 8),
            &reserve(0x3344, WriteExclusiveRegistrantsOnly),
        )
        .unwrap();
        let want = seal(
            1,
            1,
            &body(2, 5, 1, &[(0x1122, 7, b"n1"), (0x3344, 8, b"n2")]),
        );
        assert_eq!(s.encode(), want);
        assert_eq!(&want[..8], b"CSVFSPR\0");
        assert_eq!(want.len(), 16 + 16 + 2 * 20 + 32);
        assert_eq!(PrState::decode(&want).unwrap(), s);
    }

    #[test]
    fn all_registrants_has_no_holder_index() {
        let mut s = two_registered();
        s.apply(&b(), &reserve(0xB, ExclusiveAccessAllRegistrants))
            .unwrap();
        let e = s.encode();
        assert_eq!(&e[16 + 4..16 + 12], &[8, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(PrState::decode(&e).unwrap(), s);
    }

    #[test]
    fn decode_rejects_bad_envelopes() {
        let good = PrState::default().encode();
        assert_eq!(
            PrState::decode(&good[..47]),
            Err(PrStateError::TooShort { len: 47, min: 48 })
        );
        assert_eq!(
            PrState::decode(&[]),
            Err(PrStateError::TooShort { len: 0, min: 48 })
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(PrState::decode(&bad), Err(PrStateError::BadMagic));
        let body0 = body(0, 0, NO_HOLDER, &[]);
        assert_eq!(
            PrState::decode(&seal(2, 0, &body0)),
            Err(PrStateError::UnsupportedVersion(2))
        );
        assert_eq!(
            PrState::decode(&seal(1, 2, &body0)),
            Err(PrStateError::UnknownFlags(2))
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            PrState::decode(&long),
            Err(PrStateError::LengthMismatch {
                declared: 16,
                actual: 17
            })
        );
        let mut huge = good.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            PrState::decode(&huge),
            Err(PrStateError::LengthMismatch { .. })
        ));
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        assert_eq!(
            PrState::decode(&flipped),
            Err(PrStateError::ChecksumMismatch)
        );
        let mut sum = good;
        *sum.last_mut().unwrap() ^= 0x80;
        assert_eq!(PrState::decode(&sum), Err(PrStateError::ChecksumMismatch));
    }

    #[test]
    fn decode_rejects_bad_bodies() {
        let dec = |b: Vec<u8>| PrState::decode(&seal(1, 0, &b));
        let n: &[u8] = b"iqn";
        assert!(matches!(
            dec(vec![0; 15]),
            Err(PrStateError::Truncated { offset: 12, .. })
        ));
        let mut b = body(0, 0, NO_HOLDER, &[(1, 1, n)]);
        b.pop();
        assert!(matches!(
            dec(b),
            Err(PrStateError::Truncated { offset: 34, .. })
        ));
        let mut b = body(0, 0, NO_HOLDER, &[(1, 1, n)]);
        b.truncate(30);
        assert!(matches!(dec(b), Err(PrStateError::Truncated { .. })));
        let mut b = body(0, 0, NO_HOLDER, &[]);
        b.push(0);
        assert_eq!(dec(b), Err(PrStateError::TrailingBytes(1)));
        let mut b = body(0, 0, NO_HOLDER, &[]);
        b[6] = 1;
        assert_eq!(dec(b), Err(PrStateError::ReservedNotZero));
        assert_eq!(
            dec(body(0, 2, NO_HOLDER, &[(1, 1, n)])),
            Err(PrStateError::BadReservationType(2))
        );
        let mut b = body(0, 0, NO_HOLDER, &[]);
        b[12..16].copy_from_slice(&4097u32.to_le_bytes());
        assert_eq!(dec(b), Err(PrStateError::TooManyRegistrations(4097)));
        let mut b = body(0, 0, NO_HOLDER, &[]);
        b[12..16].copy_from_slice(&4096u32.to_le_bytes());
        assert!(matches!(dec(b), Err(PrStateError::Truncated { .. })));
        assert_eq!(
            dec(body(0, 0, NO_HOLDER, &[(1, 1, n), (0, 2, n)])),
            Err(PrStateError::ZeroKey(1))
        );
        assert_eq!(
            dec(body(0, 0, NO_HOLDER, &[(1, 1, b"")])),
            Err(PrStateError::BadInitiatorName(0))
        );
        assert_eq!(
            dec(body(0, 0, NO_HOLDER, &[(1, 1, &[0xff, 0xfe])])),
            Err(PrStateError::BadInitiatorName(0))
        );
        assert_eq!(
            dec(body(0, 0, NO_HOLDER, &[(1, 1, &[b'x'; 224])])),
            Err(PrStateError::BadInitiatorName(0))
        );
        assert_eq!(
            dec(body(0, 0, NO_HOLDER, &[(1, 1, n), (2, 1, n)])),
            Err(PrStateError::DuplicateNexus(1))
        );
        // Different sessions of one initiator are different nexuses.
        assert!(dec(body(0, 0, NO_HOLDER, &[(1, 1, n), (2, 2, n)])).is_ok());
    }

    #[test]
    fn decode_rejects_holders_that_do_not_fit() {
        let dec = |code, holder, regs: &[(u64, u64, &[u8])]| {
            PrState::decode(&seal(1, 0, &body(0, code, holder, regs)))
        };
        let one: &[(u64, u64, &[u8])] = &[(1, 1, b"iqn")];
        let bad = |code, holder, count| PrStateError::BadHolder {
            holder,
            code,
            count,
        };
        assert_eq!(
            dec(0, 0, one),
            Err(bad(0, 0, 1)),
            "a holder without a reservation"
        );
        assert_eq!(
            dec(1, NO_HOLDER, one),
            Err(bad(1, NO_HOLDER, 1)),
            "no holder"
        );
        assert_eq!(dec(1, 1, one), Err(bad(1, 1, 1)), "past the registrations");
        assert_eq!(
            dec(7, 0, one),
            Err(bad(7, 0, 1)),
            "a holder for all registrants"
        );
        assert_eq!(
            dec(7, NO_HOLDER, &[]),
            Err(bad(7, NO_HOLDER, 0)),
            "nobody registered"
        );
        assert!(dec(1, 0, one).is_ok());
        assert!(dec(7, NO_HOLDER, one).is_ok());
    }

    // ---- properties ----

    fn nexus_strategy() -> impl Strategy<Value = Nexus> {
        prop_oneof![
            Just(a()),
            Just(Nexus::new(a().initiator, 9)),
            Just(b()),
            Just(c()),
        ]
    }

    fn kind_strategy() -> impl Strategy<Value = ReservationType> {
        proptest::sample::select(ALL_TYPES.to_vec())
    }

    fn action_strategy() -> impl Strategy<Value = PrOut> {
        // Few keys, so that keys collide and checks pass often.
        let key = || 0u64..4;
        let to = proptest::sample::select(vec![
            a().initiator,
            b().initiator,
            "iqn.z".to_string(),
            String::new(),
        ]);
        prop_oneof![
            (key(), key()).prop_map(|(key, new_key)| PrOut::Register { key, new_key }),
            key().prop_map(|new_key| PrOut::RegisterIgnoreExisting { new_key }),
            (key(), kind_strategy()).prop_map(|(key, kind)| PrOut::Reserve { key, kind }),
            (key(), kind_strategy()).prop_map(|(key, kind)| PrOut::Release { key, kind }),
            key().prop_map(|key| PrOut::Clear { key }),
            (key(), key(), kind_strategy(), any::<bool>()).prop_map(
                |(key, victim, kind, abort)| PrOut::Preempt {
                    key,
                    victim,
                    kind,
                    abort
                }
            ),
            (key(), key(), to).prop_map(|(key, new_key, to_initiator)| {
                PrOut::RegisterAndMove {
                    key,
                    new_key,
                    to_initiator,
                }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_reachable_state_round_trips(
            preempt_and_abort in any::<bool>(),
            steps in proptest::collection::vec((nexus_strategy(), action_strategy()), 0..40),
        ) {
            let mut s = PrState::new(preempt_and_abort);
            for (n, action) in &steps {
                let before = s.clone();
                match s.apply(n, action) {
                    Err(_) => prop_assert_eq!(&s, &before),
                    Ok(()) => {
                        let counts = !matches!(action, PrOut::Reserve { .. } | PrOut::Release { .. });
                        prop_assert_eq!(
                            s.generation(),
                            before.generation() + u32::from(counts),
                            "{:?}", action
                        );
                        if let Some(h) = s.read_reservation() {
                            prop_assert!(s.registrations().any(|(m, _)| s.holds(m)), "{:?}", h);
                        }
                        if let PrOut::Preempt { victim, .. } = action {
                            prop_assert!(s.registrations().all(|(m, k)| m == n || k != *victim));
                        }
                    }
                }
                let encoded = s.encode();
                prop_assert_eq!(PrState::decode(&encoded), Ok(s.clone()));
                for (n, _) in s.registrations() {
                    prop_assert!(!s.holds(n) || (s.may_write(n) && s.may_read(n)));
                }
            }
        }

        #[test]
        fn decode_of_any_bytes_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = PrState::decode(&bytes);
        }

        #[test]
        fn decode_of_any_sealed_body_does_not_panic_and_is_exact(
            flags in 0u16..4,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let sealed = seal(1, flags, &body);
            if let Ok(s) = PrState::decode(&sealed) {
                prop_assert_eq!(s.encode(), sealed);
            }
        }

        #[test]
        fn decode_of_mutated_encodings_does_not_panic(
            steps in proptest::collection::vec((nexus_strategy(), action_strategy()), 0..12),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut s = PrState::default();
            for (n, action) in &steps {
                let _ = s.apply(n, action);
            }
            let encoded = s.encode();
            // Mutate the body and re-seal, so that the checksum does not hide the parser.
            let mut body = encoded[HEADER_LEN..encoded.len() - CHECKSUM_LEN].to_vec();
            let i = at.index(body.len());
            body[i] = byte;
            body.truncate(cut.index(body.len() + 1));
            let sealed = seal(1, 0, &body);
            if let Ok(d) = PrState::decode(&sealed) {
                prop_assert_eq!(d.encode(), sealed);
            }
        }
    }
}
