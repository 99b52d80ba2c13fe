use super::*;

#[test]
fn sniff_tells_http1_h2_and_opaque() {
    assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
    assert_eq!(sniff(b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n"), Sniff::Http1);
    assert_eq!(sniff(b"OPTIONS * HTTP/1.1\n"), Sniff::Http1);
    assert_eq!(sniff(b"CONNECT example.com:443 HTTP/1.1\r\n"), Sniff::Http1);
    assert_eq!(sniff(H2_PREFACE), Sniff::Http2);
    // Partial lines and a partial preface wait for more.
    for partial in [
        &b"G"[..],
        b"GET",
        b"GET /",
        b"GET / HTT",
        b"GET / HTTP/1.",
        b"GET / HTTP/1.1",
        b"GET / HTTP/1.1\r",
        b"PRI * HTTP/2",
    ] {
        assert_eq!(
            sniff(partial),
            Sniff::NeedMore,
            "{:?}",
            String::from_utf8_lossy(partial)
        );
    }
    // Not HTTP.
    for other in [
        &b"\x16\x03\x01\x00"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"GET /\x00 HTTP/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/2.0\r\n",
        b"GET / HTTP/1.1x",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"PING\r\n",
        b"qqqqqqqqqqqqqqqq",
        b"get / HTTP/1.1\r\n",
        b"AAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert_eq!(
            sniff(other),
            Sniff::Opaque,
            "{:?}",
            String::from_utf8_lossy(other)
        );
    }
    // A request line that never ends is opaque once the bound is reached.
    let mut long = b"GET /".to_vec();
    long.resize(MAX_SNIFF, b'a');
    assert_eq!(sniff(&long), Sniff::Opaque);
    long.truncate(MAX_SNIFF - 1);
    assert_eq!(sniff(&long), Sniff::NeedMore);
}

#[test]
fn protocol_for_pins_server_first_and_detect() {
    let mut p = HttpPolicy::default();
    assert_eq!(p.protocol_for(8080), Protocol::Detect);
    assert_eq!(p.protocol_for(3306), Protocol::Opaque);
    assert_eq!(p.protocol_for(5432), Protocol::Opaque);
    p.ports.insert(3306, Protocol::Detect);
    p.ports.insert(9000, Protocol::Http2);
    assert_eq!(p.protocol_for(3306), Protocol::Detect);
    assert_eq!(p.protocol_for(9000), Protocol::Http2);
    p.detect = false;
    assert_eq!(p.protocol_for(8080), Protocol::Opaque);
    assert_eq!(p.protocol_for(9000), Protocol::Http2);
}

#[test]
fn normalize_path_decodes_unreserved_and_refuses_ambiguity() {
    let n = |s| normalize_path(s).map(|(p, q)| (p, q.to_owned()));
    assert_eq!(n("/api/x?y=1"), Ok(("/api/x".into(), "?y=1".into())));
    assert_eq!(
        n("/%61pi/%7Euser"),
        Ok(("/api/~user".into(), String::new()))
    );
    assert_eq!(n("/a/./b/../c"), Ok(("/a/c".into(), String::new())));
    assert_eq!(n("/a/b/.."), Ok(("/a/".into(), String::new())));
    assert_eq!(n("/a/%2e%2e/admin"), Ok(("/admin".into(), String::new())));
    assert_eq!(n("/"), Ok(("/".into(), String::new())));
    // Reserved characters stay encoded, upper-cased.
    assert_eq!(n("/a%3fb%20c"), Ok(("/a%3Fb%20c".into(), String::new())));
    assert_eq!(n("/api%2Fadmin"), Err(PathError::EncodedSeparator));
    assert_eq!(n("/api%2fadmin"), Err(PathError::EncodedSeparator));
    assert_eq!(n("/api%5cadmin"), Err(PathError::EncodedSeparator));
    assert_eq!(n("/a%00"), Err(PathError::EncodedSeparator));
    assert_eq!(n("/a%zz"), Err(PathError::BadPercent));
    assert_eq!(n("/a%4"), Err(PathError::BadPercent));
    assert_eq!(n("/../etc"), Err(PathError::AboveRoot));
    assert_eq!(n("http://x/a"), Err(PathError::NotAbsolute));
    assert_eq!(n("/caf\u{e9}"), Ok(("/caf\u{e9}".into(), String::new())));
}

fn req<'a>(method: &'a str, path: &'a str, headers: &'a [(&'a str, &'a str)]) -> RequestView<'a> {
    RequestView {
        method,
        path,
        headers: Box::leak(Box::new(headers)),
    }
}

#[test]
fn patterns_are_anchored_and_case_sensitive() {
    let p = Pattern::new("/api").unwrap();
    assert!(p.matches("/api"));
    assert!(!p.matches("/apiv2"));
    assert!(!p.matches("/api/x"));
    assert!(!p.matches("/v1/api"));
    assert!(!p.matches("/API"));
    let p = Pattern::new("/api(/.*)?").unwrap();
    assert!(p.matches("/api/x") && p.matches("/api"));
    assert!(!p.matches("/apiv2"));
    // An alternation stays inside the anchors.
    let p = Pattern::new("/a|/b").unwrap();
    assert!(p.matches("/a") && p.matches("/b"));
    assert!(!p.matches("/a/evil") && !p.matches("/x/b"));
    assert!(Pattern::new("(").is_err());
}

#[test]
fn route_match_needs_every_part() {
    let m = RouteMatch {
        name: "read".into(),
        path: Some(Pattern::new("/api/.*").unwrap()),
        methods: vec!["GET".into(), "HEAD".into()],
        headers: vec![("x-user".into(), Pattern::new("admin|ops").unwrap())],
    };
    let h: &[(&str, &str)] = &[("X-User", "ops")];
    assert!(m.matches(&req("GET", "/api/x", h)));
    assert!(!m.matches(&req("POST", "/api/x", h)));
    assert!(!m.matches(&req("get", "/api/x", h)));
    assert!(!m.matches(&req("GET", "/apix", h)));
    assert!(!m.matches(&req("GET", "/api/x", &[("x-user", "opsx")])));
    assert!(!m.matches(&req("GET", "/api/x", &[])));
    // Any value of a repeated header may match.
    assert!(m.matches(&req(
        "GET",
        "/api/x",
        &[("x-user", "bob"), ("x-user", "admin")]
    )));
}

#[test]
fn classification_reads_grpc_status() {
    assert_eq!(Classification::of(200, None), Classification::Success);
    assert_eq!(Classification::of(404, None), Classification::Success);
    assert_eq!(Classification::of(503, None), Classification::Failure);
    assert_eq!(Classification::of(200, Some(0)), Classification::Success);
    assert_eq!(Classification::of(200, Some(14)), Classification::Failure);
    assert_eq!(MethodClass::of("GET").as_str(), "GET");
    assert_eq!(MethodClass::of("BREW").as_str(), "other");
}

#[test]
fn upgrade_requests_are_seen_in_the_head() {
    assert!(asks_upgrade(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    ));
    assert!(asks_upgrade(b"GET /ws HTTP/1.1\r\nupgrade: h2c\r\n"));
    assert!(!asks_upgrade(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nUpgrade: in the body\r\n"
    ));
    assert!(!asks_upgrade(
        b"GET /upgrade: HTTP/1.1\r\nX-Upgrade: no\r\n\r\n"
    ));
}

mod trace_context {
    use super::super::trace::{SpanContext, TracingPolicy, parse, ratio_ppm};

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_parses_as_the_spec_says() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.parent_id[7], 0xb7);
        assert!(p.sampled);
        assert!(!parse(&GOOD.replace("-01", "-00")).unwrap().sampled);
        // A later version may append fields; version 00 may not.
        assert!(parse(&format!("01{}-extra", &GOOD[2..])).is_some());
        for bad in [
            "",
            &GOOD[..54],
            &format!("{GOOD}-x"),
            &GOOD.replace("4bf9", "4BF9"),
            &format!("ff{}", &GOOD[2..]),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            &GOOD.replace('-', "_"),
            &GOOD.replace("a3ce", "a3cz"),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sampling_is_parent_based_then_by_ratio() {
        let half = TracingPolicy {
            sample_ppm: ratio_ppm(0.5).unwrap(),
            ..TracingPolicy::default()
        };
        let parent = parse(GOOD);
        let child = SpanContext::start(parent, &half, 999_999, [7; 16], [9; 8]);
        assert_eq!(child.trace_id, parent.unwrap().trace_id, "same trace");
        assert_eq!(child.parent_id, Some(parent.unwrap().parent_id));
        assert!(child.sampled, "the parent's decision, not the roll");
        assert_eq!(
            child.header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0909090909090909-01"
        );
        let unsampled = parse(&GOOD.replace("-01", "-00"));
        assert!(!SpanContext::start(unsampled, &half, 0, [7; 16], [9; 8]).sampled);
        let root = SpanContext::start(None, &half, 499_999, [7; 16], [9; 8]);
        assert!(root.sampled && root.parent_id.is_none());
        assert_eq!(root.trace_id, [7; 16]);
        assert!(!SpanContext::start(None, &half, 500_000, [7; 16], [9; 8]).sampled);
        let none = TracingPolicy {
            sample_ppm: 0,
            ..TracingPolicy::default()
        };
        assert!(!SpanContext::start(None, &none, 0, [7; 16], [9; 8]).sampled);
        assert_eq!(ratio_ppm(1.0), Some(1_000_000));
        assert_eq!(ratio_ppm(1.5), None);
        assert_eq!(ratio_ppm(f64::NAN), None);
    }
}

mod access_lines {
    use super::super::access_log::{Entry, LogFormat, valid_path};
    use crate::metrics::Direction;
    use std::time::{Duration, UNIX_EPOCH};

    fn entry() -> Entry {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_796_355_564_123),
            direction: Direction::Inbound,
            workload: "sidecar".into(),
            client: Some("10.0.0.1:4242".parse().unwrap()),
            peer_identity: Some("spiffe://example.org/ns/a/sa/client".into()),
            method: "GET".into(),
            authority: "web".into(),
            path: "/a?b=1".into(),
            protocol: "HTTP/1.1",
            status: 200,
            grpc_status: None,
            response_bytes: 12,
            duration: Duration::from_micros(1500),
            upstream: Some("127.0.0.1:8080".parse().unwrap()),
            service: "web".into(),
            route: "api/read".into(),
            proxy_error: None,
            user_agent: "curl/8 \"evil\"\n[fake]".into(),
            trace_id: None,
            cut: false,
        }
    }

    #[test]
    fn text_lines_are_one_line_and_cannot_be_forged() {
        let mut out = String::new();
        entry().write(LogFormat::Text, &mut out);
        assert_eq!(
            out,
            "[2026-12-04T03:39:24.123Z] inbound 10.0.0.1:4242 \"GET /a?b=1 HTTP/1.1\" 200 12 0.002 \"web\" \"127.0.0.1:8080\" \"web\" \"api/read\" \"curl/8 \\x22evil\\x22\\x0A[fake]\" \"spiffe://example.org/ns/a/sa/client\" \"-\" \"-\" \"-\"\n"
        );
    }

    #[test]
    fn json_lines_parse_back() {
        let mut out = String::new();
        let mut e = entry();
        e.grpc_status = Some(5);
        e.proxy_error = Some("access denied");
        e.status = 403;
        e.write(LogFormat::Json, &mut out);
        assert!(out.ends_with('\n') && out.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], 403);
        assert_eq!(v["grpc_status"], 5);
        assert_eq!(v["proxy_error"], "access denied");
        assert_eq!(v["user_agent"], "curl/8 \"evil\"\n[fake]");
        assert_eq!(v["direction"], "inbound");
        assert!(v.get("trace_id").is_none());
        assert!(valid_path("stdout") && valid_path("/var/log/x") && !valid_path("rel/x"));
    }
}

#[test]
fn grpc_requests_and_the_proxys_statuses_for_them() {
    for ct in [
        "application/grpc",
        "application/grpc+proto",
        "Application/GRPC;x=1",
    ] {
        assert!(is_grpc(Some(ct)), "{ct}");
    }
    for ct in [
        None,
        Some("application/grpc-web"),
        Some("application/json"),
        Some(""),
    ] {
        assert!(!is_grpc(ct), "{ct:?}");
    }
    assert_eq!(
        [400, 403, 404, 502, 503, 504, 500].map(grpc_status_for),
        [13, 7, 12, 14, 14, 4, 2]
    );
}
