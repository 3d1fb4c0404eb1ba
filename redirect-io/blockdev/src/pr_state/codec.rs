//! The byte-exact encoding of a [`PrState`], as the image-file emulation keeps it in
//! its side file.
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

use super::{Nexus, PrState, Registration, Reservation, valid_initiator_name};
use crate::ReservationType;

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
    /// The longest body an encoding has.
    pub const MAX_BODY_LEN: usize = B_REGISTRATIONS
        + PrState::MAX_REGISTRATIONS * (REGISTRATION_FIXED_LEN + PrState::MAX_INITIATOR_NAME);

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
    use crate::pr_state::tests::{ALL_TYPES, a, b, c, reg, reserve, two_registered};
    use crate::{PrOut, ReservationType::*};
    use proptest::prelude::*;

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
            (key(), key(), to, any::<bool>()).prop_map(
                |(key, new_key, to_initiator, unregister)| PrOut::RegisterAndMove {
                    key,
                    new_key,
                    to_initiator,
                    unregister,
                }
            ),
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
