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
    assert_eq!(c.boot.listeners.outbound, "[::]:15001".parse().unwrap());
    assert_eq!(c.boot.listeners.inbound, "[::]:15006".parse().unwrap());
    assert_eq!(c.boot.admin, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(c.live.egress, EgressPolicy::Allow);
    assert_eq!(c.boot.bypass_mark.map(NonZeroU32::get), Some(1337));
    assert!(c.live.services.is_empty());
}

#[test]
fn empty_object_takes_every_default() {
    let c = Config::from_str("{}", Format::Json).unwrap();
    let d = Config::embedded_default();
    assert_eq!(c.boot.listeners, d.boot.listeners);
    assert_eq!(c.live.timeouts, d.live.timeouts);
    assert_eq!(c.raw(), d.raw());
}

#[test]
fn good_file_parses_every_field() {
    let c = Config::from_str(GOOD, Format::Yaml).unwrap();
    assert_eq!(c.boot.bypass_mark.map(NonZeroU32::get), Some(0x539));
    assert_eq!(c.live.timeouts.connect, Duration::from_millis(250));
    assert_eq!(c.live.timeouts.idle, Duration::from_secs(30));
    assert_eq!(c.live.limits.max_connections_per_worker.get(), 100);
    assert_eq!(c.live.copy, CopyMode::Splice);
    assert_eq!(c.live.egress, EgressPolicy::Deny);
    assert_eq!(c.live.services.len(), 2);
    let web = &c.live.services[0];
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
fn udp_relays_follow_the_tcp_listeners_unless_set() {
    let c = Config::embedded_default();
    assert_eq!(
        c.boot.listeners.udp_outbound,
        Some("0.0.0.0:15001".parse().unwrap())
    );
    assert_eq!(
        c.boot.listeners.udp_inbound,
        Some("0.0.0.0:15006".parse().unwrap())
    );
    let c = Config::from_str(
        "listeners: { outbound: \"127.0.0.1:0\", inbound: \"[::1]:7\", udp_inbound: \"10.0.0.1:9\" }",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        c.boot.listeners.udp_outbound,
        Some("127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(
        c.boot.listeners.udp_inbound,
        Some("10.0.0.1:9".parse().unwrap())
    );
    let c = Config::from_str(
        "listeners: { inbound: \"[::1]:7\", udp_outbound: \"off\" }",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(c.boot.listeners.udp_outbound, None);
    assert_eq!(
        c.boot.listeners.udp_inbound, None,
        "an IPv6 address has no IPv4 relay"
    );
    let errs = errors(
        "listeners: { udp_outbound: \"[::]:5\", udp_inbound: \"0.0.0.0:15001\" }\nudp: { idle_timeout: 0s, max_flows_per_worker: 0 }",
    );
    assert_eq!(
        errs,
        [
            "listeners.udp_outbound: [::]:5: the UDP relays are IPv4 (the eBPF interception carries IPv4 datagrams)",
            "udp.idle_timeout: must be longer than zero",
            "udp.max_flows_per_worker: 0 is not between 1 and 65536",
        ]
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
    match c.live.route(dst("10.96.0.10:80")) {
        Route::Service { index, service } => {
            assert_eq!(index, 0);
            assert_eq!(service.name, "web");
        }
        other => panic!("{other:?}"),
    }
    // The v6 virtual address of the same service, and a v4-mapped spelling of the v4 one.
    assert!(matches!(
        c.live.route(dst("[fd00:96::10]:80")),
        Route::Service { index: 0, .. }
    ));
    assert!(matches!(
        c.live.route(dst("[::ffff:10.96.0.10]:80")),
        Route::Service { index: 0, .. }
    ));
    match c.live.route(dst("10.200.2.2:5432")) {
        Route::Endpoint { service, endpoint } => {
            assert_eq!(service.name, "db");
            assert_eq!(endpoint.addr, "10.200.2.2:5432".parse().unwrap());
        }
        other => panic!("{other:?}"),
    }
    // Same IP, other port: not part of the mesh.
    assert!(matches!(
        c.live.route(dst("10.96.0.10:81")),
        Route::Egress(EgressPolicy::Deny)
    ));
}

#[test]
fn service_pick_is_weighted_round_robin() {
    let c = Config::from_str(GOOD, Format::Yaml).unwrap();
    let web = &c.live.services[0];
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
        c.boot.identity,
        IdentityConfig::WorkloadApi {
            socket: "/run/spire/agent.sock".into()
        }
    );
    assert_eq!(c.live.inbound.mode_for(8080), InboundMode::Strict);
    assert_eq!(c.live.inbound.mode_for(9090), InboundMode::Permissive);
    assert_eq!(c.live.access.default, DefaultAccess::Deny);
    assert_eq!(c.live.access.rules.len(), 1);
    let svc = c
        .live
        .service_of_endpoint("10.200.1.2:8080".parse().unwrap())
        .unwrap();
    assert_eq!(svc.name, "web");
    assert!(
        c.live
            .service_of_endpoint("10.200.1.2:8081".parse().unwrap())
            .is_none()
    );
    // JSON spells the port map with string keys.
    let json = r#"{"inbound": {"mode": "permissive", "ports": {"8443": "strict"}}}"#;
    let c = Config::from_str(json, Format::Json).unwrap();
    assert_eq!(c.live.inbound.mode_for(8443), InboundMode::Strict);
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

#[test]
fn tcp_options_parse_and_default() {
    let d = Config::embedded_default();
    let ka = d.live.tcp.keepalive.unwrap();
    assert_eq!(ka.time, Duration::from_secs(30));
    assert_eq!(ka.interval, Duration::from_secs(10));
    assert_eq!(ka.probes, 3);
    assert_eq!(d.live.tcp.user_timeout, Some(Duration::from_secs(60)));
    let c = Config::from_str("tcp: { keepalive: false, user_timeout: off }", Format::Yaml).unwrap();
    assert_eq!(c.live.tcp.keepalive, None);
    assert_eq!(c.live.tcp.user_timeout, None);
    let errs = errors(
        "tcp: { keepalive_time: 1500ms, keepalive_interval: 10h, keepalive_probes: 0, user_timeout: 2d }",
    );
    let want = [
        "tcp.keepalive_time: \"1500ms\" must be a whole number of seconds",
        "tcp.keepalive_interval: \"10h\" is longer than the limit",
        "tcp.keepalive_probes: must be between 1 and 127",
        "tcp.user_timeout: \"2d\" is longer than the limit",
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
fn every_duration_and_size_is_bounded() {
    let errs = errors(
        "timeouts: { connect: 1y, idle: 300000000000y, handshake: 11m, first_byte: 2m }\n\
         limits: { max_connections_per_worker: 4000000000 }\nworkers: 0\n",
    );
    for field in [
        "timeouts.connect:",
        "timeouts.idle:",
        "timeouts.handshake:",
        "timeouts.first_byte:",
        "limits.max_connections_per_worker:",
        "workers:",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(field)),
            "no {field} in {errs:#?}"
        );
    }
    // The limits themselves validate.
    let c = Config::from_str(
        "timeouts: { connect: 10m, idle: 30d, handshake: 10m, first_byte: 1m }\nworkers: 1024\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(c.live.timeouts.idle, bounds::IDLE);
    assert_eq!(c.boot.workers.map(NonZeroU32::get), Some(1024));
}

#[test]
fn version_is_the_sources_number_or_a_content_digest() {
    let numbered = Config::from_str("version: 42", Format::Yaml).unwrap();
    assert_eq!(numbered.version, VersionId::Number(42));
    assert_eq!(numbered.version.to_string(), "42");
    let a = Config::from_str("egress: deny", Format::Yaml).unwrap();
    let b = Config::from_str("{\"egress\": \"deny\"}", Format::Json).unwrap();
    let c = Config::from_str("egress: allow", Format::Yaml).unwrap();
    assert_eq!(a.version, b.version, "same content, same version");
    assert_ne!(a.version, c.version);
    assert!(a.version.to_string().starts_with("sha256:"));
    assert_eq!(a.version.to_string().len(), "sha256:".len() + 12);
    assert_eq!(
        VersionId::Number(3).newer_than(VersionId::Number(2)),
        Some(true)
    );
    assert_eq!(
        VersionId::Number(2).newer_than(VersionId::Number(2)),
        Some(false)
    );
    assert_eq!(a.version.newer_than(VersionId::Number(1)), None);
}

#[test]
fn restart_only_fields_are_named() {
    let a = Config::embedded_default();
    let b = Config::from_str(
        "listeners: { outbound: \"[::]:16001\" }\nadmin: \"127.0.0.1:16000\"\n\
         identity: { source: workload_api, socket: /s }\nworkers: 3\negress: deny\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        a.boot.restart_fields(&b.boot),
        [
            "listeners.outbound",
            "listeners.udp_outbound",
            "admin",
            "identity",
            "workers"
        ]
    );
    assert!(a.boot.restart_fields(&a.boot).is_empty());
    let boot = b.raw_boot();
    let live = b.raw_live();
    assert!(boot.get("listeners").is_some() && boot.get("egress").is_none());
    assert!(live.get("egress").is_some() && live.get("admin").is_none());
}

mod extremes {
    use super::*;
    use proptest::prelude::*;

    /// Durations as an operator might write them, from nothing to absurd.
    fn duration_text() -> impl Strategy<Value = String> {
        let units = prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y"]);
        prop_oneof![
            (any::<u64>(), units.clone()).prop_map(|(n, u)| format!("{n}{u}")),
            (0u64..100_000, units).prop_map(|(n, u)| format!("{n}{u}")),
            Just("18446744073709551615s".to_string()),
            Just("300000000000y".to_string()),
            Just("off".to_string()),
        ]
    }

    proptest! {
        /// Whatever is written, validation either refuses it or yields values within bounds.
        #[test]
        fn validated_values_are_within_bounds(
            connect in duration_text(),
            idle in duration_text(),
            handshake in duration_text(),
            first_byte in duration_text(),
            ka_time in duration_text(),
            ka_intvl in duration_text(),
            user_timeout in duration_text(),
            probes in any::<u32>(),
            max_conns in any::<u32>(),
        ) {
            let doc = serde_json::json!({
                "timeouts": { "connect": connect, "idle": idle, "handshake": handshake,
                              "first_byte": first_byte },
                "tcp": { "keepalive_time": ka_time, "keepalive_interval": ka_intvl,
                         "keepalive_probes": probes, "user_timeout": user_timeout },
                "limits": { "max_connections_per_worker": max_conns },
            });
            if let Ok(c) = Config::from_str(&doc.to_string(), Format::Json) {
                let t = c.live.timeouts;
                prop_assert!(t.connect <= bounds::CONNECT && !t.connect.is_zero());
                prop_assert!(t.idle <= bounds::IDLE && !t.idle.is_zero());
                prop_assert!(t.handshake <= bounds::HANDSHAKE);
                prop_assert!(t.first_byte <= bounds::FIRST_BYTE);
                if let Some(k) = c.live.tcp.keepalive {
                    prop_assert!(k.time <= bounds::KEEPALIVE && k.time.as_secs() >= 1);
                    prop_assert!(k.interval <= bounds::KEEPALIVE);
                    prop_assert!((1..=bounds::KEEPALIVE_PROBES).contains(&k.probes));
                }
                if let Some(u) = c.live.tcp.user_timeout {
                    prop_assert!(u <= bounds::USER_TIMEOUT);
                    prop_assert!(i32::try_from(u.as_millis()).is_ok());
                }
                prop_assert!(
                    c.live.limits.max_connections_per_worker.get()
                        <= bounds::MAX_CONNECTIONS_PER_WORKER
                );
            }
        }
    }
}

const HTTP_CFG: &str = r#"
services:
  - name: web
    addrs: ["10.96.0.10:80"]
    endpoints: [{ addr: "10.200.1.2:8080" }]
protocols:
  ports: { 8080: http, 9000: grpc, 3306: detect, 7000: tcp }
http:
  response_timeout: 2s
  route_groups:
    - name: api
      matches:
        - name: read
          pathRegex: "/api/.*"
          methods: [GET, HEAD]
        - name: admin
          pathRegex: "/admin"
          methods: ["*"]
          headers: { X-Role: "ops" }
access:
  default: deny
  rules:
    - destination: { service: web, port: 8080 }
      sources: ["spiffe://td/ns/a/sa/admin"]
      routes: [api]
    - destination: { service: web, port: 8080 }
      sources: ["spiffe://td/ns/a/sa/reader"]
      routes: ["api/read"]
    - destination: { port: 8080 }
      sources: ["spiffe://td/ns/a/sa/tcp"]
"#;

#[test]
fn http_routes_and_access_by_route() {
    use crate::access::Destination;
    use crate::http::{Protocol, RequestView};
    let c = Config::from_str(HTTP_CFG, Format::Yaml).unwrap();
    let live = &c.live;
    assert_eq!(live.http.protocol_for(8080), Protocol::Http);
    assert_eq!(live.http.protocol_for(9000), Protocol::Http2);
    assert_eq!(live.http.protocol_for(3306), Protocol::Detect);
    assert_eq!(live.http.protocol_for(7000), Protocol::Opaque);
    assert_eq!(live.http.protocol_for(80), Protocol::Detect);
    assert_eq!(live.http.response_timeout, Duration::from_secs(2));
    let admin = SpiffeId::parse("spiffe://td/ns/a/sa/admin").unwrap();
    let reader = SpiffeId::parse("spiffe://td/ns/a/sa/reader").unwrap();
    let tcp = SpiffeId::parse("spiffe://td/ns/a/sa/tcp").unwrap();
    let dest = Destination {
        service: Some("web"),
        port: 8080,
    };
    let decide = |who: &SpiffeId, method: &str, path: &str, headers: &[(&str, &str)]| {
        let (d, route) = live.access.decide_request(
            &live.http,
            dest,
            Some(who),
            &RequestView {
                method,
                path,
                headers: &headers,
            },
        );
        (d.allowed(), route.map(|r| r.to_string()))
    };
    assert_eq!(
        decide(&reader, "GET", "/api/x", &[]),
        (true, Some("api/read".into()))
    );
    assert_eq!(decide(&reader, "POST", "/api/x", &[]), (false, None));
    assert_eq!(
        decide(&reader, "GET", "/admin", &[("x-role", "ops")]),
        (false, None)
    );
    assert_eq!(
        decide(&admin, "DELETE", "/admin", &[("x-role", "ops")]),
        (true, Some("api/admin".into()))
    );
    assert_eq!(decide(&admin, "DELETE", "/admin", &[]), (false, None));
    assert_eq!(decide(&admin, "GET", "/apiv2", &[]), (false, None));
    assert_eq!(decide(&admin, "GET", "/API/x", &[]), (false, None));
    // A rule without routes allows every request, and opaque connections.
    assert_eq!(decide(&tcp, "BREW", "/anything", &[]), (true, None));
    assert!(live.access.decide(dest, Some(&tcp)).allowed());
    // Route-scoped rules allow no opaque connection.
    assert!(!live.access.decide(dest, Some(&admin)).allowed());
    assert!(!live.access.decide(dest, Some(&reader)).allowed());
}

#[test]
fn http_config_errors_are_reported() {
    let errs = errors(
        r#"
protocols: { ports: { 0: http, 80: nonsense } }
"#,
    );
    assert!(
        errs.iter().any(|e| e.contains("protocols.ports")),
        "{errs:?}"
    );
    let errs = errors(
        r#"
http:
  max_header_bytes: 100
  max_headers: 0
  response_timeout: forever
  route_groups:
    - name: Api
      matches:
        - { name: a, pathRegex: "(", methods: [get] }
        - { name: a, headers: { "bad name": "x" } }
    - name: empty
      matches: []
access:
  rules:
    - destination: { port: 80 }
      sources: ["spiffe://td/x"]
      routes: [nope, "empty/none"]
"#,
    );
    for want in [
        "http.max_header_bytes",
        "http.max_headers",
        "http.response_timeout",
        "http.route_groups[0].name",
        "http.route_groups[0].matches[0].pathRegex",
        "http.route_groups[0].matches[0].methods[0]",
        "http.route_groups[0].matches[1].name",
        "http.route_groups[0].matches[1].headers.bad name",
        "http.route_groups[1].matches",
        "access.rules[0].routes[0]",
        "access.rules[0].routes[1]",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "no error at {want}: {errs:?}"
        );
    }
}
