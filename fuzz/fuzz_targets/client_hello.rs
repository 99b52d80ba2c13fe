//! Any bytes at the start of a connection either parse as a ClientHello, ask for more, or are
//! refused: never a panic, never more scratch than the bound, and a parse of a prefix never
//! claims a complete hello that the whole input contradicts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_core::client_hello::{MAX_CLIENT_HELLO, Parsed, parse};
use ringmesh_core::decide::Detected;

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    let whole = parse(data, &mut scratch);
    let complete = matches!(whole, Parsed::Hello(_));
    let _ = Detected::from_parse(&whole);
    assert!(scratch.len() <= 4 + MAX_CLIENT_HELLO);
    if complete {
        // Appending bytes after a complete hello cannot change that it is complete.
        let mut more = data.to_vec();
        more.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
        let mut scratch = Vec::new();
        assert!(matches!(parse(&more, &mut scratch), Parsed::Hello(_)));
    }
});
