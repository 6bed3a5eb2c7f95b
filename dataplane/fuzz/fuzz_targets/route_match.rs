#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_dataplane::fuzzing::route_match(data));
