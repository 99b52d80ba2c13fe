//! Parsing never panics, and whatever parses prints back as the same string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_core::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.to_string(), text);
        assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id));
    }
});
