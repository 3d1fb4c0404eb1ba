//! Fuzz target: `blockdev::iscsi::fuzz_inputs::scsi_data` (what a target sends, decoded):
//! errors for bad input, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blockdev::iscsi::fuzz_inputs::scsi_data(data);
});
