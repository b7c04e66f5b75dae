#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| natrix_fuzz::decode_natrix(data));
