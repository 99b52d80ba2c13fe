use super::*;
use proptest::prelude::*;

const V4_DGRAM: u8 = 0x12;
const V6_STREAM: u8 = 0x21;
const PROXY: u8 = 0x21;
const LOCAL: u8 = 0x20;

/// A header from its parts: the signature, bytes 13 and 14, `len` and the block after it
/// (which may disagree with `len`).
fn raw(ver_cmd: u8, fam: u8, len: u16, block: &[u8]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[ver_cmd, fam]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// A PROXY UDP/IPv4 header from 192.0.2.1:1234 to 198.51.100.7:53 with `tail` after the
/// addresses, counted in the length.
fn v4_with(tail: &[u8]) -> Vec<u8> {
    let mut block = vec![192, 0, 2, 1, 198, 51, 100, 7, 0x04, 0xd2, 0, 53];
    block.extend_from_slice(tail);
    raw(PROXY, V4_DGRAM, block.len() as u16, &block)
}

fn v4_addrs() -> Addrs {
    Addrs {
        transport: Transport::Datagram,
        source: "192.0.2.1:1234".parse().unwrap(),
        destination: "198.51.100.7:53".parse().unwrap(),
    }
}

fn err(datagram: &[u8]) -> Malformed {
    parse(datagram).expect_err("should be refused")
}

/// Whether `inner` is a suffix of `outer` in memory, not merely equal to one.
fn is_suffix(outer: &[u8], inner: &[u8]) -> bool {
    outer.len() >= inner.len()
        && std::ptr::eq(outer[outer.len() - inner.len()..].as_ptr(), inner.as_ptr())
}

#[test]
fn v4_header_parses() {
    let mut datagram = v4_with(&[]);
    assert_eq!(datagram.len(), V4_LEN);
    datagram.extend_from_slice(b"payload");
    let (header, payload) = parse(&datagram).unwrap();
    assert_eq!(header.command, Command::Proxy);
    assert_eq!(header.addrs, Some(v4_addrs()));
    assert!(header.tlvs.is_empty());
    assert_eq!(payload, b"payload");
    assert!(is_suffix(&datagram, payload));
    assert_eq!(to_vec(&v4_addrs()), datagram[..V4_LEN]);
}

#[test]
fn header_without_payload_parses() {
    let header = to_vec(&v4_addrs());
    let (parsed, payload) = parse(&header).unwrap();
    assert_eq!(parsed.addrs, Some(v4_addrs()));
    assert!(payload.is_empty());
    assert!(is_suffix(&header, payload));
}

#[test]
fn largest_datagram_parses_with_its_payload() {
    let mut datagram = to_vec(&v4_addrs());
    datagram.resize(65535, 0xa5);
    let (header, payload) = parse(&datagram).unwrap();
    assert_eq!(header.addrs, Some(v4_addrs()));
    assert_eq!(payload.len(), 65535 - V4_LEN);
    assert!(payload.iter().all(|&b| b == 0xa5));
}

#[test]
fn v6_and_mixed_families_write_the_v6_form() {
    let v6 = Addrs {
        transport: Transport::Stream,
        source: "[2001:db8::1]:443".parse().unwrap(),
        destination: "[2001:db8::2]:8443".parse().unwrap(),
    };
    let bytes = to_vec(&v6);
    assert_eq!(bytes.len(), V6_LEN);
    assert_eq!(bytes[13], V6_STREAM);
    assert_eq!(parse(&bytes).unwrap().0.addrs, Some(v6));

    let mixed = Addrs {
        transport: Transport::Datagram,
        source: "192.0.2.1:1234".parse().unwrap(),
        destination: "[2001:db8::2]:53".parse().unwrap(),
    };
    let bytes = to_vec(&mixed);
    assert_eq!(bytes.len(), V6_LEN);
    let got = parse(&bytes).unwrap().0.addrs.unwrap();
    assert_eq!(got.source, "[::ffff:192.0.2.1]:1234".parse().unwrap());
    assert_eq!(got.destination, mixed.destination);
    // Swapped, the other address is the one mapped.
    let swapped = Addrs {
        source: mixed.destination,
        destination: mixed.source,
        ..mixed
    };
    let got = parse(&to_vec(&swapped)).unwrap().0.addrs.unwrap();
    assert_eq!(got.destination, "[::ffff:192.0.2.1]:1234".parse().unwrap());
}

#[test]
fn v6_flow_info_and_scope_are_not_carried() {
    let scoped = Addrs {
        transport: Transport::Datagram,
        source: SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 7, 3).into(),
        destination: SocketAddrV6::new("fe80::2".parse().unwrap(), 2, 0, 3).into(),
    };
    let got = parse(&to_vec(&scoped)).unwrap().0.addrs.unwrap();
    assert_eq!(got.source, "[fe80::1]:1".parse().unwrap());
    assert_eq!(got.destination, "[fe80::2]:2".parse().unwrap());
}

#[test]
fn write_into_a_short_buffer_writes_nothing() {
    let mut buf = [0xee; V4_LEN - 1];
    assert_eq!(
        write(&v4_addrs(), &mut buf),
        Err(BufferTooShort {
            need: V4_LEN,
            have: V4_LEN - 1
        })
    );
    assert!(buf.iter().all(|&b| b == 0xee));
    let mut buf = [0xee; 15];
    assert_eq!(
        write_local(&mut buf),
        Err(BufferTooShort { need: 16, have: 15 })
    );
    assert!(buf.iter().all(|&b| b == 0xee));
}

#[test]
fn write_leaves_the_rest_of_the_buffer_alone() {
    let mut buf = [0xee; MAX_HEADER];
    assert_eq!(write(&v4_addrs(), &mut buf), Ok(V4_LEN));
    assert!(buf[V4_LEN..].iter().all(|&b| b == 0xee));
    let (header, payload) = parse(&buf).unwrap();
    assert_eq!(header.addrs, Some(v4_addrs()));
    assert_eq!(payload.len(), MAX_HEADER - V4_LEN);
}

#[test]
fn local_header_round_trips() {
    let mut buf = [0; 16];
    assert_eq!(write_local(&mut buf), Ok(16));
    assert_eq!(buf[..], raw(LOCAL, 0, 0, &[])[..]);
    let (header, payload) = parse(&buf).unwrap();
    assert_eq!(
        header,
        Header {
            command: Command::Local,
            addrs: None,
            tlvs: Tlvs::EMPTY,
        }
    );
    assert!(payload.is_empty());
}

#[test]
fn local_skips_its_block_whatever_the_family() {
    // A LOCAL header may still carry addresses (and TLVs): they are skipped unread, and the
    // family byte is ignored, even one we would refuse under PROXY.
    for fam in [0x00, V4_DGRAM, 0x31, 0xff] {
        let mut datagram = raw(LOCAL, fam, 5, b"abcde");
        datagram.extend_from_slice(b"data");
        let (header, payload) = parse(&datagram).unwrap();
        assert_eq!(header.command, Command::Local);
        assert_eq!(header.addrs, None);
        assert!(header.tlvs.is_empty());
        assert_eq!(payload, b"data");
    }
    assert_eq!(err(&raw(LOCAL, 0, 5, b"abcd")), Malformed::Length);
    assert_eq!(err(&raw(LOCAL, 0, 217, &[0; 217])), Malformed::Length);
}

#[test]
fn proxy_unspec_has_no_addresses_and_skips_its_block() {
    let mut datagram = raw(PROXY, 0x00, 3, b"xyz");
    datagram.extend_from_slice(b"data");
    let (header, payload) = parse(&datagram).unwrap();
    assert_eq!(header.command, Command::Proxy);
    assert_eq!(header.addrs, None);
    assert!(header.tlvs.is_empty());
    assert_eq!(payload, b"data");
}

#[test]
fn tlvs_are_exposed_in_order() {
    let tlvs = [0x01, 0, 2, b'h', b'2', 0x04, 0, 0, 0x01, 0, 1, b'x'];
    let mut datagram = v4_with(&tlvs);
    datagram.push(0xff);
    let (header, payload) = parse(&datagram).unwrap();
    assert_eq!(payload, [0xff]);
    assert_eq!(header.tlvs.as_bytes(), tlvs);
    let got: Vec<_> = header.tlvs.into_iter().map(|t| (t.kind, t.value)).collect();
    assert_eq!(
        got,
        [(0x01, &b"h2"[..]), (0x04, &b""[..]), (0x01, &b"x"[..])]
    );
    assert_eq!(header.tlvs.find(0x01), Some(&b"h2"[..]));
    assert_eq!(header.tlvs.find(0x04), Some(&b""[..]));
    assert_eq!(header.tlvs.find(0x05), None);
}

#[test]
fn largest_header_is_accepted_and_one_more_byte_is_not() {
    // 12 bytes of addresses and one TLV filling the remaining 204 bytes.
    let value = [7; 216 - 12 - 3];
    let mut tlv = vec![0xee];
    tlv.extend_from_slice(&(value.len() as u16).to_be_bytes());
    tlv.extend_from_slice(&value);
    let header = v4_with(&tlv);
    assert_eq!(header.len(), MAX_HEADER);
    let (parsed, payload) = parse(&header).unwrap();
    assert_eq!(parsed.tlvs.find(0xee), Some(&value[..]));
    assert!(payload.is_empty());

    tlv[2] += 1;
    tlv.push(7);
    let mut over = v4_with(&tlv);
    over.extend_from_slice(b"payload");
    assert_eq!(err(&over), Malformed::Length);
    // The largest length field, with a datagram long enough to hold it, is still refused.
    let mut huge = raw(PROXY, V4_DGRAM, u16::MAX, &[0; 65535]);
    assert_eq!(err(&huge), Malformed::Length);
    huge[13] = 0x00;
    assert_eq!(err(&huge), Malformed::Length);
}

#[test]
fn short_datagrams_are_refused() {
    assert_eq!(err(&[]), Malformed::Short);
    let header = raw(LOCAL, 0, 0, &[]);
    for n in 0..16 {
        assert_eq!(err(&header[..n]), Malformed::Short, "{n} bytes");
    }
    // Shorter than 16 bytes is Short even when what is there is not a signature.
    assert_eq!(err(&[0; 15]), Malformed::Short);
}

#[test]
fn every_signature_byte_is_checked() {
    let good = v4_with(&[]);
    for at in 0..SIGNATURE.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= flip;
            assert_eq!(err(&bad), Malformed::Signature, "byte {at} ^ {flip:#x}");
        }
    }
    // A PROXY v1 line is not a v2 header.
    assert_eq!(
        err(b"PROXY TCP4 192.0.2.1 198.51.100.7 1234 53\r\n"),
        Malformed::Signature
    );
}

#[test]
fn other_versions_are_refused() {
    for version in [0, 1, 3, 4, 15] {
        let mut bad = v4_with(&[]);
        bad[12] = (version << 4) | 1;
        assert_eq!(err(&bad), Malformed::Version, "version {version}");
    }
}

#[test]
fn other_commands_are_refused() {
    for command in 2..=15 {
        let mut bad = v4_with(&[]);
        bad[12] = 0x20 | command;
        assert_eq!(err(&bad), Malformed::Command, "command {command}");
    }
}

#[test]
fn other_families_are_refused() {
    // AF_UNIX (3), with room for its 216-byte block, and the unassigned 4..15.
    for family in 3..=15 {
        for proto in [1, 2] {
            let bad = raw(PROXY, (family << 4) | proto, 216, &[0; 216]);
            assert_eq!(err(&bad), Malformed::Family, "family {family}");
        }
    }
}

#[test]
fn other_protocols_are_refused() {
    for family in [0, 1, 2] {
        for proto in 3..=15 {
            let bad = raw(PROXY, (family << 4) | proto, 36, &[0; 36]);
            assert_eq!(err(&bad), Malformed::Family, "{family:x}{proto:x}");
        }
    }
}

#[test]
fn families_and_transports_must_agree() {
    // An address family needs a transport; UNSPEC must not have one.
    for fam in [0x10, 0x20, 0x01, 0x02] {
        let bad = raw(PROXY, fam, 36, &[0; 36]);
        assert_eq!(err(&bad), Malformed::Family, "{fam:#04x}");
    }
}

#[test]
fn lengths_out_of_range_are_refused() {
    // Past the end of the datagram.
    let good = v4_with(&[]);
    for cut in 1..=12 {
        assert_eq!(err(&good[..good.len() - cut]), Malformed::Length);
    }
    let mut bad = good.clone();
    bad[15] += 1;
    assert_eq!(err(&bad), Malformed::Length);
    // Shorter than the family's addresses, even with the bytes there.
    let bad = raw(PROXY, V4_DGRAM, 11, &[0; 12]);
    assert_eq!(err(&bad), Malformed::Length);
    let bad = raw(PROXY, V6_STREAM, 35, &[0; 36]);
    assert_eq!(err(&bad), Malformed::Length);
    let bad = raw(PROXY, 0x22, 12, &[0; 36]);
    assert_eq!(err(&bad), Malformed::Length);
    // Exactly the addresses is fine.
    assert!(parse(&raw(PROXY, 0x11, 12, &[0; 12])).is_ok());
    assert!(parse(&raw(PROXY, 0x22, 36, &[0; 36])).is_ok());
}

#[test]
fn tlvs_must_tile_the_rest_of_the_header() {
    // A partial TLV header.
    assert_eq!(err(&v4_with(&[0x01])), Malformed::Tlv);
    assert_eq!(err(&v4_with(&[0x01, 0])), Malformed::Tlv);
    assert_eq!(err(&v4_with(&[0x04, 0, 0, 0x01])), Malformed::Tlv);
    // A value past the declared length, even when the datagram has the bytes.
    let mut bad = v4_with(&[0x01, 0, 3, b'a', b'b']);
    assert_eq!(err(&bad), Malformed::Tlv);
    bad.push(b'c');
    assert_eq!(err(&bad), Malformed::Tlv);
    assert_eq!(err(&v4_with(&[0x01, 0xff, 0xff])), Malformed::Tlv);
}

#[test]
fn malformed_reasons_are_listed_and_named_once() {
    fn position(m: Malformed) -> usize {
        // Exhaustive, so a new variant fails to compile until it is placed in ALL.
        match m {
            Malformed::Short => 0,
            Malformed::Signature => 1,
            Malformed::Version => 2,
            Malformed::Command => 3,
            Malformed::Family => 4,
            Malformed::Length => 5,
            Malformed::Tlv => 6,
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, m) in Malformed::ALL.into_iter().enumerate() {
        assert_eq!(position(m), i);
        let name = m.as_str();
        assert!(names.insert(name), "{name} twice");
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{name} is not snake_case"
        );
        assert!(!m.to_string().is_empty());
        let _: &dyn std::error::Error = &m;
    }
}

fn addrs() -> impl Strategy<Value = Addrs> {
    let transport = prop_oneof![Just(Transport::Stream), Just(Transport::Datagram)];
    let v4 = (any::<[u8; 4]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port)));
    let v6 = (any::<[u8; 16]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port)));
    let pair = prop_oneof![(v4.clone(), v4), (v6.clone(), v6)];
    (transport, pair).prop_map(|(transport, (source, destination))| Addrs {
        transport,
        source,
        destination,
    })
}

/// TLVs that fit in the room IPv6 addresses leave (180 bytes).
fn tlv_list() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    prop::collection::vec(
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)),
        0..5,
    )
    .prop_filter("fits in MAX_HEADER", |tlvs| {
        tlvs.iter().map(|(_, v)| 3 + v.len()).sum::<usize>() <= MAX_HEADER - V6_LEN
    })
}

proptest! {
    #[test]
    fn written_headers_parse_back(
        addrs in addrs(),
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut buf = [0; MAX_HEADER + 256];
        let n = write(&addrs, &mut buf).unwrap();
        prop_assert_eq!(n, if addrs.source.is_ipv4() { V4_LEN } else { V6_LEN });
        prop_assert_eq!(&to_vec(&addrs)[..], &buf[..n]);
        // The exact length is enough.
        prop_assert_eq!(write(&addrs, &mut vec![0; n]), Ok(n));
        prop_assert!(write(&addrs, &mut vec![0; n - 1]).is_err());

        let mut datagram = buf[..n].to_vec();
        datagram.extend_from_slice(&payload);
        let (header, rest) = parse(&datagram).unwrap();
        prop_assert_eq!(header.command, Command::Proxy);
        prop_assert_eq!(header.addrs, Some(addrs));
        prop_assert!(header.tlvs.is_empty());
        prop_assert_eq!(rest, &payload[..]);
        prop_assert!(is_suffix(&datagram, rest));
    }

    #[test]
    fn headers_with_tlvs_parse_back(
        addrs in addrs(),
        tlvs in tlv_list(),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut datagram = to_vec(&addrs);
        let mut len = u16::from_be_bytes([datagram[14], datagram[15]]);
        for (kind, value) in &tlvs {
            datagram.push(*kind);
            datagram.extend_from_slice(&(value.len() as u16).to_be_bytes());
            datagram.extend_from_slice(value);
            len += 3 + value.len() as u16;
        }
        datagram[14..16].copy_from_slice(&len.to_be_bytes());
        let header_len = datagram.len();
        datagram.extend_from_slice(&payload);

        let (header, rest) = parse(&datagram).unwrap();
        prop_assert_eq!(header.addrs, Some(addrs));
        let got: Vec<_> = header.tlvs.iter().map(|t| (t.kind, t.value.to_vec())).collect();
        prop_assert_eq!(got, tlvs);
        prop_assert_eq!(rest, &payload[..]);
        // Any truncation inside the header is refused, never misread.
        for cut in 0..header_len {
            prop_assert!(parse(&datagram[..cut]).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        fixed in any::<[u8; 4]>(),
        block in prop::collection::vec(any::<u8>(), 0..300),
        signed in any::<bool>(),
    ) {
        let mut datagram = if signed { SIGNATURE.to_vec() } else { Vec::new() };
        datagram.extend_from_slice(&fixed);
        datagram.extend_from_slice(&block);
        if let Ok((header, payload)) = parse(&datagram) {
            prop_assert!(is_suffix(&datagram, payload));
            let framed: usize = header.tlvs.iter().map(|t| 3 + t.value.len()).sum();
            prop_assert_eq!(framed, header.tlvs.as_bytes().len());
            if let Some(addrs) = header.addrs {
                prop_assert_eq!(parse(&to_vec(&addrs)).unwrap().0.addrs, Some(addrs));
            }
        }
    }
}
