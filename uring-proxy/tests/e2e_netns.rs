//! End to end with the real binaries: two "pods" (network namespaces joined by a veth pair),
//! `mesh-redirect` rules in both, a `uring-proxy` sidecar in both (the client's as uid 1337
//! bypassed by uid, the server's as root bypassed by mark), and plain sockets for the apps.
//! Runs for each rule backend and each driver. Root only; fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::netns::{Pod, ProxyProc, Testbed, bin};

const APP_PORT: u16 = 8080;
const SINK_PORT: u16 = 9000;
const EXCLUDED_PORT: u16 = 9100;
const ECHO_PORT: u16 = 7000;
const PROXY_UID: u32 = 1337;

fn redirect(pod: &Pod, args: &[&str]) {
    let out = pod
        .command(bin("mesh-redirect").to_str().unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mesh-redirect {args:?} in {}: {}{}",
        pod.ns,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Says where each connection arrived from and on which address, then echoes one line.
fn app(pod: &Pod, port: u16) {
    let l = pod.run(|| TcpListener::bind(("::", port)).unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                let reply = format!(
                    "local={} peer={} echo={line}",
                    s.local_addr().unwrap(),
                    ringmesh_core::canonical(s.peer_addr().unwrap())
                );
                s.write_all(reply.as_bytes()).unwrap();
            });
        }
    });
}

/// Reads everything, answers with its SHA-256.
fn sink(pod: &Pod) {
    let l = pod.run(|| TcpListener::bind(("::", SINK_PORT)).unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut h = Sha256::new();
                let mut buf = vec![0; 1 << 20];
                loop {
                    match s.read(&mut buf).unwrap() {
                        0 => break,
                        n => h.update(&buf[..n]),
                    }
                }
                s.write_all(&h.finalize()).unwrap();
            });
        }
    });
}

/// One request from the client pod to `dst`: (what the client saw as its peer, the reply).
fn ask(client: &Pod, dst: SocketAddr, msg: &str) -> (SocketAddr, String) {
    let msg = msg.to_string();
    client.run(move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{msg}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        (s.peer_addr().unwrap(), reply)
    })
}

fn field<'a>(reply: &'a str, key: &str) -> &'a str {
    reply
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {reply:?}"))
}

fn client_config(bed: &Testbed) -> String {
    format!(
        "bypass_mark: 0\nservices:\n  - name: web\n    addrs: [\"10.96.0.10:80\", \"[fd00:96::10]:80\"]\n    endpoints:\n      - addr: \"{}\"\n",
        bed.server.addr4(APP_PORT)
    )
}

struct Mesh {
    bed: Testbed,
    client_proxy: ProxyProc,
    server_proxy: ProxyProc,
}

fn mesh(backend: &str, driver: &str) -> Mesh {
    let bed = Testbed::new();
    let uid = PROXY_UID.to_string();
    let excluded = EXCLUDED_PORT.to_string();
    redirect(
        &bed.client,
        &[
            "install",
            "--backend",
            backend,
            "--proxy-uid",
            &uid,
            "--no-mark",
            "--exclude-outbound-ports",
            &excluded,
        ],
    );
    redirect(
        &bed.server,
        &[
            "install",
            "--backend",
            backend,
            "--exclude-inbound-ports",
            &excluded,
        ],
    );
    redirect(
        &bed.client,
        &[
            "verify",
            "--backend",
            backend,
            "--proxy-uid",
            &uid,
            "--no-mark",
            "--exclude-outbound-ports",
            &excluded,
        ],
    );
    let as_proxy_uid = [
        "setpriv",
        &format!("--reuid={PROXY_UID}"),
        &format!("--regid={PROXY_UID}"),
        "--clear-groups",
    ]
    .map(String::from);
    let as_proxy_uid: Vec<&str> = as_proxy_uid.iter().map(String::as_str).collect();
    let client_proxy = ProxyProc::start(
        &bed.client,
        &client_config(&bed),
        &as_proxy_uid,
        &["--driver", driver],
    );
    let server_proxy = ProxyProc::start(&bed.server, "{}\n", &[], &["--driver", driver]);
    app(&bed.server, APP_PORT);
    app(&bed.server, EXCLUDED_PORT);
    sink(&bed.server);
    Mesh {
        bed,
        client_proxy,
        server_proxy,
    }
}

fn through_both_proxies(backend: &str, driver: &str) {
    let mut m = mesh(backend, driver);
    let (c, s) = (&m.bed.client, &m.bed.server);
    let driver_name = if driver == "uring" {
        "io_uring"
    } else {
        "epoll"
    };
    assert_eq!(
        m.client_proxy
            .metric(&format!("ringmesh_driver{{driver=\"{driver_name}\"}}")),
        1
    );

    // IPv4, the server pod's own address.
    let (peer, reply) = ask(c, s.addr4(APP_PORT), "v4");
    assert_eq!(
        peer,
        s.addr4(APP_PORT),
        "the client sees the address it dialled"
    );
    assert_eq!(
        field(&reply, "local=").rsplit(':').next(),
        Some("8080"),
        "original port kept: {reply}"
    );
    assert!(
        field(&reply, "peer=").starts_with("127.0.0.1:"),
        "came through the inbound proxy: {reply}"
    );
    assert_eq!(field(&reply, "echo="), "v4");

    // A service's virtual address, balanced to its endpoint by the outbound proxy.
    let (peer, reply) = ask(c, "10.96.0.10:80".parse().unwrap(), "vip");
    assert_eq!(peer, "10.96.0.10:80".parse().unwrap());
    assert_eq!(field(&reply, "echo="), "vip");
    assert!(field(&reply, "peer=").starts_with("127.0.0.1:"), "{reply}");

    // IPv6 through the same path.
    let (peer, reply) = ask(c, s.addr6(APP_PORT), "v6");
    assert_eq!(peer, s.addr6(APP_PORT));
    assert_eq!(field(&reply, "echo="), "v6");
    assert!(
        field(&reply, "peer=").starts_with("[::1]:"),
        "came through the inbound proxy: {reply}"
    );

    let outbound = m
        .client_proxy
        .metric("ringmesh_connections_opened_total{direction=\"outbound\"}");
    let inbound = m
        .server_proxy
        .metric("ringmesh_connections_opened_total{direction=\"inbound\"}");
    assert_eq!(
        (outbound, inbound),
        (3, 3),
        "every connection crossed both proxies"
    );
    assert_eq!(
        m.client_proxy
            .metric("ringmesh_outbound_routes_total{route=\"service\"}"),
        1
    );
    // The server pod's v4 address is the service's endpoint; its v6 address is not in the mesh.
    assert_eq!(
        m.client_proxy
            .metric("ringmesh_outbound_routes_total{route=\"endpoint\"}"),
        1
    );
    assert_eq!(
        m.client_proxy
            .metric("ringmesh_outbound_routes_total{route=\"egress\"}"),
        1
    );
    assert!(
        m.client_proxy
            .metric("ringmesh_bytes_total{direction=\"outbound\",from=\"upstream\"}")
            > 0
    );
    // The binary's default plaintext copy: the worker's own ring on io_uring, none on epoll.
    for p in [&m.client_proxy, &m.server_proxy] {
        let ring = p.metric("ringmesh_copy_bytes_total{method=\"ring\"}");
        let workers = p.metric("ringmesh_workers_owned_ring");
        if driver == "uring" {
            assert!(
                ring > 0 && workers > 0,
                "ring bytes {ring}, workers {workers}"
            );
        } else {
            assert_eq!((ring, workers), (0, 0));
        }
    }

    // An excluded port goes straight to the app: neither proxy sees it.
    let (_, reply) = ask(c, s.addr4(EXCLUDED_PORT), "bypass");
    assert_eq!(
        field(&reply, "peer=").split(':').next(),
        Some(c.ip4.to_string().as_str()),
        "{reply}"
    );
    assert_eq!(
        m.client_proxy
            .metric("ringmesh_connections_opened_total{direction=\"outbound\"}"),
        3
    );
    assert_eq!(
        m.server_proxy
            .metric("ringmesh_connections_opened_total{direction=\"inbound\"}"),
        3
    );

    // SIGTERM drains and exits 0.
    assert!(
        m.client_proxy.stop().success(),
        "client proxy exit; log:\n{}",
        m.client_proxy.log()
    );
    assert!(
        m.server_proxy.stop().success(),
        "server proxy exit; log:\n{}",
        m.server_proxy.log()
    );
}

fn gigabyte_byte_exact(driver: &str) {
    let m = mesh("iptables", driver);
    let dst = m.bed.server.addr4(SINK_PORT);
    let (sent, got) = m.bed.client.run(move || {
        let mut s = TcpStream::connect(dst).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut h = Sha256::new();
        let base = support::pattern(1 << 20);
        let mut block = base.clone();
        for i in 0..1024u32 {
            // Every MiB differs, so a lost or repeated block changes the digest.
            for (b, x) in block.iter_mut().zip(&base) {
                *b = x ^ (i as u8);
            }
            block[..4].copy_from_slice(&i.to_le_bytes());
            h.update(&block);
            s.write_all(&block).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        let mut digest = Vec::new();
        s.read_to_end(&mut digest).unwrap();
        (h.finalize().to_vec(), digest)
    });
    assert_eq!(got, sent, "1 GiB arrived byte-exact");
    let up = m
        .client_proxy
        .metric("ringmesh_bytes_total{direction=\"outbound\",from=\"downstream\"}");
    let down = m
        .server_proxy
        .metric("ringmesh_bytes_total{direction=\"inbound\",from=\"downstream\"}");
    assert_eq!(
        (up, down),
        (1 << 30, 1 << 30),
        "both proxies carried every byte"
    );
    for p in [&m.client_proxy, &m.server_proxy] {
        let spliced = p.metric("ringmesh_copy_bytes_total{method=\"splice\"}");
        assert!(spliced > 1 << 29, "the bulk was spliced: {spliced} bytes");
        // On io_uring the stream starts on the owned ring and is handed over to splice.
        let handoffs = p.metric("ringmesh_copy_ring_handoffs_total");
        assert_eq!(handoffs, u64::from(driver == "uring"), "handoffs");
    }
}

/// With the process out of file descriptors, the accept loop backs off instead of spinning,
/// refuses new connections at once, keeps the open ones flowing, and recovers.
fn fd_exhaustion(driver: &str) {
    let bed = Testbed::new();
    redirect(
        &bed.client,
        &["install", "--backend", "iptables", "--no-inbound"],
    );
    let echo = bed
        .server
        .run(|| TcpListener::bind(("::", ECHO_PORT)).unwrap());
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &s, &mut &s);
            });
        }
    });
    let mut proxy = ProxyProc::start(
        &bed.client,
        "{}\n",
        &["prlimit", "--nofile=64:64", "--"],
        &["--driver", driver],
    );
    let dst = bed.server.addr4(ECHO_PORT);
    let exhausted = "ringmesh_accept_errors_total{reason=\"fd_exhausted\"}";
    // A byte that comes back proves the connection is proxied end to end.
    let echoed = |mut s: &TcpStream, msg: &[u8], wait: Duration| -> bool {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut back = vec![0; msg.len()];
        s.write_all(msg).is_ok() && s.read_exact(&mut back).is_ok() && back == msg
    };
    let (held, refused) = bed.client.run(move || {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..100 {
            match TcpStream::connect_timeout(&dst, Duration::from_secs(5)) {
                Ok(s) if echoed(&s, b"x", Duration::from_secs(2)) => held.push(s),
                _ => refused += 1,
            }
            if refused >= 3 {
                break;
            }
        }
        (held, refused)
    });
    assert!(
        refused >= 3,
        "the limit was never reached ({} held)",
        held.len()
    );
    assert!(
        held.len() >= 5,
        "too few connections before the limit: {}",
        held.len()
    );
    assert!(proxy.metric(exhausted) > 0, "{}", proxy.metrics());

    // Exhausted and idle: the accept loop must be sleeping, not spinning.
    let (cpu0, errs0) = (proxy.cpu_time(), proxy.metric(exhausted));
    std::thread::sleep(Duration::from_secs(1));
    let (cpu1, errs1) = (proxy.cpu_time(), proxy.metric(exhausted));
    assert!(
        cpu1 - cpu0 < Duration::from_millis(300),
        "spinning: {:?} of CPU in 1 s",
        cpu1 - cpu0
    );
    assert!(errs1 - errs0 < 50, "{} accept errors in 1 s", errs1 - errs0);

    // Every connection that got in still works end to end, bulk included.
    let big = support::pattern(4 << 20);
    let n = bed.client.run(move || {
        for (i, s) in held.iter().enumerate() {
            assert!(
                echoed(s, format!("still {i}").as_bytes(), Duration::from_secs(5)),
                "connection {i}"
            );
        }
        let mut first = &held[0];
        let mut w = first.try_clone().unwrap();
        let sent = big.clone();
        let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
        let mut back = vec![0; big.len()];
        first
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        first.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == big, "bulk echo differs");
        held.len()
    });
    assert!(n > 0);
    // That bulk wanted to splice, and no pipe could be had: it went through a buffer.
    assert!(
        proxy.metric("ringmesh_copy_splice_fallbacks_total") > 0,
        "{}",
        proxy.metrics()
    );

    // Once they are gone, new connections are served again.
    let ok = bed.client.run(move || {
        let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        echoed(&s, b"recovered", Duration::from_secs(5))
    });
    assert!(ok, "no recovery; log:\n{}", proxy.log());
    assert!(proxy.stop().success(), "{}", proxy.log());
}

mod fd_limit {
    #[test]
    fn io_uring() {
        super::fd_exhaustion("uring");
    }
    #[test]
    fn epoll() {
        super::fd_exhaustion("epoll");
    }
}

/// The demo's topology with mTLS: identities from `meshctl identity serve` (uid 1337 is the
/// client workload, uid 0 the server workload), a strict inbound port, and a capture on the
/// veth between the pods that must show TLS records and never the client's plaintext.
fn mtls_between_pods(driver: &str) {
    let bed = Testbed::new();
    // Declared before the processes that use it, so that it is removed after they stop.
    let dir = support::ScratchDir::new(&format!("ringmesh-e2e-mtls-{}", bed.server.ns));
    let socket = dir.join("workload.sock");
    let client_id = "spiffe://example.org/ns/a/sa/client";
    let server_id = "spiffe://example.org/ns/b/sa/server";
    let mut identity = support::netns::Spawned::new(
        std::process::Command::new(bin("meshctl"))
            .args([
                "identity",
                "serve",
                "--socket",
                socket.to_str().unwrap(),
                "--trust-domain",
                "example.org",
            ])
            .args([
                "--map",
                &format!("{PROXY_UID}={client_id}"),
                "--map",
                &format!("0={server_id}"),
            ]),
        &dir.join("meshctl.log"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "meshctl never bound its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uid = PROXY_UID.to_string();
    redirect(&bed.client, &["install", "--proxy-uid", &uid, "--no-mark"]);
    redirect(&bed.server, &["install"]);
    let identity_cfg = format!(
        "identity: {{ source: workload_api, socket: \"{}\" }}\n",
        socket.display()
    );
    let client_cfg = format!(
        "bypass_mark: 0\n{identity_cfg}services:\n  - name: web\n    addrs: [\"10.96.0.10:80\"]\n    endpoints: [{{ addr: \"{}\", identity: \"{server_id}\" }}]\n",
        bed.server.addr4(APP_PORT)
    );
    let as_proxy_uid = [
        format!("--reuid={PROXY_UID}"),
        format!("--regid={PROXY_UID}"),
    ];
    let mut client_proxy = ProxyProc::start(
        &bed.client,
        &client_cfg,
        &[
            "setpriv",
            &as_proxy_uid[0],
            &as_proxy_uid[1],
            "--clear-groups",
        ],
        &["--driver", driver],
    );
    let mut server_proxy = ProxyProc::start(
        &bed.server,
        &format!("{identity_cfg}inbound: {{ mode: strict }}\n"),
        &[],
        &["--driver", driver],
    );
    app(&bed.server, APP_PORT);

    // Capture everything on the server pod's side of the link.
    let pcap = dir.join("link.pcap");
    let mut capture = support::netns::Spawned::new(
        bed.server.command("tcpdump").args([
            "--immediate-mode",
            "-i",
            &bed.server_if,
            "-U",
            "-s",
            "0",
            "-w",
            pcap.to_str().unwrap(),
            "tcp",
        ]),
        &dir.join("tcpdump.log"),
    );
    support::wait_until("tcpdump listening", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("tcpdump.log")).is_ok_and(|l| l.contains("listening on"))
    });

    let marker = format!("PLAINTEXT-MARKER-{}", std::process::id());
    let (_, reply) = ask(&bed.client, "10.96.0.10:80".parse().unwrap(), &marker);
    assert_eq!(
        field(&reply, "echo="),
        marker,
        "the app got the bytes, through both sidecars"
    );
    assert!(field(&reply, "peer=").starts_with("127.0.0.1:"), "{reply}");
    // Both application data records (the request and the reply) are in the capture.
    support::wait_until("the exchange captured", Duration::from_secs(10), || {
        std::fs::read(&pcap).is_ok_and(|w| w.windows(3).filter(|x| x == &[0x17, 3, 3]).count() >= 2)
    });
    capture.interrupt();

    let wire = std::fs::read(&pcap).unwrap();
    assert!(
        !wire.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext on the wire"
    );
    assert!(
        wire.windows(3).any(|w| w == [0x16, 0x03, 0x01]),
        "a TLS ClientHello on the wire"
    );
    assert!(
        wire.windows(3).any(|w| w == [0x17, 0x03, 0x03]),
        "TLS application data on the wire"
    );

    assert_eq!(
        client_proxy.metric("ringmesh_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}"),
        1
    );
    assert_eq!(
        server_proxy
            .metric("ringmesh_connections_security_total{direction=\"inbound\",security=\"mtls\"}"),
        1
    );
    let ids = |p: &ProxyProc| {
        p.pod
            .run(|| support::http_get("127.0.0.1:15000".parse().unwrap(), "/identity").1)
    };
    assert!(
        ids(&client_proxy).contains(client_id),
        "{}",
        ids(&client_proxy)
    );
    assert!(
        ids(&server_proxy).contains(server_id),
        "{}",
        ids(&server_proxy)
    );
    assert!(client_proxy.stop().success());
    assert!(server_proxy.stop().success());
    identity.interrupt();
}

mod mtls {
    #[test]
    fn io_uring() {
        super::mtls_between_pods("uring");
    }
    #[test]
    fn epoll() {
        super::mtls_between_pods("epoll");
    }
}

mod iptables {
    #[test]
    fn io_uring() {
        super::through_both_proxies("iptables", "uring");
    }
    #[test]
    fn epoll() {
        super::through_both_proxies("iptables", "epoll");
    }
}

mod nftables {
    #[test]
    fn io_uring() {
        super::through_both_proxies("nftables", "uring");
    }
    #[test]
    fn epoll() {
        super::through_both_proxies("nftables", "epoll");
    }
}

mod gigabyte {
    #[test]
    fn io_uring() {
        super::gigabyte_byte_exact("uring");
    }
    #[test]
    fn epoll() {
        super::gigabyte_byte_exact("epoll");
    }
}
