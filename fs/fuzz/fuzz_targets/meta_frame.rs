//! Fuzz target: the metadata service's frame decoders (a node's request, the
//! coordinator's response) reject bad input with an error and never panic; what they
//! accept encodes and decodes to the same frame.
#![no_main]

use csvfs::cluster::wire::{MetaRequest, MetaResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = MetaRequest::decode(data) {
        assert_eq!(MetaRequest::decode(&r.encode()).unwrap(), r);
    }
    if let Ok(r) = MetaResponse::decode(data) {
        assert_eq!(MetaResponse::decode(&r.encode()).unwrap(), r);
    }
});
