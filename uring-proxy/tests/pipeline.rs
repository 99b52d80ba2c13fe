//! The real pipeline, in-process on loopback, with an injected original destination. Every
//! scenario runs on both drivers (`name::io_uring`, `name::epoll`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_core::OrigDst;
use ringmesh_core::config::VersionId;
use ringmesh_core::metrics::{Direction, Outcome, Side};
use support::*;
use uring_proxy::{ConnInfo, DriverChoice};

both_drivers!(
    echo_every_copy_mode,
    service_vip_round_robin,
    inbound_goes_to_loopback_app_port,
    half_close_client_first,
    half_close_server_first,
    upstream_reset_resets_client,
    client_reset_resets_upstream,
    idle_timeout_closes_only_idle,
    redirect_loop_refused,
    egress_deny,
    connect_failure_counts_upstream,
    connection_limit,
    reload_keeps_connections,
    reload_file_rejects_bad_config,
    drain_finishes_in_flight,
    drain_deadline_resets,
    admin_endpoints,
    failure_lines_are_rate_limited,
    metrics_pass_promtool,
    owned_ring_carries_keep_alive_exchanges,
    bulk_after_a_half_close_moves_to_splice,
    slow_upstream_reader_loses_nothing,
    stalled_reader_leaves_the_ring_to_others,
);

fn echo_every_copy_mode(driver: DriverChoice) {
    for copy in ["splice", "buffered", "auto"] {
        let srv = echo_server();
        let p = start(driver, config(&format!("copy: {copy}")), fixed(srv.addr));
        let mut c = connect(p.outbound_addr());
        roundtrip(&mut c, b"hello");
        let switches = |p: &uring_proxy::Proxy| metric(p, "ringmesh_copy_splice_switches_total");
        assert_eq!(switches(&p), 0, "{copy}: a small exchange stays buffered");
        // A few MiB, written while reading so neither side's buffers fill up.
        let data = pattern(6 << 20);
        let back = echo_all(&mut c, &data);
        assert!(
            back.len() == data.len() && back == data,
            "{copy}: echo differs"
        );
        expect_closed(&p, Direction::Outbound, Outcome::Ok, 1);
        let total = data.len() as u64 + 5;
        let bytes = |side| {
            p.shards()
                .iter()
                .map(|s| s.bytes_count(Direction::Outbound, side))
                .sum::<u64>()
        };
        assert_eq!(bytes(Side::Downstream), total, "{copy}");
        assert_eq!(bytes(Side::Upstream), total, "{copy}");
        let m = p.metrics();
        assert!(
            metric_in(
                &m,
                &format!("ringmesh_copy_connections_total{{mode=\"{copy}\"}}")
            ) == 1,
            "{m}"
        );
        assert!(
            metric_in(&m, "ringmesh_outbound_routes_total{route=\"egress\"}") == 1,
            "{m}"
        );
        // Splice really splices: bulk moves through pipes unless the copy is buffered.
        let spliced = metric_in(&m, "ringmesh_copy_bytes_total{method=\"splice\"}");
        let buffered = metric_in(&m, "ringmesh_copy_bytes_total{method=\"buffer\"}");
        let ring = metric_in(&m, "ringmesh_copy_bytes_total{method=\"ring\"}");
        assert_eq!(
            spliced + buffered + ring,
            2 * total,
            "{copy}: every byte counted once"
        );
        // On io_uring, auto starts on the worker's own ring and hands the bulk over to
        // splice; nothing else uses the ring.
        let handoffs = metric_in(&m, "ringmesh_copy_ring_handoffs_total");
        if copy == "auto" && driver == DriverChoice::Uring {
            assert!(
                ring >= 10,
                "{copy}: the small exchange went through the ring: {m}"
            );
            assert_eq!(handoffs, 1, "{copy}: {m}");
        } else {
            assert_eq!((ring, handoffs), (0, 0), "{copy} on {driver:?}");
        }
        match copy {
            "buffered" => assert_eq!(spliced, 0, "{copy}"),
            // auto: the small exchange is buffered, the bulk spliced.
            _ => assert!(
                spliced > total,
                "{copy}: only {spliced} of {} spliced (ring {ring}, buffered {buffered})",
                2 * total
            ),
        }
        assert_eq!(metric_in(&m, "ringmesh_copy_splice_fallbacks_total"), 0);
        assert_eq!(active(&p), 0);
    }
}

fn service_vip_round_robin(driver: DriverChoice) {
    let (a, b) = (echo_server(), echo_server());
    let cfg = config(&format!(
        "services: [{{ name: web, addrs: [\"10.96.0.10:80\"], endpoints: [{{ addr: \"{}\" }}, {{ addr: \"{}\" }}] }}]",
        a.addr, b.addr
    ));
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    // One worker, so one round-robin counter: the picks must alternate.
    let p = start_with(cfg, options(driver, 1, fixed(vip)));
    for i in 0..6u8 {
        let mut c = connect(p.outbound_addr());
        roundtrip(&mut c, &[i; 10]);
    }
    assert_eq!(a.accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(b.accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    let m = p.metrics();
    assert!(
        metric_in(&m, "ringmesh_outbound_routes_total{route=\"service\"}") == 6,
        "{m}"
    );

    // The endpoint address itself is used as is.
    let p2 = start(
        driver,
        config(&format!(
            "services: [{{ name: web, addrs: [\"10.96.0.10:80\"], endpoints: [{{ addr: \"{}\" }}] }}]",
            a.addr
        )),
        fixed(a.addr),
    );
    let mut c = connect(p2.outbound_addr());
    roundtrip(&mut c, b"direct");
    assert!(metric(&p2, "ringmesh_outbound_routes_total{route=\"endpoint\"}") == 1);
}

fn inbound_goes_to_loopback_app_port(driver: DriverChoice) {
    let (tx, rx) = mpsc::channel();
    let srv = server(move |mut s| {
        tx.send(s.peer_addr().unwrap()).unwrap();
        let mut buf = [0; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    // The peer dialled the pod's address; only the port survives to loopback.
    let dst: SocketAddr = format!("10.200.1.2:{}", srv.addr.port()).parse().unwrap();
    let p = start(driver, config(""), fixed(dst));
    let mut c = connect(p.inbound_addr());
    roundtrip(&mut c, b"inbnd");
    let peer = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(peer.ip().is_loopback());
    drop(c);
    expect_closed(&p, Direction::Inbound, Outcome::Ok, 1);
    assert_eq!(opened(&p, Direction::Outbound), 0);
}

fn half_close_client_first(driver: DriverChoice) {
    // The server answers only after the client's FIN: the response must still arrive.
    let srv = server(|mut s| {
        let req = read_end(&mut s).unwrap();
        s.write_all(b"response to ").unwrap();
        s.write_all(&req).unwrap();
    });
    let p = start(driver, config(""), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_end(&mut c).unwrap(), b"response to request");
    expect_closed(&p, Direction::Outbound, Outcome::Ok, 1);
}

fn half_close_server_first(driver: DriverChoice) {
    // The server says its piece and half-closes; the client keeps sending afterwards.
    let (tx, rx) = mpsc::channel();
    let srv = server(move |mut s| {
        s.write_all(b"banner").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        tx.send(read_end(&mut s).unwrap()).unwrap();
    });
    let p = start(driver, config(""), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    let mut banner = [0; 6];
    c.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"banner");
    assert_eq!(
        c.read(&mut [0; 1]).unwrap(),
        0,
        "the server's FIN reached the client"
    );
    c.write_all(b"still talking").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        b"still talking"
    );
    expect_closed(&p, Direction::Outbound, Outcome::Ok, 1);
}

fn upstream_reset_resets_client(driver: DriverChoice) {
    let srv = server(|mut s| {
        let mut buf = [0; 4];
        s.read_exact(&mut buf).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let p = start(driver, config(""), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    c.write_all(b"ping").unwrap();
    let err = read_end(&mut c).expect_err("client must see a reset, not a clean EOF");
    assert!(is_reset(&err), "{err}");
    expect_closed(&p, Direction::Outbound, Outcome::UpstreamError, 1);
}

fn client_reset_resets_upstream(driver: DriverChoice) {
    let (tx, rx) = mpsc::channel();
    let srv = server(move |mut s| {
        let mut buf = [0; 4];
        s.read_exact(&mut buf).unwrap();
        tx.send(read_end(&mut s)).unwrap();
    });
    let p = start(driver, config(""), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    c.write_all(b"ping").unwrap();
    // The ping went through: the connection is in its copy loop.
    wait_until("the ping relayed", Duration::from_secs(5), || {
        metric(
            &p,
            "ringmesh_bytes_total{direction=\"outbound\",from=\"downstream\"}",
        ) == 4
    });
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let err = seen.expect_err("server must see a reset, not a clean EOF");
    assert!(is_reset(&err), "{err}");
    expect_closed(&p, Direction::Outbound, Outcome::DownstreamError, 1);
}

fn idle_timeout_closes_only_idle(driver: DriverChoice) {
    let srv = echo_server();
    let p = start(driver, config("timeouts: { idle: 300ms }"), fixed(srv.addr));
    let mut idle = connect(p.outbound_addr());
    roundtrip(&mut idle, b"once");
    let t0 = Instant::now();
    let busy_addr = p.outbound_addr();
    let busy = thread::spawn(move || {
        let mut c = connect(busy_addr);
        for _ in 0..12 {
            roundtrip(&mut c, b"tick");
            thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(
        read_end(&mut idle).unwrap(),
        b"",
        "idle connection closed with EOF"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed too late: {waited:?}"
    );
    busy.join().expect("a busy connection is never idle");
    expect_closed(&p, Direction::Outbound, Outcome::IdleTimeout, 1);
}

fn redirect_loop_refused(driver: DriverChoice) {
    // No NAT happened: the original destination is the proxy's own listener.
    let p = start(driver, config(""), |c: &ConnInfo| {
        c.local().map(OrigDst::new)
    });
    let mut c = connect(p.outbound_addr());
    let _ = c.write_all(b"x");
    let _ = read_end(&mut c);
    expect_closed(&p, Direction::Outbound, Outcome::RedirectLoop, 1);
    let m = p.metrics();
    assert!(
        metric_in(
            &m,
            "ringmesh_connections_refused_total{direction=\"outbound\",reason=\"redirect_loop\"}"
        ) == 1,
        "{m}"
    );
}

fn egress_deny(driver: DriverChoice) {
    let srv = echo_server();
    let p = start(driver, config("egress: deny"), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    let _ = c.write_all(b"x");
    assert!(
        read_end(&mut c).map(|b| b.is_empty()).unwrap_or(true),
        "no byte comes back"
    );
    expect_closed(&p, Direction::Outbound, Outcome::EgressDenied, 1);
    assert_eq!(
        srv.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "never dialled"
    );
}

fn connect_failure_counts_upstream(driver: DriverChoice) {
    // A port nobody listens on: the upstream refuses, the client is closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = start(driver, config(""), fixed(dead));
    let mut c = connect(p.outbound_addr());
    let _ = read_end(&mut c);
    expect_closed(&p, Direction::Outbound, Outcome::UpstreamError, 1);
}

fn connection_limit(driver: DriverChoice) {
    let srv = echo_server();
    let p = start_with(
        config("limits: { max_connections_per_worker: 2 }"),
        options(driver, 1, fixed(srv.addr)),
    );
    let mut a = connect(p.outbound_addr());
    let mut b = connect(p.outbound_addr());
    roundtrip(&mut a, b"a");
    roundtrip(&mut b, b"b");
    let mut over = connect(p.outbound_addr());
    let _ = over.write_all(b"c");
    match read_end(&mut over) {
        Ok(bytes) => assert!(bytes.is_empty()),
        Err(e) => assert!(is_reset(&e), "{e}"),
    }
    expect_closed(&p, Direction::Outbound, Outcome::ConnectionLimit, 1);
    // The two admitted connections are untouched; closing one frees a place.
    roundtrip(&mut a, b"still a");
    roundtrip(&mut b, b"still b");
    drop(a);
    wait_until("a place frees up", Duration::from_secs(5), || {
        active(&p) == 1
    });
    let mut d = connect(p.outbound_addr());
    roundtrip(&mut d, b"d");
}

fn reload_keeps_connections(driver: DriverChoice) {
    let srv = echo_server();
    let p = start(driver, config(""), fixed(srv.addr));
    let mut conns: Vec<_> = (0..8).map(|_| connect(p.outbound_addr())).collect();
    for c in &mut conns {
        roundtrip(c, b"before");
    }
    let v = p.apply(config(&format!(
        "version: 2\ntimeouts: {{ idle: 10m }}\nservices: [{{ name: x, addrs: [\"10.96.0.1:80\"], endpoints: [{{ addr: \"{}\" }}] }}]",
        srv.addr
    )));
    assert_eq!(v, Some(VersionId::Number(2)));
    assert_eq!(p.config_version(), VersionId::Number(2));
    for c in &mut conns {
        roundtrip(c, b"after reload");
    }
    let mut fresh = connect(p.outbound_addr());
    roundtrip(&mut fresh, b"new");
    assert_eq!(
        closed(&p, Direction::Outbound, Outcome::Ok),
        0,
        "nothing dropped"
    );
    let m = p.metrics();
    assert!(m.contains("ringmesh_config_version 2\n"), "{m}");
    assert!(
        m.contains("ringmesh_config_info{version=\"2\",source=\"api\"} 1\n"),
        "{m}"
    );
}

fn reload_file_rejects_bad_config(driver: DriverChoice) {
    let srv = echo_server();
    let dir =
        std::env::temp_dir().join(format!("ringmesh-reload-{}-{driver:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.yaml");
    let good = "listeners: { outbound: \"127.0.0.1:0\", inbound: \"127.0.0.1:0\" }\nadmin: \"127.0.0.1:0\"\nbypass_mark: 0\n";
    std::fs::write(&path, format!("version: 1\n{good}")).unwrap();
    let cfg = uring_proxy::load_config_file(&path).unwrap();
    let mut opts = options(driver, 2, fixed(srv.addr));
    opts.config_path = Some(path.clone());
    let p = start_with(cfg, opts);
    let mut c = connect(p.outbound_addr());
    roundtrip(&mut c, b"before");

    std::fs::write(&path, format!("{good}timeouts: {{ idle: never }}\nservices: [{{ name: x, addrs: [bad], endpoints: [] }}]\n")).unwrap();
    let errs = p.reload_file().expect_err("bad file rejected");
    assert!(
        errs.iter().any(|e| e.starts_with("timeouts.idle:")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("services[0].addrs[0]:")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("services[0].endpoints:")),
        "{errs:?}"
    );
    assert_eq!(
        p.config_version(),
        VersionId::Number(1),
        "old config keeps serving"
    );
    roundtrip(&mut c, b"still serving");
    let m = p.metrics();
    assert!(
        metric_in(&m, "ringmesh_config_reloads_total{result=\"rejected\"}") == 1,
        "{m}"
    );

    std::fs::write(&path, format!("version: 2\n{good}egress: deny\n")).unwrap();
    assert_eq!(p.reload_file(), Ok(VersionId::Number(2)));
    roundtrip(&mut c, b"open connections survive");
    let mut denied = connect(p.outbound_addr());
    let _ = read_end(&mut denied);
    expect_closed(&p, Direction::Outbound, Outcome::EgressDenied, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn drain_finishes_in_flight(driver: DriverChoice) {
    let srv = echo_server();
    let p = start(driver, config(""), fixed(srv.addr));
    let admin = p.admin_addr().unwrap();
    let mut c = connect(p.outbound_addr());
    roundtrip(&mut c, b"in flight");
    let t0 = Instant::now();
    p.drain(Duration::from_secs(10));
    wait_until("not ready", Duration::from_secs(5), || !p.is_ready());
    assert_eq!(http_get(admin, "/ready").0, 503);
    // New connections are refused once the listeners are closed.
    wait_until("listeners closed", Duration::from_secs(5), || {
        std::net::TcpStream::connect(p.outbound_addr()).is_err()
    });
    // The in-flight one keeps working, then finishes on its own.
    roundtrip(&mut c, b"still going");
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_end(&mut c).unwrap(), b"");
    expect_closed(&p, Direction::Outbound, Outcome::Ok, 1);
    p.wait().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "drain waited for the deadline"
    );
}

fn drain_deadline_resets(driver: DriverChoice) {
    let srv = echo_server();
    let p = start(driver, config(""), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    roundtrip(&mut c, b"held open");
    let t0 = Instant::now();
    p.drain(Duration::from_millis(400));
    match read_end(&mut c) {
        Ok(b) => assert!(b.is_empty()),
        Err(e) => assert!(is_reset(&e), "{e}"),
    }
    let cut = t0.elapsed();
    assert!(
        cut >= Duration::from_millis(350),
        "cut before the deadline: {cut:?}"
    );
    expect_closed(&p, Direction::Outbound, Outcome::Drained, 1);
    p.wait().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "exit in time: {:?}",
        t0.elapsed()
    );
}

fn admin_endpoints(driver: DriverChoice) {
    let srv = echo_server();
    let p = start(driver, config(""), fixed(srv.addr));
    let admin = p.admin_addr().unwrap();
    let mut c = connect(p.outbound_addr());
    roundtrip(&mut c, b"count me");
    let (code, metrics) = http_get(admin, "/metrics");
    assert_eq!(code, 200);
    let name = if driver == DriverChoice::Uring {
        "io_uring"
    } else {
        "epoll"
    };
    assert!(
        metrics.contains(&format!("ringmesh_driver{{driver=\"{name}\"}} 1")),
        "{metrics}"
    );
    assert!(
        metric_in(
            &metrics,
            "ringmesh_connections_active{direction=\"outbound\"}"
        ) == 1,
        "{metrics}"
    );
    assert!(metrics.contains("ringmesh_workers 2"), "{metrics}");
    assert_eq!(http_get(admin, "/ready"), (200, "ready\n".into()));
    assert_eq!(http_get(admin, "/live"), (200, "live\n".into()));
    let (code, body) = http_get(admin, "/config");
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["version"], p.config_version().to_string());
    assert_eq!(json["source"], "api");
    assert_eq!(json["in_force"]["live"]["egress"], "allow");
    assert_eq!(json["in_force"]["restart_only"]["admin"], "127.0.0.1:0");
    assert_eq!(json["workloads"], serde_json::json!(["sidecar"]));
    assert_eq!(http_get(admin, "/nope").0, 404);
}

/// A flood of failing connections is counted in full, while the log gets a few lines a
/// second per reason and the rest are counted as suppressed.
fn failure_lines_are_rate_limited(driver: DriverChoice) {
    let p = start_with(
        config("egress: deny"),
        options(driver, 1, fixed("10.255.0.1:9".parse().unwrap())),
    );
    let t0 = Instant::now();
    for _ in 0..300 {
        let mut c = connect(p.outbound_addr());
        let _ = read_end(&mut c);
    }
    expect_closed(&p, Direction::Outbound, Outcome::EgressDenied, 300);
    let seconds = t0.elapsed().as_secs() + 1;
    let suppressed = metric(
        &p,
        "ringmesh_log_lines_suppressed_total{reason=\"egress_denied\"}",
    );
    let logged = 300 - suppressed;
    assert!(
        logged <= 10 * seconds,
        "{logged} lines in {seconds} s (at most 10 a second)"
    );
    assert!(
        logged >= 10,
        "the first lines of each second are written ({logged})"
    );
}

/// `/metrics` passes Prometheus's own checker, with every family in it populated.
fn metrics_pass_promtool(driver: DriverChoice) {
    let promtool = concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/bin/promtool");
    assert!(
        std::path::Path::new(promtool).exists(),
        "{promtool} is missing: run `make deps` (.ci/deps.sh unpacks it)"
    );
    let srv = echo_server();
    let p = start(driver, config("copy: auto"), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    roundtrip(&mut c, b"some traffic");
    let _ = echo_all(&mut c, &pattern(1 << 20));
    let (code, body) = http_get(p.admin_addr().unwrap(), "/metrics");
    assert_eq!(code, 200);
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{body}"
    );
}

/// Whether the worker's own ring is in use: on io_uring it is, on epoll there is none.
fn expect_owned_ring(p: &uring_proxy::Proxy, driver: DriverChoice, workers: u64) {
    let want = if driver == DriverChoice::Uring {
        workers
    } else {
        0
    };
    assert_eq!(metric(p, "ringmesh_workers_owned_ring"), want, "{driver:?}");
}

fn owned_ring_carries_keep_alive_exchanges(driver: DriverChoice) {
    // Many connections at once (more than there are buffers in flight at any time), each
    // with many small exchanges of varying size: the keep-alive pattern the ring is for.
    // Detection off, so the first message is not read by detection and replayed (those bytes
    // would count as buffered): every byte must then cross on the ring.
    let srv = echo_server();
    let p = start_with(
        config("protocols: { detect: false }"),
        options(driver, 2, fixed(srv.addr)),
    );
    expect_owned_ring(&p, driver, 2);
    let conns: Vec<_> = (0..40).map(|_| connect(p.outbound_addr())).collect();
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            thread::spawn(move || {
                let mut moved = 0u64;
                for round in 0..100 {
                    let len = 1 + (i * 131 + round * 977) % 6000;
                    let msg = pattern(len);
                    roundtrip(&mut c, &msg);
                    moved += len as u64;
                }
                c.shutdown(Shutdown::Write).unwrap();
                assert_eq!(
                    read_end(&mut c).unwrap(),
                    b"",
                    "nothing after the last echo"
                );
                moved
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    expect_closed(&p, Direction::Outbound, Outcome::Ok, 40);
    let m = p.metrics();
    let ring = metric_in(&m, "ringmesh_copy_bytes_total{method=\"ring\"}");
    let buffered = metric_in(&m, "ringmesh_copy_bytes_total{method=\"buffer\"}");
    if driver == DriverChoice::Uring {
        assert_eq!(
            (ring, buffered),
            (2 * total, 0),
            "every byte on the ring: {m}"
        );
    } else {
        assert_eq!((ring, buffered), (0, 2 * total), "{m}");
    }
    assert_eq!(metric_in(&m, "ringmesh_copy_ring_handoffs_total"), 0, "{m}");
    assert_eq!(active(&p), 0);
}

fn bulk_after_a_half_close_moves_to_splice(driver: DriverChoice) {
    // A request, the client's FIN, then a large response: the client's direction has ended
    // when the bulk arrives, so the copy that takes over must not run it again.
    let body = pattern(8 << 20);
    let reply = body.clone();
    let srv = server(move |mut s| {
        let req = read_end(&mut s).unwrap();
        assert_eq!(req, b"GET /big");
        s.write_all(&reply).unwrap();
    });
    let p = start(driver, config(""), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    c.write_all(b"GET /big").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let back = read_end(&mut c).unwrap();
    assert!(
        back == body,
        "{} of {} bytes, or different",
        back.len(),
        body.len()
    );
    expect_closed(&p, Direction::Outbound, Outcome::Ok, 1);
    let m = p.metrics();
    let spliced = metric_in(&m, "ringmesh_copy_bytes_total{method=\"splice\"}");
    assert!(spliced > (4 << 20), "the bulk was spliced: {m}");
    let handoffs = metric_in(&m, "ringmesh_copy_ring_handoffs_total");
    let want = u64::from(driver == DriverChoice::Uring);
    assert_eq!(handoffs, want, "{m}");
    assert_eq!(active(&p), 0);
}

fn slow_upstream_reader_loses_nothing(driver: DriverChoice) {
    // The client writes faster than the upstream reads, in small pieces: the proxy holds
    // what it received, pauses, and delivers every byte in order.
    let data = pattern(3 << 20);
    let want = data.clone();
    let (tx, rx) = mpsc::channel();
    let srv = server(move |mut s| {
        let mut got = Vec::new();
        let mut buf = [0; 3000];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            thread::sleep(Duration::from_micros(200));
        }
        s.write_all(b"done").unwrap();
        tx.send(got).unwrap();
    });
    let p = start(driver, config(""), fixed(srv.addr));
    let mut c = connect(p.outbound_addr());
    c.set_nodelay(true).unwrap();
    for piece in data.chunks(1500) {
        c.write_all(piece).unwrap();
    }
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_end(&mut c).unwrap(), b"done");
    let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        got == want,
        "{} of {} bytes, or different",
        got.len(),
        want.len()
    );
    expect_closed(&p, Direction::Outbound, Outcome::Ok, 1);
    assert_eq!(active(&p), 0);
}

fn stalled_reader_leaves_the_ring_to_others(driver: DriverChoice) {
    // One upstream stops reading while its client keeps writing small pieces; on the ring
    // that connection must move to the readiness-driven copy instead of holding the worker's
    // shared buffers, so the other connections keep theirs.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(Some(release_rx));
    let (got_tx, got_rx) = mpsc::channel();
    let first = std::sync::atomic::AtomicBool::new(true);
    let srv = server(move |mut s| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let rx = release_rx.lock().unwrap().take().unwrap();
            rx.recv().unwrap();
            got_tx.send(read_end(&mut s).unwrap().len()).unwrap();
            return;
        }
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            s.write_all(&buf[..n]).unwrap();
        }
    });
    let p = start_with(config(""), options(driver, 1, fixed(srv.addr)));
    let mut stalled = connect(p.outbound_addr());
    stalled.set_nodelay(true).unwrap();
    let size = 24 << 20;
    let writer = thread::spawn(move || {
        let piece = pattern(1000);
        for _ in 0..size / 1000 {
            stalled.write_all(&piece).unwrap();
        }
        stalled.shutdown(Shutdown::Write).unwrap();
    });
    let accepted = srv.accepted.clone();
    wait_until(
        "the stalled connection reaches its upstream",
        Duration::from_secs(10),
        || accepted.load(std::sync::atomic::Ordering::SeqCst) == 1,
    );
    if driver == DriverChoice::Uring {
        wait_until(
            "the stalled connection leaves the ring",
            Duration::from_secs(10),
            || metric(&p, "ringmesh_copy_ring_handoffs_total") == 1,
        );
    }
    let others: Vec<_> = (0..8)
        .map(|i| {
            let addr = p.outbound_addr();
            thread::spawn(move || {
                let mut c = connect(addr);
                for round in 0..50 {
                    roundtrip(&mut c, &pattern(1 + (i * 37 + round * 101) % 3000));
                }
            })
        })
        .collect();
    for t in others {
        t.join().unwrap();
    }
    assert_eq!(metric(&p, "ringmesh_copy_ring_starved_total"), 0);
    release_tx.send(()).unwrap();
    writer.join().unwrap();
    assert_eq!(
        got_rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        size / 1000 * 1000
    );
    expect_closed(&p, Direction::Outbound, Outcome::Ok, 9);
}
