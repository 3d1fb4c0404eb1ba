//! Fuzz target: the persistent reservation state decoder rejects bad input with an
//! error and never panics; what it accepts re-encodes to exactly the same bytes.
//!
//! An input that starts with the magic is decoded as it is. Any other input is one
//! flags byte and a body, sealed here with a correct header and checksum first, so
//! that the fuzzer reaches the body parser instead of stopping at the checksum.
#![no_main]

use blockdev::PrState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = if data.starts_with(&PrState::MAGIC) {
        data.to_vec()
    } else {
        let (flags, body) = data.split_first().map_or((0, data), |(f, b)| (*f, b));
        let mut sealed = PrState::MAGIC.to_vec();
        sealed.extend_from_slice(&PrState::VERSION.to_le_bytes());
        sealed.extend_from_slice(&u16::from(flags).to_le_bytes());
        sealed.extend_from_slice(&(body.len() as u32).to_le_bytes());
        sealed.extend_from_slice(body);
        let sum = blake3::hash(&sealed);
        sealed.extend_from_slice(sum.as_bytes());
        sealed
    };
    if let Ok(decoded) = PrState::decode(&input) {
        assert_eq!(decoded.encode(), input);
    }
});
