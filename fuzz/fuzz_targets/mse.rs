//! Fuzz target `mse`: the body is `dropseed_fuzz::mse_handshake` in
//! ../targets.rs, shared with the corpus replay in tests/fuzz_corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dropseed_fuzz::mse_handshake(data));
