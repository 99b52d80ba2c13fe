//! Any document either parses and validates or comes back as errors; it never panics, and
//! a config that validates survives a round trip through JSON unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_core::config::{Config, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [Format::Yaml, Format::Json] {
        if let Ok(c) = Config::from_str(text, format) {
            let json = serde_json::to_string(c.raw()).expect("a valid config serialises");
            let back = Config::from_str(&json, Format::Json).expect("its JSON validates");
            assert_eq!(back.raw(), c.raw());
        }
    }
});
