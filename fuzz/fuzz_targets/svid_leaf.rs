//! Arbitrary bytes as a peer's leaf certificate: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringmesh_core::svid::inspect_leaf(data);
});
