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
//! The byte-exact encoding ([`PrState::encode`], [`PrState::decode`]) is documented in
//! [`codec`].

use std::fmt;

use crate::{PrHolder, PrKey, PrKeys, PrOut, PrRefusal, ReservationType};

mod codec;
#[cfg(test)]
mod tests;

pub use codec::PrStateError;

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

impl PrState {
    /// The longest initiator name, in bytes: the longest iSCSI name (RFC 3720).
    pub const MAX_INITIATOR_NAME: usize = 223;
    /// The most registrations a state holds; one more is refused as ILLEGAL REQUEST
    /// (INSUFFICIENT REGISTRATION RESOURCES in SPC-3).
    pub const MAX_REGISTRATIONS: usize = 4096;

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
            kind: Some(r.kind()),
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
                unregister,
            } => self.register_and_move(nexus, *key, *new_key, to_initiator, *unregister),
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
        unregister: bool,
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
                if !unregister && self.registrations.len() >= PrState::MAX_REGISTRATIONS {
                    return Err(PrRefusal::Invalid);
                }
                let n = Nexus::new(to_initiator, 0);
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
        if unregister {
            self.registrations.remove(mover);
        }
        self.bump();
        Ok(())
    }
}

fn valid_initiator_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= PrState::MAX_INITIATOR_NAME
}
