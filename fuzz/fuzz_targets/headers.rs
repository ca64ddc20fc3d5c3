#![no_main]
//! Property: see `spockfs_props::check_headers` (the same function the stable
//! tests in tests/props/tests/corpus.rs run over fuzz/corpus/headers/).
libfuzzer_sys::fuzz_target!(|data: &[u8]| spockfs_props::check_headers(data));
