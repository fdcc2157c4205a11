//! Fuzz target `utp`: the body is `dropseed_fuzz::utp` in ../targets.rs,
//! shared with the corpus replay in tests/fuzz_corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dropseed_fuzz::utp(data));
