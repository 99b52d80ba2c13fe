//! Inbound protocol detection with real third-party TLS: openssl's `s_server` as an app that
//! speaks its own TLS, curl and `s_client` as its clients, through the inbound proxy on
//! loopback; and the peers detection must not wait on forever. Also the health port, which
//! makes the kubelet's probes of a strict app (plain HTTP, s_server's HTTPS, TCP) itself.
//! Both drivers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringmesh_core::metrics::{Direction, Outcome};
use support::*;
use uring_proxy::{DriverChoice, Proxy};

both_drivers!(
    app_tls_passes_a_permissive_port_untouched,
    app_tls_is_refused_on_a_strict_port,
    truncated_hello_and_silent_peer_are_closed_in_time,
    server_first_protocol_passes_a_permissive_port,
    kubelet_probes_of_a_strict_app_go_through_the_health_port,
);

/// A TLS server the proxy did not write: `openssl s_server`, killed on drop.
struct SServer {
    child: Child,
    addr: SocketAddr,
    _dir: Scratch,
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("ringmesh-detect-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("app.crt"), dir.join("app.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=app.local", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (make deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// `s_server` on a free loopback port, in `mode` (`-www`: an HTTPS status page, `-rev`:
/// echoes each line reversed).
fn s_server(name: &str, mode: &str) -> SServer {
    let dir = scratch(name);
    let (cert, key) = self_signed(&dir.0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &addr.to_string(),
            mode,
            "-cert",
        ])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("s_server listening", Duration::from_secs(10), || {
        TcpStream::connect(addr).is_ok()
    });
    SServer {
        child,
        addr,
        _dir: dir,
    }
}

/// An inbound proxy whose every connection was going to `app`, with `inbound` as its policy.
fn inbound_proxy(driver: DriverChoice, app: SocketAddr, inbound: &str) -> Proxy {
    start(
        driver,
        config(&format!(
            "timeouts: {{ first_byte: 300ms }}\ninbound: {inbound}"
        )),
        fixed(app),
    )
}

fn curl(addr: SocketAddr) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--insecure", "--max-time", "10"])
        .arg(format!("https://{addr}/"))
        .output()
        .unwrap()
}

fn app_tls_passes_a_permissive_port_untouched(driver: DriverChoice) {
    // curl speaks HTTPS to an app that terminates its own TLS; the proxy must not try a mesh
    // handshake (curl's ALPN is h2/http/1.1, not ours).
    let www = s_server("www", "-www");
    let p = inbound_proxy(driver, www.addr, "{ mode: permissive }");
    let out = curl(p.inbound_addr());
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("s_server"), "{body}");
    expect_closed(&p, Direction::Inbound, Outcome::Ok, 1);
    assert_eq!(
        metric(&p, "ringmesh_inbound_detected_total{protocol=\"app_tls\"}"),
        1
    );
    assert_eq!(
        metric(
            &p,
            "ringmesh_connections_security_total{direction=\"inbound\",security=\"app_tls\"}"
        ),
        1
    );

    // Byte-exact both ways: s_client to an s_server that echoes each line reversed.
    let rev = s_server("rev", "-rev");
    let p = inbound_proxy(driver, rev.addr, "{ mode: permissive }");
    let line: String = pattern(6000)
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &p.inbound_addr().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdin
        .as_mut()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let mut back = vec![0u8; line.len() + 1];
    client
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut back)
        .unwrap();
    let _ = client.kill();
    let _ = client.wait();
    let want: String = line.chars().rev().collect();
    assert_eq!(String::from_utf8(back).unwrap(), format!("{want}\n"));
}

fn app_tls_is_refused_on_a_strict_port(driver: DriverChoice) {
    let www = s_server("strict", "-www");
    let p = inbound_proxy(driver, www.addr, "{ mode: strict }");
    let out = curl(p.inbound_addr());
    assert!(!out.status.success(), "curl got through a strict port");
    expect_closed(&p, Direction::Inbound, Outcome::AppTlsRefused, 1);
    assert_eq!(
        metric(
            &p,
            "ringmesh_connections_refused_total{direction=\"inbound\",reason=\"app_tls_refused\"}"
        ),
        1
    );
}

/// The first 40 bytes of a real ClientHello, offering our ALPN.
fn truncated_hello() -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"ringmesh".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("x.y").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out.truncate(40);
    out
}

/// Sends `bytes`, then waits for the proxy to end the connection; returns how long it took.
fn closed_after(p: &Proxy, bytes: &[u8]) -> Duration {
    let mut c = connect(p.inbound_addr());
    let t0 = Instant::now();
    if !bytes.is_empty() {
        c.write_all(bytes).unwrap();
    }
    let _ = read_end(&mut c);
    t0.elapsed()
}

fn truncated_hello_and_silent_peer_are_closed_in_time(driver: DriverChoice) {
    let app = echo_server();
    for mode in ["permissive", "strict"] {
        let p = inbound_proxy(driver, app.addr, &format!("{{ mode: {mode} }}"));
        let took = closed_after(&p, &truncated_hello());
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{mode}: a truncated ClientHello was closed after {took:?} (timeout 300ms)"
        );
        expect_closed(&p, Direction::Inbound, Outcome::TruncatedHello, 1);
        // And one that gives up half way is not waited on.
        let mut c = connect(p.inbound_addr());
        c.write_all(&truncated_hello()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = read_end(&mut c);
        expect_closed(&p, Direction::Inbound, Outcome::TruncatedHello, 2);
    }
    // A silent peer on a strict port is plaintext, refused once the timeout passes.
    let p = inbound_proxy(driver, app.addr, "{ mode: strict }");
    let took = closed_after(&p, &[]);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "a silent peer was closed after {took:?}"
    );
    expect_closed(&p, Direction::Inbound, Outcome::PlaintextRefused, 1);
    assert_eq!(
        metric(&p, "ringmesh_inbound_detected_total{protocol=\"silent\"}"),
        1
    );
    assert_eq!(app.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

fn server_first_protocol_passes_a_permissive_port(driver: DriverChoice) {
    // An SMTP-like app greets first; its client waits for the greeting.
    let app = server(|mut s| {
        s.write_all(b"220 ready\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = s.write_all(&buf[..n]);
    });
    let p = inbound_proxy(driver, app.addr, "{ mode: permissive }");
    let mut c = connect(p.inbound_addr());
    let mut greeting = [0u8; 11];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    roundtrip(&mut c, b"HELO x\r\n");
    assert_eq!(
        metric(&p, "ringmesh_inbound_detected_total{protocol=\"silent\"}"),
        1
    );
}

/// A plain HTTP app: `/healthz` answers 200 when the probe's header came along (400 when it
/// did not), anything else 500.
fn http_app() -> Server {
    server(|mut s| {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let req = String::from_utf8_lossy(&req).to_ascii_lowercase();
        let status = if req.starts_with("get /healthz ") {
            if req.contains("\r\nx-probe: kubelet\r\n") {
                "200 OK"
            } else {
                "400 Bad Request"
            }
        } else {
            "500 Internal Server Error"
        };
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        );
    })
}

fn kubelet_probes_of_a_strict_app_go_through_the_health_port(driver: DriverChoice) {
    let app = http_app();
    let tls_app = s_server("probe-https", "-www");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probes = format!(
        r#"{{
        "/app-health/web/readiness": {{"httpGet": {{"path": "/healthz", "port": {p},
            "httpHeaders": [{{"name": "X-Probe", "value": "kubelet"}}]}}}},
        "/app-health/web/startup": {{"httpGet": {{"path": "/healthz", "port": {p}}}}},
        "/app-health/web/liveness": {{"httpGet": {{"path": "/other", "port": {p}}}, "timeoutSeconds": 2}},
        "/app-health/tls/readiness": {{"httpGet": {{"path": "/", "port": {t}, "scheme": "HTTPS"}}}},
        "/app-health/tcp/liveness": {{"tcpSocket": {{"port": {p}}}}},
        "/app-health/gone/liveness": {{"tcpSocket": {{"port": {closed}}}}}
    }}"#,
        p = app.addr.port(),
        t = tls_app.addr.port(),
    );
    let mut opts = options(driver, 2, fixed(app.addr));
    opts.health = Some("127.0.0.1:0".parse().unwrap());
    opts.app_probes = std::sync::Arc::new(uring_proxy::health::AppProbes::parse(&probes).unwrap());
    let p = start_with(config("inbound: { mode: strict }"), opts);
    let health = p.health_addr().expect("health port bound");
    // The app port itself refuses the kubelet's plaintext: strict.
    let mut direct = connect(p.inbound_addr());
    let _ = write!(direct, "GET /healthz HTTP/1.0\r\n\r\n");
    assert!(
        read_end(&mut direct).map(|b| b.is_empty()).unwrap_or(true),
        "strict port answered plaintext"
    );
    for (path, want) in [
        ("/app-health/web/readiness", 200),
        ("/app-health/web/startup", 400),
        ("/app-health/web/liveness", 500),
        ("/app-health/tls/readiness", 200),
        ("/app-health/tcp/liveness", 200),
        ("/app-health/gone/liveness", 503),
        ("/app-health/web/unknown", 404),
        ("/ready", 200),
        ("/live", 200),
        // The admin endpoints stay on loopback's admin port.
        ("/config", 404),
        ("/identity", 404),
    ] {
        let (status, body) = http_get(health, path);
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, body) = http_get(health, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("ringmesh_"), "{body}");
    drop(tls_app);
    let (status, body) = http_get(health, "/app-health/tls/readiness");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connect"), "{body}");
}
