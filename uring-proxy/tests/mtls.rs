//! Mutual TLS between two in-process proxies with identities from the real development
//! Workload API server, on both drivers: the app's client talks plaintext to the outbound
//! proxy, which talks mTLS to the inbound proxy, which talks plaintext to the app.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_core::metrics::{Direction, Outcome};
use support::mesh::{self, CLIENT_ID, Identities, SERVER_ID};
use support::*;
use uring_proxy::{DriverChoice, Proxy};

both_drivers!(
    mtls_echo_and_only_tls_on_the_wire,
    rotation_under_load_drops_nothing,
    identity_source_gone_serves_until_expiry_then_fails_closed,
    foreign_ca_and_denied_identity_never_reach_the_app,
    strict_refuses_plaintext_permissive_passes_it,
    outbound_refuses_the_wrong_server_identity,
    files_identity_is_reread_and_a_bad_file_changes_nothing,
    fin_without_close_notify_resets_the_client,
    handshake_timeouts_both_ways,
    no_session_tickets,
);

fn server_proxy(driver: DriverChoice, ids: &Identities, app: SocketAddr, extra: &str) -> Proxy {
    let cfg = config(&format!(
        "identity: {{ source: workload_api, socket: \"{}\" }}\n{extra}",
        ids.socket("server").display()
    ));
    start(driver, cfg, fixed(app))
}

/// The outbound proxy: the service `web` at 10.96.0.10:80 is the endpoint `peer`, which must
/// be `peer_id`.
fn client_proxy(driver: DriverChoice, ids: &Identities, peer: SocketAddr, peer_id: &str) -> Proxy {
    let cfg = config(&format!(
        "identity: {{ source: workload_api, socket: \"{}\" }}\nservices: [{{ name: web, addrs: [\"10.96.0.10:80\"], endpoints: [{{ addr: \"{peer}\", identity: \"{peer_id}\" }}] }}]",
        ids.socket("client").display()
    ));
    start(driver, cfg, fixed("10.96.0.10:80".parse().unwrap()))
}

/// Relays one connection and keeps every byte that went from the client proxy to the server
/// proxy: what a packet capture between the two would see.
fn tap(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    thread::spawn(move || {
        for down in l.incoming().flatten() {
            let up = TcpStream::connect(to).unwrap();
            let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            let record = record.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut down = down;
                loop {
                    match down.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                            if u2.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = u2.shutdown(Shutdown::Write);
            });
            thread::spawn(move || {
                let mut up = up;
                let _ = std::io::copy(&mut up, &mut d2);
                let _ = d2.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

fn mtls_echo_and_only_tls_on_the_wire(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    let app = echo_server();
    let sp = server_proxy(driver, &ids, app.addr, "inbound: { mode: strict }");
    let (wire, seen) = tap(sp.inbound_addr());
    let cp = client_proxy(driver, &ids, wire, SERVER_ID);

    let mut c = connect(cp.outbound_addr());
    let marker = b"PLAINTEXT-MARKER-7f3a";
    roundtrip(&mut c, marker);
    let data = pattern(3 << 20);
    let back = echo_all(&mut c, &data);
    assert!(
        back == data,
        "echo through mTLS differs ({} of {} bytes)",
        back.len(),
        data.len()
    );
    expect_closed(&cp, Direction::Outbound, Outcome::Ok, 1);
    expect_closed(&sp, Direction::Inbound, Outcome::Ok, 1);

    let wire = seen.lock().unwrap().clone();
    assert_eq!(
        wire.first(),
        Some(&0x16),
        "the first byte on the wire is a TLS handshake record"
    );
    assert!(
        !wire.windows(marker.len()).any(|w| w == marker),
        "plaintext leaked onto the wire"
    );
    assert!(
        wire.len() > data.len(),
        "all of it crossed the wire, encrypted"
    );

    for (p, dir) in [(&cp, "outbound"), (&sp, "inbound")] {
        assert_eq!(
            metric(
                p,
                &format!("ringmesh_tls_handshakes_total{{direction=\"{dir}\",result=\"ok\"}}")
            ),
            1
        );
        assert_eq!(
            metric(
                p,
                &format!(
                    "ringmesh_connections_security_total{{direction=\"{dir}\",security=\"mtls\"}}"
                )
            ),
            1
        );
    }
    let admin = sp.admin_addr().unwrap();
    let (code, body) = http_get(admin, "/identity");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["spiffe_id"], SERVER_ID);
    assert_eq!(v["valid"], true);
    assert!(metric(&cp, "ringmesh_identity_valid") == 1);
    assert_eq!(
        metric(
            &cp,
            &format!("ringmesh_identity_info{{spiffe_id=\"{CLIENT_ID}\"}}")
        ),
        1
    );
}

fn rotation_under_load_drops_nothing(driver: DriverChoice) {
    // A 2 s TTL: the server streams a new SVID every second.
    let ids = Identities::start(Duration::from_secs(2));
    let app = echo_server();
    let sp = server_proxy(driver, &ids, app.addr, "");
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), SERVER_ID);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let exchanges = Arc::new(AtomicU64::new(0));

    // Long-lived connections, talking all the time.
    let mut workers = Vec::new();
    for i in 0..4u8 {
        let (stop, failures, exchanges) = (stop.clone(), failures.clone(), exchanges.clone());
        let addr = cp.outbound_addr();
        workers.push(thread::spawn(move || {
            let mut c = connect(addr);
            while !stop.load(Ordering::Relaxed) {
                let msg = [i; 512];
                let mut back = [0u8; 512];
                if c.write_all(&msg)
                    .and_then(|()| c.read_exact(&mut back))
                    .is_err()
                    || back != msg
                {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                exchanges.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    // New connections (new handshakes) all the time.
    {
        let (stop, failures, exchanges) = (stop.clone(), failures.clone(), exchanges.clone());
        let addr = cp.outbound_addr();
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut c = connect(addr);
                let mut back = [0u8; 5];
                if c.write_all(b"fresh")
                    .and_then(|()| c.read_exact(&mut back))
                    .is_err()
                {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                exchanges.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    // Meanwhile, handshake with the server proxy directly now and then: each new handshake
    // must present the SVID currently in force.
    let mut serials = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        let (mut s, capture) = mesh::tls_client(
            sp.inbound_addr(),
            Some(ids.mint(CLIENT_ID, Duration::from_secs(60))),
        );
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        let presented = mesh::serial(&capture.0.lock().unwrap()[0]);
        // A clean end: close_notify (a TLS stream without one is an error).
        s.conn.send_close_notify();
        s.flush().unwrap();
        let (_, body) = http_get(sp.admin_addr().unwrap(), "/identity");
        let in_force: serde_json::Value = serde_json::from_str(&body).unwrap();
        serials.push((presented, in_force["serial"].as_str().unwrap().to_string()));
        thread::sleep(Duration::from_millis(700));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a connection failed during rotation"
    );
    assert!(
        exchanges.load(Ordering::Relaxed) > 1000,
        "{} exchanges",
        exchanges.load(Ordering::Relaxed)
    );
    for p in [&cp, &sp] {
        assert!(
            metric(p, "ringmesh_identity_rotations_total") >= 20,
            "{}",
            p.metrics()
        );
        let failed = p
            .shards()
            .iter()
            .map(|s| {
                s.handshake_count(
                    Direction::Outbound,
                    ringmesh_core::metrics::HandshakeResult::Failed,
                ) + s.handshake_count(
                    Direction::Inbound,
                    ringmesh_core::metrics::HandshakeResult::Failed,
                )
            })
            .sum::<u64>();
        assert_eq!(failed, 0, "no handshake fails");
        assert_eq!(
            closed(p, Direction::Outbound, Outcome::UpstreamError)
                + closed(p, Direction::Inbound, Outcome::DownstreamError),
            0
        );
    }
    let distinct: std::collections::BTreeSet<_> = serials.iter().map(|(p, _)| p.clone()).collect();
    assert!(
        distinct.len() >= 20,
        "new handshakes show new serials: {} distinct in {}",
        distinct.len(),
        serials.len()
    );
    // The presented serial is the one in force (allowing for a rotation between the two looks).
    let matching = serials.iter().filter(|(p, f)| p == f).count();
    assert!(
        matching * 10 >= serials.len() * 7,
        "{matching} of {} matched",
        serials.len()
    );
}

fn identity_source_gone_serves_until_expiry_then_fails_closed(driver: DriverChoice) {
    let mut ids = Identities::start(Duration::from_secs(4));
    let app = echo_server();
    let sp = server_proxy(driver, &ids, app.addr, "");
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), SERVER_ID);
    let mut c = connect(cp.outbound_addr());
    roundtrip(&mut c, b"before");
    ids.stop();
    // Still within the SVID's life: new meshed connections work.
    let mut c2 = connect(cp.outbound_addr());
    roundtrip(&mut c2, b"after the source left");
    wait_until(
        "the source's failure is noticed",
        Duration::from_secs(10),
        || metric(&cp, "ringmesh_identity_source_errors_total") > 0,
    );
    // Then the SVID expires: fail closed.
    wait_until("the SVID expires", Duration::from_secs(10), || {
        metric(&cp, "ringmesh_identity_valid") == 0
    });
    assert!(!cp.is_ready(), "no SVID, not ready");
    assert_eq!(http_get(cp.admin_addr().unwrap(), "/ready").0, 503);
    let mut late = connect(cp.outbound_addr());
    let _ = late.write_all(b"nope");
    assert!(
        read_end(&mut late).map(|b| b.is_empty()).unwrap_or(true),
        "no byte through without an SVID"
    );
    expect_closed(&cp, Direction::Outbound, Outcome::NoIdentity, 1);
    assert_eq!(
        metric(
            &cp,
            "ringmesh_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}"
        ),
        2,
        "never plaintext"
    );
}

fn foreign_ca_and_denied_identity_never_reach_the_app(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    let app = echo_server();
    let sp = server_proxy(
        driver,
        &ids,
        app.addr,
        &format!(
            "access: {{ default: deny, rules: [{{ destination: {{ port: {} }}, sources: [\"{CLIENT_ID}\"] }}] }}",
            app.addr.port()
        ),
    );
    // Another CA, same trust domain name: the chain does not lead to our bundle.
    let other = Identities::start(Duration::from_secs(3600));
    let (mut s, _) = mesh::tls_client(
        sp.inbound_addr(),
        Some(other.mint(CLIENT_ID, Duration::from_secs(60))),
    );
    assert!(
        s.write_all(b"secret")
            .and_then(|()| s.flush())
            .and_then(|()| s.read(&mut [0u8; 8]))
            .map(|n| n > 0)
            .ok()
            != Some(true)
    );
    // No client certificate at all.
    let (mut s, _) = mesh::tls_client(sp.inbound_addr(), None);
    assert!(
        s.write_all(b"secret")
            .and_then(|()| s.read(&mut [0u8; 8]))
            .map(|n| n > 0)
            .ok()
            != Some(true)
    );
    wait_until("both handshakes failed", Duration::from_secs(5), || {
        metric(
            &sp,
            "ringmesh_tls_handshakes_total{direction=\"inbound\",result=\"failed\"}",
        ) == 2
    });
    // A valid SVID whose identity the policy does not list.
    let intruder = "spiffe://example.org/ns/x/sa/intruder";
    let (mut s, _) = mesh::tls_client(
        sp.inbound_addr(),
        Some(ids.mint(intruder, Duration::from_secs(60))),
    );
    let _ = s.write_all(b"secret");
    assert!(
        s.read(&mut [0u8; 8]).map(|n| n > 0).ok() != Some(true),
        "denied, no answer"
    );
    expect_closed(&sp, Direction::Inbound, Outcome::AccessDenied, 1);
    assert_eq!(
        metric(
            &sp,
            &format!("ringmesh_access_denied_total{{source=\"{intruder}\"}}")
        ),
        1
    );
    // The listed identity passes.
    let (mut s, _) = mesh::tls_client(
        sp.inbound_addr(),
        Some(ids.mint(CLIENT_ID, Duration::from_secs(60))),
    );
    s.write_all(b"friend").unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"friend");
    assert_eq!(
        app.accepted.load(Ordering::SeqCst),
        1,
        "only the allowed peer reached the app"
    );
}

fn strict_refuses_plaintext_permissive_passes_it(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    let app = echo_server();
    let strict = server_proxy(driver, &ids, app.addr, "inbound: { mode: strict }");
    let mut c = connect(strict.inbound_addr());
    let _ = c.write_all(b"plain");
    assert!(read_end(&mut c).map(|b| b.is_empty()).unwrap_or(true));
    expect_closed(&strict, Direction::Inbound, Outcome::PlaintextRefused, 1);
    assert_eq!(
        app.accepted.load(Ordering::SeqCst),
        0,
        "the app saw nothing"
    );

    let permissive = server_proxy(
        driver,
        &ids,
        app.addr,
        "inbound: { mode: strict, ports: { 1: strict } }\n",
    );
    drop(permissive);
    let permissive = server_proxy(
        driver,
        &ids,
        app.addr,
        &format!(
            "inbound: {{ mode: strict, ports: {{ {}: permissive }} }}",
            app.addr.port()
        ),
    );
    let mut c = connect(permissive.inbound_addr());
    roundtrip(&mut c, b"plain and allowed");
    assert_eq!(
        metric(
            &permissive,
            "ringmesh_connections_security_total{direction=\"inbound\",security=\"plaintext\"}"
        ),
        1
    );
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
}

fn outbound_refuses_the_wrong_server_identity(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    // Counts what reaches the app.
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let app = server(move |mut s| {
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            r.fetch_add(n as u64, Ordering::SeqCst);
        }
    });
    let sp = server_proxy(driver, &ids, app.addr, "");
    let cp = client_proxy(
        driver,
        &ids,
        sp.inbound_addr(),
        "spiffe://example.org/ns/b/sa/someone-else",
    );
    let mut c = connect(cp.outbound_addr());
    let _ = c.write_all(b"for someone else");
    assert!(read_end(&mut c).map(|b| b.is_empty()).unwrap_or(true));
    expect_closed(&cp, Direction::Outbound, Outcome::IdentityMismatch, 1);
    // The identity is checked inside the handshake: the client proxy aborted it, so the
    // server proxy's handshake failed and it never dialled its app.
    expect_closed(&sp, Direction::Inbound, Outcome::TlsError, 1);
    assert_eq!(
        app.accepted.load(Ordering::SeqCst),
        0,
        "the far app saw no connection"
    );
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "no byte reached the app"
    );
}

/// Writes an SVID for `id` (chain, key, bundle) as PEM files in `dir`.
fn write_svid(ids: &Identities, dir: &std::path::Path, id: &str) {
    use ringmesh_ctrl::pem::encode;
    let (chain, key) = ids.mint(id, Duration::from_secs(3600));
    let chain_pem: String = chain
        .iter()
        .map(|c| encode("CERTIFICATE", c.as_ref()))
        .collect();
    let bundle_pem: String = ids
        .server
        .ca
        .bundle()
        .iter()
        .map(|c| encode("CERTIFICATE", c.as_ref()))
        .collect();
    std::fs::write(dir.join("svid.pem"), chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), encode("PRIVATE KEY", key.secret_der())).unwrap();
    std::fs::write(dir.join("bundle.pem"), bundle_pem).unwrap();
}

fn files_identity_is_reread_and_a_bad_file_changes_nothing(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    let dir = ids.dir.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    write_svid(&ids, &dir, SERVER_ID);
    let app = echo_server();
    let cfg = config(&format!(
        "identity: {{ source: files, cert: \"{0}/svid.pem\", key: \"{0}/key.pem\", bundle: \"{0}/bundle.pem\" }}",
        dir.display()
    ));
    let sp = start(driver, cfg, fixed(app.addr));
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), SERVER_ID);
    let mut c = connect(cp.outbound_addr());
    roundtrip(&mut c, b"from files");
    let serial = || {
        let (_, body) = http_get(sp.admin_addr().unwrap(), "/identity");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["serial"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let first = serial();
    assert!(!first.is_empty());

    // New files: a new SVID, applied without a restart; the open connection stays up.
    write_svid(&ids, &dir, SERVER_ID);
    wait_until("the new SVID is read", Duration::from_secs(5), || {
        serial() != first
    });
    assert_eq!(metric(&sp, "ringmesh_identity_rotations_total"), 1);
    roundtrip(&mut c, b"still up");
    let (mut s, capture) = mesh::tls_client(
        sp.inbound_addr(),
        Some(ids.mint(CLIENT_ID, Duration::from_secs(60))),
    );
    s.write_all(b"x").unwrap();
    s.read_exact(&mut [0u8; 1]).unwrap();
    assert_eq!(
        mesh::serial(&capture.0.lock().unwrap()[0]),
        serial(),
        "new handshakes show the new SVID"
    );

    // A broken file is refused; the SVID in force keeps serving.
    let second = serial();
    std::fs::write(dir.join("svid.pem"), "not a certificate").unwrap();
    wait_until("the bad file is noticed", Duration::from_secs(5), || {
        metric(&sp, "ringmesh_identity_source_errors_total") >= 1
    });
    assert_eq!(serial(), second);
    let mut c2 = connect(cp.outbound_addr());
    roundtrip(&mut c2, b"after a bad file");
}

/// A peer proxy impostor with a valid SVID for `SERVER_ID`, scripted by `script`: the real
/// server side of a mesh handshake, then whatever the script does with the stream.
fn fake_server_proxy(
    ids: &Identities,
    script: impl Fn(rustls::StreamOwned<rustls::ServerConnection, TcpStream>) + Send + Sync + 'static,
) -> SocketAddr {
    let (chain, key) = ids.mint(SERVER_ID, Duration::from_secs(600));
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"ringmesh".to_vec()];
    let cfg = Arc::new(cfg);
    let script = Arc::new(script);
    let srv = server(move |s| {
        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
        script(rustls::StreamOwned::new(conn, s));
    });
    srv.addr
}

fn fin_without_close_notify_resets_the_client(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    // Reads the request, sends half a response, then ends the TCP stream with a FIN and no
    // close_notify: what an attacker who injects a FIN mid-response produces.
    let peer = fake_server_proxy(&ids, |mut tls| {
        let mut req = [0u8; 7];
        tls.read_exact(&mut req).unwrap();
        tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
            .unwrap();
        tls.flush().unwrap();
        tls.sock.shutdown(Shutdown::Write).unwrap();
        thread::sleep(Duration::from_secs(2));
    });
    let cp = client_proxy(driver, &ids, peer, SERVER_ID);
    let mut c = connect(cp.outbound_addr());
    c.write_all(b"GET / \n").unwrap();
    let mut got = Vec::new();
    let err = loop {
        let mut buf = [0u8; 1024];
        match c.read(&mut buf) {
            Ok(0) => panic!(
                "a clean end of stream after {:?}: the truncation was hidden",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A signal to the test process (another test's) interrupts the call: not an end.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break e,
        }
    };
    assert!(is_reset(&err), "{err}");
    assert!(
        got.ends_with(b"half"),
        "the bytes before the FIN arrive: {got:?}"
    );
    expect_closed(&cp, Direction::Outbound, Outcome::UpstreamError, 1);
}

fn handshake_timeouts_both_ways(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    // Outbound: the peer accepts TCP and never answers the ClientHello.
    let silent = server(|s| {
        thread::sleep(Duration::from_secs(5));
        drop(s);
    });
    let cfg = config(&format!(
        "identity: {{ source: workload_api, socket: \"{}\" }}\ntimeouts: {{ handshake: 300ms }}\nservices: [{{ name: web, addrs: [\"10.96.0.10:80\"], endpoints: [{{ addr: \"{}\", identity: \"{SERVER_ID}\" }}] }}]",
        ids.socket("client").display(),
        silent.addr
    ));
    let cp = start(driver, cfg, fixed("10.96.0.10:80".parse().unwrap()));
    let t0 = Instant::now();
    let mut c = connect(cp.outbound_addr());
    let _ = c.write_all(b"x");
    let _ = read_end(&mut c);
    expect_closed(&cp, Direction::Outbound, Outcome::TlsError, 1);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(
        metric(
            &cp,
            "ringmesh_tls_handshakes_total{direction=\"outbound\",result=\"failed\"}"
        ),
        1
    );

    // Inbound: a client sends a mesh ClientHello, then nothing.
    let app = echo_server();
    let sp = server_proxy(driver, &ids, app.addr, "timeouts: { handshake: 300ms }");
    let (mut tls, _) = mesh::tls_client(
        sp.inbound_addr(),
        Some(ids.mint(CLIENT_ID, Duration::from_secs(60))),
    );
    let mut hello = Vec::new();
    tls.conn.write_tls(&mut hello).unwrap();
    tls.sock.write_all(&hello).unwrap();
    let t0 = Instant::now();
    expect_closed(&sp, Direction::Inbound, Outcome::TlsError, 1);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(app.accepted.load(Ordering::SeqCst), 0);
}

fn no_session_tickets(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    let app = echo_server();
    let sp = server_proxy(driver, &ids, app.addr, "");
    let (mut tls, _) = mesh::tls_client(
        sp.inbound_addr(),
        Some(ids.mint(CLIENT_ID, Duration::from_secs(60))),
    );
    tls.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    // Tickets arrive after the handshake, before application data: by now they would have.
    assert_eq!(
        tls.conn.tls13_tickets_received(),
        0,
        "the server minted session tickets"
    );
    tls.conn.send_close_notify();
    tls.flush().unwrap();
}
