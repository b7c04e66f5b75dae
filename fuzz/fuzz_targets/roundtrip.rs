#![no_main]
libfuzzer_sys::fuzz_target!(|m: natrix_fuzz::AnyMessage| natrix_fuzz::roundtrip(&m));
