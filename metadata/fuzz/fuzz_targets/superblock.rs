//! Fuzz target: the superblock decoder rejects bad input with an error and never panics;
//! what it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = metadata::superblock::Superblock::decode(data) {
        let again = decoded.encode();
        assert_eq!(
            metadata::superblock::Superblock::decode(&again).ok().map(|d| d.encode().to_vec()),
            Some(again.to_vec())
        );
    }
});
