use super::*;
use proptest::prelude::*;

#[test]
fn parses_workload_ids() {
    let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
    assert_eq!(id.trust_domain(), "cluster.local");
    assert_eq!(id.path(), "/ns/default/sa/web");
    assert_eq!(
        id.segments().collect::<Vec<_>>(),
        ["ns", "default", "sa", "web"]
    );
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    let td = SpiffeId::parse("spiffe://example.org").unwrap();
    assert_eq!(td.path(), "");
}

#[test]
fn refuses_what_the_spec_refuses() {
    use SpiffeIdError::*;
    let cases = [
        ("http://td/x", Scheme),
        ("SPIFFE://td/x", Scheme),
        ("spiffe:/td/x", Scheme),
        ("spiffe:///x", EmptyTrustDomain),
        ("spiffe://", EmptyTrustDomain),
        ("spiffe://TD/x", TrustDomainChar('T')),
        ("spiffe://td:8080/x", TrustDomainChar(':')),
        ("spiffe://user@td/x", TrustDomainChar('@')),
        ("spiffe://td/", EmptySegment),
        ("spiffe://td/a//b", EmptySegment),
        ("spiffe://td/a/", EmptySegment),
        ("spiffe://td/a/./b", DotSegment),
        ("spiffe://td/a/..", DotSegment),
        ("spiffe://td/a?b=c", PathChar('?')),
        ("spiffe://td/a#frag", PathChar('#')),
        ("spiffe://td/a%20b", PathChar('%')),
    ];
    for (input, want) in cases {
        assert_eq!(SpiffeId::parse(input), Err(want), "{input}");
    }
    let long = format!("spiffe://td/{}", "a".repeat(MAX_LEN));
    assert_eq!(SpiffeId::parse(&long), Err(TooLong));
}

#[test]
fn compares_parsed_values_not_prefixes() {
    let a = SpiffeId::parse("spiffe://td/ns/a").unwrap();
    let ab = SpiffeId::parse("spiffe://td/ns/ab").unwrap();
    assert_ne!(a, ab);
    let other_td = SpiffeId::parse("spiffe://td2/ns/a").unwrap();
    assert_ne!(a, other_td);
}

#[test]
fn serde_round_trip() {
    let id: SpiffeId = serde_json::from_str("\"spiffe://td/ns/x/sa/y\"").unwrap();
    assert_eq!(
        serde_json::to_string(&id).unwrap(),
        "\"spiffe://td/ns/x/sa/y\""
    );
    assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/ns/../x\"").is_err());
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,8}".prop_filter("dot segments", |s| s != "." && s != "..")
}

proptest! {
    #[test]
    fn valid_ids_round_trip(td in "[a-z0-9][a-z0-9.-]{0,20}", segs in proptest::collection::vec(segment(), 0..5)) {
        let s = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
        let id = SpiffeId::parse(&s).unwrap();
        prop_assert_eq!(id.to_string(), s);
    }

    #[test]
    fn a_strict_prefix_never_equals(td in "[a-z]{1,8}", segs in proptest::collection::vec(segment(), 1..4), extra in "[a-z0-9]{1,4}") {
        let base = format!("spiffe://{td}/{}", segs.join("/"));
        let longer = format!("{base}{extra}");
        let deeper = format!("{base}/{extra}");
        let b = SpiffeId::parse(&base).unwrap();
        prop_assert_ne!(&b, &SpiffeId::parse(&longer).unwrap());
        prop_assert_ne!(&b, &SpiffeId::parse(&deeper).unwrap());
    }

    #[test]
    fn never_panics(s in "\\PC{0,64}") {
        let _ = SpiffeId::parse(&s);
        let _ = SpiffeId::parse(&format!("spiffe://{s}"));
    }
}
