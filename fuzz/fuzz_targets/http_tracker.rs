//! Fuzz target `http_tracker`: the body is `dropseed_fuzz::http_tracker` in ../targets.rs,
//! shared with the corpus replay in tests/fuzz_corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dropseed_fuzz::http_tracker(data));
