use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap().der().clone();
    Ca {
        cert,
        issuer: Issuer::new(p, key),
    }
}

#[derive(Clone)]
struct Leaf {
    uris: Vec<&'static str>,
    is_ca: bool,
    usages: Vec<KeyUsagePurpose>,
    from: Duration,
    to: Duration,
}

impl Default for Leaf {
    fn default() -> Self {
        Self {
            uris: vec!["spiffe://example.org/ns/default/sa/web"],
            is_ca: false,
            usages: vec![KeyUsagePurpose::DigitalSignature],
            from: Duration::minutes(-5),
            to: Duration::hours(1),
        }
    }
}

fn leaf(ca: &Ca, l: Leaf) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = l
        .uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    p.is_ca = if l.is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    p.key_usages = l.usages;
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now + l.from;
    p.not_after = now + l.to;
    p.signed_by(&key, &ca.issuer).unwrap().der().clone()
}

fn bundles(td: &str, ca: &Ca) -> TrustBundles {
    let mut b = TrustBundles::new();
    b.set(td, vec![ca.cert.clone()]);
    b
}

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    )
}

fn check(chain: &[CertificateDer<'_>], b: &TrustBundles) -> Result<SpiffeId, SvidError> {
    verify(chain, b, now(), Role::Client)
}

#[test]
fn a_good_svid_verifies_both_ways() {
    let ca = ca("root");
    let c = leaf(&ca, Leaf::default());
    let b = bundles("example.org", &ca);
    let id = check(std::slice::from_ref(&c), &b).unwrap();
    assert_eq!(id.to_string(), "spiffe://example.org/ns/default/sa/web");
    assert_eq!(verify(&[c], &b, now(), Role::Server).unwrap(), id);
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let ca = ca("root");
    let b = bundles("example.org", &ca);
    let old = leaf(
        &ca,
        Leaf {
            from: Duration::hours(-2),
            to: Duration::hours(-1),
            ..Leaf::default()
        },
    );
    assert_eq!(check(&[old], &b), Err(SvidError::Expired));
    let future = leaf(
        &ca,
        Leaf {
            from: Duration::hours(1),
            to: Duration::hours(2),
            ..Leaf::default()
        },
    );
    assert_eq!(check(&[future], &b), Err(SvidError::NotYetValid));
}

#[test]
fn unknown_trust_domain_is_refused() {
    let ca = ca("root");
    let c = leaf(
        &ca,
        Leaf {
            uris: vec!["spiffe://other.org/ns/a/sa/b"],
            ..Leaf::default()
        },
    );
    assert_eq!(
        check(&[c], &bundles("example.org", &ca)),
        Err(SvidError::UnknownTrustDomain("other.org".into()))
    );
}

#[test]
fn another_domains_root_does_not_vouch() {
    // The right trust domain name, but the chain leads to a different CA.
    let (ours, theirs) = (ca("ours"), ca("theirs"));
    let c = leaf(&theirs, Leaf::default());
    match check(&[c], &bundles("example.org", &ours)) {
        Err(SvidError::Untrusted { trust_domain, .. }) => assert_eq!(trust_domain, "example.org"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_uri_sans_or_none_are_refused() {
    let ca = ca("root");
    let b = bundles("example.org", &ca);
    let two = leaf(
        &ca,
        Leaf {
            uris: vec!["spiffe://example.org/a", "spiffe://example.org/b"],
            ..Leaf::default()
        },
    );
    assert_eq!(check(&[two], &b), Err(SvidError::ManyUriSans(2)));
    let none = leaf(
        &ca,
        Leaf {
            uris: vec![],
            ..Leaf::default()
        },
    );
    assert_eq!(check(&[none], &b), Err(SvidError::NoUriSan));
    let http = leaf(
        &ca,
        Leaf {
            uris: vec!["https://example.org/x"],
            ..Leaf::default()
        },
    );
    assert_eq!(
        check(&[http], &b),
        Err(SvidError::BadSpiffeId(SpiffeIdError::Scheme))
    );
}

#[test]
fn ca_leaf_and_signing_leaf_are_refused() {
    let ca = ca("root");
    let b = bundles("example.org", &ca);
    let ca_leaf = leaf(
        &ca,
        Leaf {
            is_ca: true,
            ..Leaf::default()
        },
    );
    assert_eq!(check(&[ca_leaf], &b), Err(SvidError::LeafIsCa));
    let signer = leaf(
        &ca,
        Leaf {
            usages: vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ],
            ..Leaf::default()
        },
    );
    assert_eq!(check(&[signer], &b), Err(SvidError::LeafCanSign));
    let no_ds = leaf(
        &ca,
        Leaf {
            usages: vec![KeyUsagePurpose::KeyEncipherment],
            ..Leaf::default()
        },
    );
    assert_eq!(check(&[no_ds], &b), Err(SvidError::NoDigitalSignature));
}

#[test]
fn garbage_and_empty_chains_are_refused() {
    let b = TrustBundles::new();
    assert_eq!(check(&[], &b), Err(SvidError::Empty));
    assert!(matches!(
        check(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])], &b),
        Err(SvidError::Malformed(_))
    ));
}

#[test]
fn identity_reads_its_leaf() {
    let ca = ca("root");
    let c = leaf(&ca, Leaf::default());
    let key = PrivateKeyDer::Pkcs8(vec![1, 2, 3].into());
    let id = Identity::new(vec![c], key, bundles("example.org", &ca), now()).unwrap();
    assert_eq!(id.leaf.id.trust_domain(), "example.org");
    assert!(!id.leaf.serial.is_empty());
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(id.valid_at(t));
    assert!(!id.valid_at(t + 7200));
}
