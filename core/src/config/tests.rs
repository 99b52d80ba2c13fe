use super::*;
use crate::access::DefaultAccess;

fn errors(yaml: &str) -> Vec<String> {
    Config::from_str(yaml, Format::Yaml)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

const GOOD: &str = r#"
listeners:
  outbound: "127.0.0.1:16001"
  inbound: "[::]:16006"
admin: "127.0.0.1:16000"
bypass_mark: 0x539
timeouts: { connect: 250ms, idle: 30s }
limits: { max_connections_per_worker: 100 }
copy: splice
egress: deny
services:
  - name: web
    addrs: ["10.96.0.10:80", "[fd00:96::10]:80"]
    endpoints:
      - addr: "10.200.1.2:8080"
        identity: spiffe://cluster.local/ns/default/sa/web
        weight: 3
      - addr: "10.200.1.3:8080"
  - name: db
    addrs: ["10.96.0.20:5432"]
    endpoints: [{ addr: "10.200.2.2:5432" }]
"#;

#[test]
fn embedded_default_is_valid_sidecar() {
    let c = Config::embedded_default();
    assert_eq!(c.listeners.outbound, "[::]:15001".parse().unwrap());
    assert_eq!(c.listeners.inbound, "[::]:15006".parse().unwrap());
    assert_eq!(c.admin, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(c.egress, EgressPolicy::Allow);
    assert_eq!(c.bypass_mark.map(NonZeroU32::get), Some(1337));
    assert!(c.services.is_empty());
}

#[test]
fn empty_object_takes_every_default() {
    let c = Config::from_str("{}", Format::Json).unwrap();
    let d = Config::embedded_default();
    assert_eq!(c.listeners, d.listeners);
    assert_eq!(c.timeouts, d.timeouts);
    assert_eq!(c.raw(), d.raw());
}

#[test]
fn good_file_parses_every_field() {
    let c = Config::from_str(GOOD, Format::Yaml).unwrap();
    assert_eq!(c.bypass_mark.map(NonZeroU32::get), Some(0x539));
    assert_eq!(c.timeouts.connect, Duration::from_millis(250));
    assert_eq!(c.timeouts.idle, Duration::from_secs(30));
    assert_eq!(c.limits.max_connections_per_worker.get(), 100);
    assert_eq!(c.copy, CopyMode::Splice);
    assert_eq!(c.egress, EgressPolicy::Deny);
    assert_eq!(c.services.len(), 2);
    let web = &c.services[0];
    assert_eq!(web.endpoints[0].weight.get(), 3);
    assert_eq!(web.endpoints[1].weight.get(), 1);
    assert_eq!(
        web.endpoints[0].identity.as_ref().unwrap().to_string(),
        "spiffe://cluster.local/ns/default/sa/web"
    );
}

#[test]
fn json_and_yaml_agree() {
    let yaml = Config::from_str(GOOD, Format::Yaml).unwrap();
    let json = serde_json::to_string(yaml.raw()).unwrap();
    let back = Config::from_str(&json, Format::Json).unwrap();
    assert_eq!(back.raw(), yaml.raw());
}

#[test]
fn every_value_error_is_reported_with_its_path() {
    let bad = r#"
listeners: { outbound: "nonsense", inbound: "0.0.0.0:15006" }
admin: "127.0.0.1"
timeouts: { connect: 0s, idle: forever }
limits: { max_connections_per_worker: 0 }
services:
  - name: ok
    addrs: ["10.96.0.1:80"]
    endpoints: [{ addr: "10.0.0.1:80" }]
  - name: "bad name"
    addrs: []
    endpoints: []
  - name: third
    addrs: ["10.96.0.1:80", "10.96.0.3:0"]
    endpoints:
      - { addr: "x", weight: 0, identity: "spiffe://td/ns/../a" }
      - { addr: "0.0.0.0:80" }
  - name: ok
    addrs: ["10.96.0.4:80"]
    endpoints: [{ addr: "10.96.0.4:80" }]
"#;
    let errs = errors(bad);
    let want = [
        "listeners.outbound: invalid socket address \"nonsense\"",
        "admin: invalid socket address \"127.0.0.1\"",
        "timeouts.connect: must be longer than zero",
        "timeouts.idle: invalid duration \"forever\"",
        "limits.max_connections_per_worker: must be at least 1",
        "services[1].name: invalid service name \"bad name\"",
        "services[1].addrs: a service needs at least one address",
        "services[1].endpoints: a service needs at least one endpoint",
        "services[2].addrs[1]: port 0 cannot be dialled",
        "services[2].endpoints[0].addr: invalid socket address \"x\"",
        "services[2].endpoints[0].weight: must be at least 1",
        "services[2].endpoints[0].identity: invalid SPIFFE ID",
        "services[2].endpoints[1].addr: 0.0.0.0:80 cannot be dialled",
        "services[3].name: duplicate service name \"ok\" (also services[0])",
        "services[3].endpoints[0].addr: 10.96.0.4:80 is a virtual address of services[3]",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn shared_virtual_address_is_refused() {
    let errs = errors(
        r#"
services:
  - { name: a, addrs: ["10.96.0.1:80"], endpoints: [{ addr: "10.0.0.1:80" }] }
  - { name: b, addrs: ["10.96.0.1:80"], endpoints: [{ addr: "10.0.0.2:80" }] }
"#,
    );
    assert_eq!(
        errs,
        ["services[1].addrs[0]: 10.96.0.1:80 is already an address of services[0]"]
    );
}

#[test]
fn same_port_for_both_listeners_is_refused() {
    let errs = errors("listeners: { outbound: \"[::]:15001\", inbound: \"0.0.0.0:15001\" }");
    assert_eq!(
        errs,
        ["listeners.inbound: port 15001 is also the outbound listener's port"]
    );
}

#[test]
fn structural_errors_carry_their_path() {
    let e = RawConfig::parse("services:\n  - name: a\n    addrs: []\n    endpoints:\n      - addr: x\n        wieght: 2\n", Format::Yaml)
        .unwrap_err();
    assert_eq!(e.path, "services[0].endpoints[0].wieght");
    assert!(e.message.contains("unknown field `wieght`"), "{e}");

    let e = RawConfig::parse(
        "{\"limits\": {\"max_connections_per_worker\": \"many\"}}",
        Format::Json,
    )
    .unwrap_err();
    assert_eq!(e.path, "limits.max_connections_per_worker");

    let e = RawConfig::parse("egress: sometimes", Format::Yaml).unwrap_err();
    assert_eq!(e.path, "egress");
    assert!(e.message.contains("unknown variant"), "{e}");

    let e = RawConfig::parse("colour: blue", Format::Yaml).unwrap_err();
    assert!(e.message.contains("unknown field `colour`"), "{e}");

    assert!(RawConfig::parse("", Format::Yaml).is_err());
    assert!(RawConfig::parse("listeners: [", Format::Yaml).is_err());
    assert!(RawConfig::parse("{", Format::Json).is_err());
}

#[test]
fn routes_by_original_destination() {
    let c = Config::from_str(GOOD, Format::Yaml).unwrap();
    let dst = |s: &str| OrigDst::new(s.parse().unwrap());
    match c.route(dst("10.96.0.10:80")) {
        Route::Service { index, service } => {
            assert_eq!(index, 0);
            assert_eq!(service.name, "web");
        }
        other => panic!("{other:?}"),
    }
    // The v6 virtual address of the same service, and a v4-mapped spelling of the v4 one.
    assert!(matches!(
        c.route(dst("[fd00:96::10]:80")),
        Route::Service { index: 0, .. }
    ));
    assert!(matches!(
        c.route(dst("[::ffff:10.96.0.10]:80")),
        Route::Service { index: 0, .. }
    ));
    match c.route(dst("10.200.2.2:5432")) {
        Route::Endpoint { service, endpoint } => {
            assert_eq!(service.name, "db");
            assert_eq!(endpoint.addr, "10.200.2.2:5432".parse().unwrap());
        }
        other => panic!("{other:?}"),
    }
    // Same IP, other port: not part of the mesh.
    assert!(matches!(
        c.route(dst("10.96.0.10:81")),
        Route::Egress(EgressPolicy::Deny)
    ));
}

#[test]
fn service_pick_is_weighted_round_robin() {
    let c = Config::from_str(GOOD, Format::Yaml).unwrap();
    let web = &c.services[0];
    let picks: Vec<_> = (0..8).map(|t| web.pick(t).addr.port()).collect();
    assert_eq!(picks.len(), 8);
    let first = (0..4)
        .filter(|&t| web.pick(t).addr == web.endpoints[0].addr)
        .count();
    assert_eq!(first, 3, "weight 3 of 4");
}

#[test]
fn identity_inbound_and_access_sections() {
    let c = Config::from_str(
        r#"
identity: { source: workload_api, socket: /run/spire/agent.sock }
inbound: { mode: strict, ports: { 9090: permissive } }
access:
  default: deny
  rules:
    - destination: { service: web, port: 8080 }
      sources: ["spiffe://cluster.local/ns/a/sa/frontend"]
services:
  - { name: web, addrs: ["10.96.0.10:80"], endpoints: [{ addr: "10.200.1.2:8080" }] }
"#,
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        c.identity,
        IdentityConfig::WorkloadApi {
            socket: "/run/spire/agent.sock".into()
        }
    );
    assert_eq!(c.inbound.mode_for(8080), InboundMode::Strict);
    assert_eq!(c.inbound.mode_for(9090), InboundMode::Permissive);
    assert_eq!(c.access.default, DefaultAccess::Deny);
    assert_eq!(c.access.rules.len(), 1);
    let svc = c
        .service_of_endpoint("10.200.1.2:8080".parse().unwrap())
        .unwrap();
    assert_eq!(svc.name, "web");
    assert!(
        c.service_of_endpoint("10.200.1.2:8081".parse().unwrap())
            .is_none()
    );
    // JSON spells the port map with string keys.
    let json = r#"{"inbound": {"mode": "permissive", "ports": {"8443": "strict"}}}"#;
    let c = Config::from_str(json, Format::Json).unwrap();
    assert_eq!(c.inbound.mode_for(8443), InboundMode::Strict);
}

#[test]
fn identity_and_access_errors_are_reported() {
    let errs = errors(
        r#"
identity: { source: files, cert: /c.pem }
access:
  rules:
    - destination: { service: nope, port: 0 }
      sources: ["spiffe://td/ns/../x", "spiffe://td/ok"]
    - destination: { port: 80 }
      sources: []
"#,
    );
    let want = [
        "identity.key: required when identity.source is Files",
        "identity.bundle: required when identity.source is Files",
        "access.rules[0].destination.service: unknown service \"nope\"",
        "access.rules[0].destination.port: port 0 is not a port",
        "access.rules[0].sources[0]: invalid SPIFFE ID",
        "access.rules[1].sources: a rule needs at least one source",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    let errs = errors("identity: { source: workload_api }");
    assert_eq!(
        errs,
        ["identity.socket: required when identity.source is WorkloadApi"]
    );
}
