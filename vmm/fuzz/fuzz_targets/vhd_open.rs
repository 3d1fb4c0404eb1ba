//! Fuzz target: a VHD file from an untrusted source is refused with an error or opens,
//! reads, takes a write and reopens with it; nothing panics and nothing allocates
//! without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::vhd::exercise::open_and_exercise(data);
});
