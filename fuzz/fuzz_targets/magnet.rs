//! Fuzz target `magnet`: the body is `dropseed_fuzz::magnet` in ../targets.rs,
//! shared with the corpus replay in tests/fuzz_corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dropseed_fuzz::magnet(data));
