#![no_main]
libfuzzer_sys::fuzz_target!(|input: natrix_fuzz::agent::AfterSetup| {
    natrix_fuzz::agent::after_setup(&input)
});
