//! Fuzz target: the frame decoders of the metadata service (a node's request and
//! batch, the coordinator's response and answers) and of lease recalls reject bad input with an error and
//! never panic; what they accept encodes and decodes to the same frame.
#![no_main]

use csvfs::cluster::wire::{
    MetaAnswers, MetaBatch, MetaRequest, MetaResponse, RecallDone, RecallRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = MetaRequest::decode(data) {
        assert_eq!(MetaRequest::decode(&r.encode()).unwrap(), r);
    }
    if let Ok(r) = MetaResponse::decode(data) {
        assert_eq!(MetaResponse::decode(&r.encode()).unwrap(), r);
    }
    if let Ok(r) = MetaBatch::decode_checked(data) {
        assert_eq!(MetaBatch::decode_checked(&r.encode()).unwrap(), r);
    }
    if let Ok(r) = MetaAnswers::decode(data) {
        assert_eq!(MetaAnswers::decode(&r.encode()).unwrap(), r);
    }
    if let Ok(r) = RecallRequest::decode(data) {
        assert_eq!(RecallRequest::decode(&r.encode()).unwrap(), r);
    }
    if let Ok(r) = RecallDone::decode(data) {
        assert_eq!(RecallDone::decode(&r.encode()).unwrap(), r);
    }
});
