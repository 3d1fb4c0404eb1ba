//! Fuzz target: the control socket's request decoder (one JSON line) rejects bad input
//! with an error and never panics; what it accepts encodes and decodes to the same
//! request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockmgr::control::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Request>(data) {
        let again = serde_json::to_vec(&r).expect("a request encodes");
        assert_eq!(serde_json::from_slice::<Request>(&again).unwrap(), r);
    }
});
