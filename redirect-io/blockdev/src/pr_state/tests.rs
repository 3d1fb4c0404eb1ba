//! Unit tests of the rules: what each PERSISTENT RESERVE OUT does and who may read and
//! write. The encoding's tests are in `codec.rs`.

use super::*;
use ReservationType::*;

pub(super) const ALL_TYPES: [ReservationType; 6] = [
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
];

pub(super) fn a() -> Nexus {
    Nexus::new("iqn.2026-01.test:a", 1)
}
pub(super) fn b() -> Nexus {
    Nexus::new("iqn.2026-01.test:b", 2)
}
pub(super) fn c() -> Nexus {
    Nexus::new("iqn.2026-01.test:c", 3)
}

pub(super) fn reg(key: PrKey) -> PrOut {
    PrOut::Register {
        key: 0,
        new_key: key,
    }
}
pub(super) fn reserve(key: PrKey, kind: ReservationType) -> PrOut {
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
pub(super) fn two_registered() -> PrState {
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
        Some(WriteExclusiveAllRegistrants)
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
            kind: Some(WriteExclusive)
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
            kind: Some(WriteExclusiveRegistrantsOnly)
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
        Some(WriteExclusiveRegistrantsOnly)
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
        Some(WriteExclusiveRegistrantsOnly)
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
        Some(WriteExclusiveAllRegistrants)
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
    assert_eq!(s.read_reservation().unwrap().kind, Some(ExclusiveAccess));
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
        unregister: true,
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
            kind: Some(WriteExclusiveRegistrantsOnly)
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
        unregister: true,
    };
    s.apply(&a(), &mv).unwrap();
    let z = Nexus::new("iqn.z", 0);
    assert!(s.holds(&z));
    assert_eq!(s.read_keys().keys, vec![0xB, 0xCC]);
}

#[test]
fn register_and_move_without_unreg_keeps_the_mover_registered() {
    let mut s = two_registered();
    s.apply(&a(), &reserve(0xA, WriteExclusiveRegistrantsOnly))
        .unwrap();
    let mv = PrOut::RegisterAndMove {
        key: 0xA,
        new_key: 0xB,
        to_initiator: b().initiator,
        unregister: false,
    };
    s.apply(&a(), &mv).unwrap();
    assert!(s.holds(&b()));
    assert_eq!(s.key_of(&a()), Some(0xA), "the mover stays registered");
    assert!(s.may_write(&a()), "and may write under Registrants Only");
    // The new holder re-establishes the reservation by preempting its own key (as
    // it must on tgtd, which moves the reservation without its type).
    s.apply(&b(), &preempt(0xB, 0xB, WriteExclusiveRegistrantsOnly))
        .unwrap();
    assert!(s.holds(&b()));
    assert_eq!(s.read_keys().keys, vec![0xA, 0xB]);
}

#[test]
fn register_and_move_refusals() {
    let mv = |key, new_key, to: &str| PrOut::RegisterAndMove {
        key,
        new_key,
        to_initiator: to.into(),
        unregister: true,
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
            unregister: true,
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
