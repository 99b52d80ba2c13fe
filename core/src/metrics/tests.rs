use std::time::Duration;

use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

fn workload<'a>(key: &'a str, shards: &'a [WorkerShard]) -> WorkloadMetrics<'a> {
    WorkloadMetrics {
        key,
        shards,
        identity: None,
        identity_rotations: 0,
        identity_source_errors: 0,
    }
}

#[test]
fn shards_are_summed_per_workload() {
    let shards = [WorkerShard::default(), WorkerShard::default()];
    let (a, b) = (&shards[0], &shards[1]);
    a.opened(Direction::Outbound);
    b.opened(Direction::Outbound);
    b.opened(Direction::Inbound);
    a.bytes(
        Direction::Outbound,
        Side::Downstream,
        CopyMethod::Buffer,
        100,
    );
    b.bytes(
        Direction::Outbound,
        Side::Downstream,
        CopyMethod::Splice,
        23,
    );
    a.closed(
        Direction::Outbound,
        Outcome::EgressDenied,
        Duration::from_millis(2),
    );
    let other = [WorkerShard::default()];
    other[0].opened(Direction::Outbound);
    let text = render(
        &[workload("w1", &shards), workload("w2", &other)],
        &[],
        &ProcessInfo {
            driver: "io_uring",
            ..Default::default()
        },
    );
    for want in [
        "ringmesh_connections_opened_total{workload=\"w1\",direction=\"outbound\"} 2\n",
        "ringmesh_connections_opened_total{workload=\"w2\",direction=\"outbound\"} 1\n",
        "ringmesh_connections_active{workload=\"w1\",direction=\"outbound\"} 1\n",
        "ringmesh_connections_active{workload=\"w1\",direction=\"inbound\"} 1\n",
        "ringmesh_bytes_total{workload=\"w1\",direction=\"outbound\",from=\"downstream\"} 123\n",
        "ringmesh_copy_bytes_total{workload=\"w1\",method=\"splice\"} 23\n",
        "ringmesh_copy_bytes_total{workload=\"w1\",method=\"buffer\"} 100\n",
        "ringmesh_connections_closed_total{workload=\"w1\",direction=\"outbound\",outcome=\"egress_denied\"} 1\n",
        "ringmesh_connections_refused_total{workload=\"w1\",direction=\"outbound\",reason=\"egress_denied\"} 1\n",
        "ringmesh_driver{driver=\"io_uring\"} 1\n",
        "ringmesh_driver{driver=\"epoll\"} 0\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn histogram_is_cumulative() {
    let s = [WorkerShard::default()];
    for ms in [0, 3, 3, 700, 4_000_000] {
        s[0].opened(Direction::Inbound);
        s[0].closed(Direction::Inbound, Outcome::Ok, Duration::from_millis(ms));
    }
    let text = render(&[workload("w", &s)], &[], &ProcessInfo::default());
    let b = |le: &str| {
        let p = format!(
            "ringmesh_connection_duration_seconds_bucket{{workload=\"w\",direction=\"inbound\",le=\"{le}\"}} "
        );
        line(&text, &p)[p.len()..].parse::<u64>().unwrap()
    };
    assert_eq!(b("0.001"), 1);
    assert_eq!(b("0.005"), 3);
    assert_eq!(b("1"), 4);
    assert_eq!(b("3600"), 4);
    assert_eq!(b("+Inf"), 5);
    assert!(text.contains(
        "ringmesh_connection_duration_seconds_count{workload=\"w\",direction=\"inbound\"} 5\n"
    ));
}

#[test]
fn every_line_is_well_formed() {
    let s = [WorkerShard::default()];
    let info = ProcessInfo {
        driver: "epoll",
        driver_fallback_reason: Some("io_uring_setup: \"Operation not permitted\"".into()),
        ..Default::default()
    };
    let text = render(&[workload("a\"b", &s)], &[WorkerStats::default()], &info);
    assert!(text.contains("reason=\"io_uring_setup: \\\"Operation not permitted\\\"\""));
    assert!(text.contains("workload=\"a\\\"b\""));
    for l in text.lines() {
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
    let s = [WorkerShard::default()];
    s[0].handshake(
        Direction::Outbound,
        HandshakeResult::Ok,
        Duration::from_micros(800),
    );
    s[0].handshake(Direction::Inbound, HandshakeResult::Failed, Duration::ZERO);
    s[0].security(Direction::Outbound, Security::Mtls);
    s[0].security(Direction::Inbound, Security::AppTls);
    s[0].access_denied(Some("spiffe://td/ns/x/sa/y"));
    s[0].access_denied(Some("spiffe://td/ns/x/sa/y"));
    s[0].access_denied(None);
    s[0].detected(Detection::MeshTls);
    let id = IdentityInfo {
        spiffe_id: "spiffe://td/ns/a/sa/b".into(),
        serial: "0A1B".into(),
        not_after: 1_900_000_000,
    };
    let w = WorkloadMetrics {
        key: "pod",
        shards: &s,
        identity: Some(&id),
        identity_rotations: 3,
        identity_source_errors: 0,
    };
    let text = render(&[w], &[], &ProcessInfo::default());
    for want in [
        "ringmesh_identity_valid{workload=\"pod\"} 1\n",
        "ringmesh_identity_info{workload=\"pod\",spiffe_id=\"spiffe://td/ns/a/sa/b\",serial=\"0A1B\"} 1\n",
        "ringmesh_identity_expiry_timestamp_seconds{workload=\"pod\"} 1900000000\n",
        "ringmesh_identity_rotations_total{workload=\"pod\"} 3\n",
        "ringmesh_access_denied_total{workload=\"pod\",source=\"spiffe://td/ns/x/sa/y\"} 2\n",
        "ringmesh_access_denied_total{workload=\"pod\",source=\"none\"} 1\n",
        "ringmesh_tls_handshakes_total{workload=\"pod\",direction=\"outbound\",result=\"ok\"} 1\n",
        "ringmesh_tls_handshakes_total{workload=\"pod\",direction=\"inbound\",result=\"failed\"} 1\n",
        "ringmesh_tls_handshake_duration_seconds_bucket{workload=\"pod\",direction=\"outbound\",le=\"0.001\"} 1\n",
        "ringmesh_tls_handshake_duration_seconds_bucket{workload=\"pod\",direction=\"outbound\",le=\"0.0005\"} 0\n",
        "ringmesh_connections_security_total{workload=\"pod\",direction=\"outbound\",security=\"mtls\"} 1\n",
        "ringmesh_connections_security_total{workload=\"pod\",direction=\"inbound\",security=\"app_tls\"} 1\n",
        "ringmesh_inbound_detected_total{workload=\"pod\",protocol=\"mesh_tls\"} 1\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let none = render(&[workload("pod", &s)], &[], &ProcessInfo::default());
    assert!(none.contains("ringmesh_identity_valid{workload=\"pod\"} 0\n"));
    assert!(!none.contains("ringmesh_identity_info{"));
}

#[test]
fn label_table_is_bounded_and_counts_the_overflow() {
    let t = LabelTable::default();
    for i in 0..LABEL_SLOTS + 10 {
        t.inc(&format!("spiffe://td/ns/n/sa/{i}"));
    }
    t.inc("spiffe://td/ns/n/sa/0");
    let entries: Vec<_> = t.entries().collect();
    assert_eq!(entries.len(), LABEL_SLOTS + 1);
    assert_eq!(entries[0], ("spiffe://td/ns/n/sa/0", 2));
    assert_eq!(*entries.last().unwrap(), (OVERFLOW_LABEL, 10));
}

#[test]
fn config_and_worker_series() {
    let stats = [WorkerStats::default(), WorkerStats::default()];
    stats[0]
        .heartbeat_ms
        .store(9_000, std::sync::atomic::Ordering::Relaxed);
    stats[1]
        .heartbeat_ms
        .store(10_000, std::sync::atomic::Ordering::Relaxed);
    stats[1].log_suppressed(Outcome::UpstreamError, 5);
    stats[1].accepted.add(3);
    let info = ProcessInfo {
        now_ms: 10_500,
        live: true,
        log_lines_dropped: 7,
        config: ConfigInfo {
            version: "42".into(),
            number: Some(42),
            source: "file",
            applied_at: 1_800_000_000,
            restart_required: vec!["admin"],
        },
        ..Default::default()
    };
    let text = render(&[], &stats, &info);
    for want in [
        "ringmesh_worker_heartbeat_age_seconds{worker=\"0\"} 1.5\n",
        "ringmesh_worker_heartbeat_age_seconds{worker=\"1\"} 0.5\n",
        "ringmesh_worker_connections_accepted_total{worker=\"0\"} 0\n",
        "ringmesh_worker_connections_accepted_total{worker=\"1\"} 3\n",
        "ringmesh_workers_steered 0\n",
        "ringmesh_live 1\n",
        "ringmesh_log_lines_dropped_total 7\n",
        "ringmesh_log_lines_suppressed_total{reason=\"upstream_error\"} 5\n",
        "ringmesh_config_info{version=\"42\",source=\"file\"} 1\n",
        "ringmesh_config_version 42\n",
        "ringmesh_config_restart_required{field=\"admin\"} 1\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}
