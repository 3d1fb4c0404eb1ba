//! Fuzz target: the inode decoder rejects bad input with an error and never panics;
//! what it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = metadata::inode::Inode::decode(data) {
        let again = decoded.encode();
        assert_eq!(
            metadata::inode::Inode::decode(&again).ok().map(|d| d.encode().to_vec()),
            Some(again.to_vec())
        );
    }
});
