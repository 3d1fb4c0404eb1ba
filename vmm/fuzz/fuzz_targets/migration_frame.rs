//! Fuzz target: a live-migration frame from a peer is refused with an error, or
//! decodes to a message that encodes back to the same bytes; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::migration::wire::check_untrusted(data);
});
