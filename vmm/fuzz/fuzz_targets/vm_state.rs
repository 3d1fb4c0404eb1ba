//! Fuzz target: saved VM state from a file or a migration peer is refused with an
//! error, or decodes to a state that encodes back to the same bytes; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::machine::state_codec::check_untrusted(data);
});
