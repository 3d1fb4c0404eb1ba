//! Fuzz target: the cluster region's entry decoders (coordinator record, heartbeat
//! slot) reject bad input with an error and never panic; what they accept re-encodes
//! to the same entry.
//!
//! The first byte picks the decoder; an input whose body does not end in a valid hash
//! is also tried sealed with a correct one, so that the fuzzer reaches the field
//! checks behind the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockmgr::cluster_region::{CoordinatorRecord, HeartbeatSlot, seal_for_fuzzing};

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    for input in [body.to_vec(), seal_for_fuzzing(body)] {
        if which % 2 == 0 {
            if let Ok(Some(r)) = CoordinatorRecord::decode(&input) {
                assert_eq!(CoordinatorRecord::decode(&r.encode()).unwrap(), Some(r));
            }
        } else if let Ok(Some(s)) = HeartbeatSlot::decode(&input) {
            assert_eq!(HeartbeatSlot::decode(&s.encode()).unwrap(), Some(s));
        }
    }
});
