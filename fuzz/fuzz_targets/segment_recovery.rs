#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| felix_log::fuzzing::segment_recovery(data));
