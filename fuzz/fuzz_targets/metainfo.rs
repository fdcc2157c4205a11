//! Fuzz target `metainfo`: the body is `dropseed_fuzz::metainfo` in ../targets.rs,
//! shared with the corpus replay in tests/fuzz_corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dropseed_fuzz::metainfo(data));
