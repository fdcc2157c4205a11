//! Fuzz target `udp_tracker`: the body is `dropseed_fuzz::udp_tracker` in ../targets.rs,
//! shared with the corpus replay in tests/fuzz_corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dropseed_fuzz::udp_tracker(data));
