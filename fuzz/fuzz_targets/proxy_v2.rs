//! Any datagram either parses as a PROXY v2 header or is refused with a reason: never a
//! panic; the payload is always the tail of the input itself; the TLVs it hands back tile
//! exactly the bytes it validated; and addresses it reads are written back to a header that
//! parses to the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmesh_core::proxy_v2::{MAX_HEADER, parse, write};

fuzz_target!(|data: &[u8]| {
    let Ok((header, payload)) = parse(data) else {
        return;
    };
    assert!(data.len() >= payload.len());
    let tail = &data[data.len() - payload.len()..];
    assert!(std::ptr::eq(tail.as_ptr(), payload.as_ptr()));
    assert!(data.len() - payload.len() <= MAX_HEADER);
    let framed: usize = header.tlvs.iter().map(|t| 3 + t.value.len()).sum();
    assert_eq!(framed, header.tlvs.as_bytes().len());
    if let Some(addrs) = header.addrs {
        let mut buf = [0; MAX_HEADER];
        let n = write(&addrs, &mut buf).expect("MAX_HEADER holds any header we write");
        let (again, rest) = parse(&buf[..n]).expect("a written header parses");
        assert_eq!(again.addrs, Some(addrs));
        assert!(rest.is_empty());
    }
});
