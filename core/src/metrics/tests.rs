use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[test]
fn shards_are_summed() {
    let (a, b) = (WorkerShard::default(), WorkerShard::default());
    a.opened(Direction::Outbound);
    b.opened(Direction::Outbound);
    b.opened(Direction::Inbound);
    a.bytes(Direction::Outbound, Side::Downstream, 100);
    b.bytes(Direction::Outbound, Side::Downstream, 23);
    a.closed(
        Direction::Outbound,
        Outcome::EgressDenied,
        Duration::from_millis(2),
    );
    let text = render(
        &[&a, &b],
        &ProcessInfo {
            driver: "io_uring",
            ..Default::default()
        },
    );
    assert_eq!(
        line(
            &text,
            "ringmesh_connections_opened_total{direction=\"outbound\"}"
        ),
        "ringmesh_connections_opened_total{direction=\"outbound\"} 2"
    );
    assert!(text.contains("ringmesh_connections_active{direction=\"outbound\"} 1\n"));
    assert!(text.contains("ringmesh_connections_active{direction=\"inbound\"} 1\n"));
    assert!(
        text.contains("ringmesh_bytes_total{direction=\"outbound\",from=\"downstream\"} 123\n")
    );
    assert!(text.contains(
        "ringmesh_connections_closed_total{direction=\"outbound\",outcome=\"egress_denied\"} 1\n"
    ));
    assert!(text.contains(
        "ringmesh_connections_refused_total{direction=\"outbound\",reason=\"egress_denied\"} 1\n"
    ));
    assert!(text.contains("ringmesh_driver{driver=\"io_uring\"} 1\n"));
    assert!(text.contains("ringmesh_driver{driver=\"epoll\"} 0\n"));
}

#[test]
fn histogram_is_cumulative() {
    let s = WorkerShard::default();
    for ms in [0, 3, 3, 700, 4_000_000] {
        s.opened(Direction::Inbound);
        s.closed(Direction::Inbound, Outcome::Ok, Duration::from_millis(ms));
    }
    let text = render(&[&s], &ProcessInfo::default());
    let b = |le: &str| {
        let p = format!(
            "ringmesh_connection_duration_seconds_bucket{{direction=\"inbound\",le=\"{le}\"}} "
        );
        line(&text, &p)[p.len()..].parse::<u64>().unwrap()
    };
    assert_eq!(b("0.001"), 1);
    assert_eq!(b("0.005"), 3);
    assert_eq!(b("1"), 4);
    assert_eq!(b("3600"), 4);
    assert_eq!(b("+Inf"), 5);
    assert!(text.contains("ringmesh_connection_duration_seconds_count{direction=\"inbound\"} 5\n"));
}

#[test]
fn every_line_is_well_formed() {
    let s = WorkerShard::default();
    let info = ProcessInfo {
        driver: "epoll",
        driver_fallback_reason: Some("io_uring_setup: \"Operation not permitted\"".into()),
        ..Default::default()
    };
    for l in render(&[&s], &info).lines() {
        if l.starts_with('#') {
            assert!(
                l.starts_with("# HELP ringmesh_") || l.starts_with("# TYPE ringmesh_"),
                "{l}"
            );
            continue;
        }
        let (name, value) = l.rsplit_once(' ').unwrap();
        assert!(name.starts_with("ringmesh_"), "{l}");
        assert!(value.parse::<f64>().is_ok(), "{l}");
        assert_eq!(name.matches('{').count(), name.matches('}').count(), "{l}");
    }
}

#[test]
fn outcome_labels_are_unique() {
    let mut names: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Outcome::COUNT);
}

#[test]
fn identity_and_tls_series() {
    let s = WorkerShard::default();
    s.handshake(
        Direction::Outbound,
        HandshakeResult::Ok,
        Duration::from_micros(800),
    );
    s.handshake(Direction::Inbound, HandshakeResult::Failed, Duration::ZERO);
    s.security(Direction::Outbound, Security::Mtls);
    s.security(Direction::Inbound, Security::Plaintext);
    let info = ProcessInfo {
        identity: Some(IdentityInfo {
            spiffe_id: "spiffe://td/ns/a/sa/b".into(),
            serial: "0A1B".into(),
            not_after: 1_900_000_000,
        }),
        identity_rotations: 3,
        access_denied: vec![("spiffe://td/ns/x/sa/y".into(), 2), ("none".into(), 1)],
        ..Default::default()
    };
    let text = render(&[&s], &info);
    for want in [
        "ringmesh_identity_valid 1\n",
        "ringmesh_identity_info{spiffe_id=\"spiffe://td/ns/a/sa/b\",serial=\"0A1B\"} 1\n",
        "ringmesh_identity_expiry_timestamp_seconds 1900000000\n",
        "ringmesh_identity_rotations_total 3\n",
        "ringmesh_access_denied_total{source=\"spiffe://td/ns/x/sa/y\"} 2\n",
        "ringmesh_access_denied_total{source=\"none\"} 1\n",
        "ringmesh_tls_handshakes_total{direction=\"outbound\",result=\"ok\"} 1\n",
        "ringmesh_tls_handshakes_total{direction=\"inbound\",result=\"failed\"} 1\n",
        "ringmesh_tls_handshake_duration_seconds_bucket{direction=\"outbound\",le=\"0.001\"} 1\n",
        "ringmesh_tls_handshake_duration_seconds_bucket{direction=\"outbound\",le=\"0.0005\"} 0\n",
        "ringmesh_connections_security_total{direction=\"outbound\",security=\"mtls\"} 1\n",
        "ringmesh_connections_security_total{direction=\"inbound\",security=\"plaintext\"} 1\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let none = render(&[&s], &ProcessInfo::default());
    assert!(none.contains("ringmesh_identity_valid 0\n"));
    assert!(!none.contains("ringmesh_identity_info"));
}
