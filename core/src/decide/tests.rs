use super::*;
use crate::client_hello::parse;
use crate::config::{Config, Format};

fn cfg(yaml: &str) -> Config {
    Config::from_str(yaml, Format::Yaml).unwrap()
}

fn dst(s: &str) -> OrigDst {
    OrigDst::new(s.parse().unwrap())
}

/// A ClientHello record with the given ALPN list, minimal otherwise.
fn hello(alpn: &[&[u8]]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
    body.extend_from_slice(&[1, 0]); // null compression
    let mut exts = Vec::new();
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p);
        }
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
        exts.extend_from_slice(&list);
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn detect(bytes: &[u8]) -> Option<Detected> {
    let mut scratch = Vec::new();
    Detected::from_parse(&parse(bytes, &mut scratch))
}

#[test]
fn detection_tells_mesh_from_app_tls_from_plaintext() {
    assert_eq!(
        detect(&hello(&[b"h2", b"ringmesh"])),
        Some(Detected::Mesh(MeshProtocol::Ringmesh))
    );
    assert_eq!(
        detect(&hello(&[b"h2", b"http/1.1"])),
        Some(Detected::AppTls)
    );
    assert_eq!(detect(&hello(&[])), Some(Detected::AppTls));
    assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Some(Detected::Plaintext));
    assert_eq!(detect(&[0x16, 3, 1, 0, 0]), Some(Detected::MalformedTls));
    assert_eq!(detect(&hello(&[b"ringmesh"])[..20]), None);
    assert_eq!(Detected::on_timeout(0), Detected::Silent);
    assert_eq!(Detected::on_timeout(3), Detected::Truncated);
}

#[test]
fn inbound_steps_by_mode() {
    use InboundMode::{Permissive as P, Strict as S};
    let mesh = Detected::Mesh(MeshProtocol::Ringmesh);
    let table = [
        (P, mesh, InboundStep::Mesh(MeshProtocol::Ringmesh)),
        (S, mesh, InboundStep::Mesh(MeshProtocol::Ringmesh)),
        (P, Detected::AppTls, InboundStep::Forward(Security::AppTls)),
        (
            S,
            Detected::AppTls,
            InboundStep::Refuse(Outcome::AppTlsRefused),
        ),
        (
            P,
            Detected::MalformedTls,
            InboundStep::Forward(Security::AppTls),
        ),
        (
            S,
            Detected::MalformedTls,
            InboundStep::Refuse(Outcome::AppTlsRefused),
        ),
        (
            P,
            Detected::Plaintext,
            InboundStep::Forward(Security::Plaintext),
        ),
        (
            S,
            Detected::Plaintext,
            InboundStep::Refuse(Outcome::PlaintextRefused),
        ),
        (
            P,
            Detected::Silent,
            InboundStep::Forward(Security::Plaintext),
        ),
        (
            S,
            Detected::Silent,
            InboundStep::Refuse(Outcome::PlaintextRefused),
        ),
        (
            P,
            Detected::Truncated,
            InboundStep::Refuse(Outcome::TruncatedHello),
        ),
        (
            S,
            Detected::Truncated,
            InboundStep::Refuse(Outcome::TruncatedHello),
        ),
        (P, Detected::Closed, InboundStep::Done),
        (S, Detected::Closed, InboundStep::Done),
    ];
    for (mode, detected, want) in table {
        assert_eq!(inbound_step(mode, detected), want, "{mode:?} {detected:?}");
    }
}

#[test]
fn inbound_access_uses_the_workloads_policy() {
    let c = cfg(r#"
services:
  - { name: web, addrs: ["10.96.0.10:80"], endpoints: [{ addr: "10.200.1.2:8080" }] }
access:
  default: deny
  rules:
    - destination: { service: web, port: 8080 }
      sources: ["spiffe://td/ns/a/sa/front"]
"#);
    let w = WorkloadKey::sidecar();
    let p = policy_for(&c.live, &w);
    let front = SpiffeId::parse("spiffe://td/ns/a/sa/front").unwrap();
    let other = SpiffeId::parse("spiffe://td/ns/a/sa/other").unwrap();
    let web = dst("10.200.1.2:8080");
    assert_eq!(
        inbound_access(&c.live, p, web, Some(&front)),
        Decision::AllowedByRule
    );
    assert_eq!(
        inbound_access(&c.live, p, web, Some(&other)),
        Decision::DeniedByRules
    );
    assert_eq!(
        inbound_access(&c.live, p, web, None),
        Decision::DeniedByRules
    );
    assert_eq!(
        inbound_access(&c.live, p, dst("10.200.1.2:9999"), Some(&front)),
        Decision::DeniedByDefault
    );
}

#[test]
fn own_listeners_are_loops_and_other_hosts_are_not() {
    let own = OwnAddrs::new(
        [
            "[::]:15001".parse().unwrap(),
            "127.0.0.1:15000".parse().unwrap(),
        ],
        ["10.200.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
    );
    assert!(own.is_own(dst("10.200.0.1:15001")));
    assert!(own.is_own(dst("127.0.0.1:15001")));
    assert!(own.is_own(dst("[::1]:15001")));
    assert!(own.is_own(dst("[fd00::1]:15001")));
    assert!(own.is_own(dst("[::ffff:10.200.0.1]:15001")));
    assert!(own.is_own(dst("127.0.0.1:15000")));
    // The same port on another host is a real upstream.
    assert!(!own.is_own(dst("10.200.0.2:15001")));
    assert!(!own.is_own(dst("10.200.0.1:15002")));
    // A listener on one address does not own the port on others.
    assert!(!own.is_own(dst("10.200.0.1:15000")));
    let v4 = OwnAddrs::new(["0.0.0.0:15006".parse().unwrap()], []);
    assert!(v4.is_own(dst("127.0.0.1:15006")));
    assert!(!v4.is_own(dst("[::1]:15006")), "0.0.0.0 takes IPv4 only");
}

#[test]
fn outbound_plans() {
    let c = cfg(r#"
egress: deny
services:
  - name: web
    addrs: ["10.96.0.10:80"]
    endpoints:
      - { addr: "10.200.1.2:8080", identity: "spiffe://td/ns/a/sa/web" }
      - { addr: "10.200.1.3:8080" }
"#);
    let own = OwnAddrs::new(
        ["[::]:15001".parse().unwrap()],
        ["10.200.0.1".parse().unwrap()],
    );
    let web = SpiffeId::parse("spiffe://td/ns/a/sa/web").unwrap();
    let p = outbound_plan(&c.live, &own, dst("10.96.0.10:80"), |i| {
        assert_eq!(i, 0);
        0
    })
    .unwrap();
    assert_eq!(p.route, RouteKind::Service);
    assert_eq!(p.target, "10.200.1.2:8080".parse().unwrap());
    assert_eq!(p.identity, Some(&web));
    assert_eq!(p.service, Some("web"));
    let p = outbound_plan(&c.live, &own, dst("10.96.0.10:80"), |_| 1).unwrap();
    assert_eq!(p.identity, None, "the second endpoint is plaintext");
    let p = outbound_plan(&c.live, &own, dst("10.200.1.2:8080"), |_| unreachable!()).unwrap();
    assert_eq!(p.route, RouteKind::Endpoint);
    assert_eq!(p.identity, Some(&web));
    assert_eq!(
        outbound_plan(&c.live, &own, dst("1.2.3.4:443"), |_| 0),
        Err(Outcome::EgressDenied)
    );
    assert_eq!(
        outbound_plan(&c.live, &own, dst("10.200.0.1:15001"), |_| 0),
        Err(Outcome::RedirectLoop)
    );
    let allow = cfg("egress: allow");
    let p = outbound_plan(&allow.live, &own, dst("10.200.9.9:15001"), |_| 0).unwrap();
    assert_eq!(
        (p.route, p.target),
        (RouteKind::Egress, "10.200.9.9:15001".parse().unwrap()),
        "port 15001 of another host is reachable"
    );
}
