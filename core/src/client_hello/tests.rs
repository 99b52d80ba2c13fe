use super::*;
use proptest::prelude::*;
use std::sync::Arc;

/// A real ClientHello, as rustls writes it, with the given ALPN protocols and SNI.
fn rustls_hello(alpn: &[&[u8]], sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Re-frames a single-record hello into records carrying `size` handshake bytes each.
fn fragment(hello: &[u8], size: usize) -> Vec<u8> {
    let body = &hello[5..];
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn parsed(input: &[u8]) -> Parsed<'_> {
    // A leaked scratch keeps the borrow simple in tests.
    let scratch: &'static mut Vec<u8> = Box::leak(Box::default());
    parse(input, scratch)
}

#[test]
fn mesh_alpn_and_sni_are_read_from_a_real_hello() {
    let bytes = rustls_hello(&[b"h2", b"ringmesh"], "web.example.com");
    let Parsed::Hello(h) = parsed(&bytes) else {
        panic!("{:?}", parsed(&bytes))
    };
    assert!(h.offers(b"ringmesh"));
    assert!(h.offers(b"h2"));
    assert!(!h.offers(b"ringmes"));
    assert_eq!(h.alpn().collect::<Vec<_>>(), [&b"h2"[..], b"ringmesh"]);
    assert_eq!(h.sni, Some("web.example.com"));
    assert!(h.has_alpn);
}

#[test]
fn a_hello_without_alpn_is_other_tls() {
    let bytes = rustls_hello(&[], "db.internal");
    let Parsed::Hello(h) = parsed(&bytes) else {
        panic!()
    };
    assert!(!h.has_alpn);
    assert_eq!(h.alpn().count(), 0);
    assert_eq!(h.sni, Some("db.internal"));
}

#[test]
fn every_prefix_is_incomplete() {
    let bytes = rustls_hello(&[b"ringmesh"], "a.b");
    for k in 0..bytes.len() {
        match parsed(&bytes[..k]) {
            Parsed::Incomplete { need } => assert!(need >= 1 && k + need <= bytes.len(), "{k}"),
            other => panic!("prefix {k}: {other:?}"),
        }
    }
    // Bytes after the hello (the client's next flight) do not matter.
    let mut more = bytes.clone();
    more.extend_from_slice(&[0x17; 100]);
    assert!(matches!(parsed(&more), Parsed::Hello(_)));
}

#[test]
fn a_hello_split_across_records_is_reassembled() {
    let bytes = rustls_hello(&[b"ringmesh"], "split.example");
    for size in [1, 2, 3, 4, 5, 17, 100, 511] {
        let framed = fragment(&bytes, size);
        match parsed(&framed) {
            Parsed::Hello(h) => {
                assert!(h.offers(b"ringmesh"), "size {size}");
                assert_eq!(h.sni, Some("split.example"));
            }
            other => panic!("size {size}: {other:?}"),
        }
        for k in [0, 1, 5, 6, framed.len() / 2, framed.len() - 1] {
            assert!(
                matches!(parsed(&framed[..k]), Parsed::Incomplete { .. }),
                "size {size} prefix {k}"
            );
        }
    }
    let mut scratch = Vec::new();
    let framed = fragment(&bytes, 7);
    assert!(matches!(parse(&framed, &mut scratch), Parsed::Hello(_)));
    assert!(scratch.len() <= 4 + MAX_CLIENT_HELLO);
}

#[test]
fn plaintext_is_not_tls() {
    for text in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"PRI * HTTP/2.0",
        b"\x00",
        b"SSH-2.0-",
    ] {
        assert_eq!(parsed(text), Parsed::NotTls);
    }
}

#[test]
fn malformed_starts_are_invalid() {
    // Record version 2.
    assert_eq!(
        parsed(&[0x16, 2, 0, 0, 5, 1, 0, 0, 1, 0]),
        Parsed::Invalid(HelloError::RecordVersion)
    );
    // Empty and oversized records.
    assert_eq!(
        parsed(&[0x16, 3, 1, 0, 0]),
        Parsed::Invalid(HelloError::RecordLength)
    );
    assert_eq!(
        parsed(&[0x16, 3, 1, 0x40, 0x01]),
        Parsed::Invalid(HelloError::RecordLength)
    );
    // A ServerHello first.
    assert_eq!(
        parsed(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0]),
        Parsed::Invalid(HelloError::NotClientHello)
    );
    // A ClientHello that claims 1 MiB.
    assert_eq!(
        parsed(&[0x16, 3, 1, 0, 4, 1, 0x10, 0, 0]),
        Parsed::Invalid(HelloError::TooLarge)
    );
    // A complete record whose ClientHello body is too short to hold its fields.
    assert_eq!(
        parsed(&[0x16, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3]),
        Parsed::Invalid(HelloError::Malformed)
    );
    // An alert in the middle of a fragmented hello.
    let bytes = rustls_hello(&[], "x.y");
    let mut framed = fragment(&bytes, 50);
    framed.splice(55..55, [0x15, 3, 3, 0, 2, 2, 40]);
    assert_eq!(parsed(&framed), Parsed::Invalid(HelloError::Interleaved));
}

#[test]
fn extensions_that_overrun_are_malformed() {
    let bytes = rustls_hello(&[b"ringmesh"], "o.v");
    // Lengthen the extensions block by one: its last extension now overruns.
    let mut bad = bytes.clone();
    // Locate the extensions length: after version, random, session id, suites, compression.
    let body = 5 + 4;
    let sid = usize::from(bad[body + 34]);
    let suites_at = body + 35 + sid;
    let suites = usize::from(u16::from_be_bytes([bad[suites_at], bad[suites_at + 1]]));
    let comp_at = suites_at + 2 + suites;
    let ext_at = comp_at + 1 + usize::from(bad[comp_at]);
    let ext_len = u16::from_be_bytes([bad[ext_at], bad[ext_at + 1]]);
    bad[ext_at..ext_at + 2].copy_from_slice(&(ext_len + 1).to_be_bytes());
    assert_eq!(parsed(&bad), Parsed::Invalid(HelloError::Malformed));
}

#[test]
fn the_input_bound_holds_for_tiny_records() {
    // 1-byte records of a maximal hello would need far more than MAX_INPUT bytes.
    let mut input = Vec::new();
    let mut first = vec![1u8, 0, 0x40, 0]; // ClientHello of 16 KiB
    first.resize(4 + 16 * 1024, 0);
    for b in first.iter() {
        input.extend_from_slice(&[0x16, 3, 1, 0, 1, *b]);
        if input.len() > MAX_INPUT + 12 {
            break;
        }
    }
    assert_eq!(parsed(&input), Parsed::Invalid(HelloError::TooLarge));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut scratch = Vec::new();
        let _ = parse(&data, &mut scratch);
        prop_assert!(scratch.len() <= 4 + MAX_CLIENT_HELLO);
    }

    #[test]
    fn mutated_hellos_never_panic(
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = rustls_hello(&[b"h2", b"ringmesh"], "m.example");
        let i = at.index(bytes.len());
        bytes[i] = value;
        let n = cut.index(bytes.len() + 1);
        let mut scratch = Vec::new();
        let _ = parse(&bytes[..n], &mut scratch);
        let _ = parse(&fragment(&bytes, 33), &mut scratch);
    }
}
