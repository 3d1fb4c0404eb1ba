//! Fuzz target: `blockdev::iscsi::fuzz_inputs::text` (what a target sends, decoded):
//! errors for bad input, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blockdev::iscsi::fuzz_inputs::text(data);
});
