#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| felix_client::fuzzing::frame_decode(data));
