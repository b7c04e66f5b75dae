#![no_main]
libfuzzer_sys::fuzz_target!(|ops: Vec<natrix_fuzz::agent::Op>| natrix_fuzz::agent::run_ops(&ops));
