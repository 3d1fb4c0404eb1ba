//! Fuzz target: the block service's decoders reject bad frames with an error and never
//! panic; a frame they accept re-encodes to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    redirect_io::wire::check_round_trip(data);
});
