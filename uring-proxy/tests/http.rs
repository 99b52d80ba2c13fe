//! HTTP/1.1, h2c and gRPC through two in-process proxies with mTLS between them, on both
//! drivers, driven by curl and grpcio: requests counted and routed one by one, upstream
//! connections pooled, L7 access control, failures answered as HTTP, malformed requests
//! refused before the app.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use support::mesh::{CLIENT_ID, Identities, SERVER_ID};
use support::*;
use uring_proxy::{DriverChoice, Proxy};

both_drivers!(
    keep_alive_requests_through_two_sidecars,
    bodies_stream_both_ways_byte_exact,
    connection_per_request_reuses_pooled_mtls,
    access_by_route_answers_403,
    failures_answer_as_http,
    malformed_http_never_reaches_the_app,
    opaque_tcp_keeps_its_path,
    websocket_upgrade_is_a_tunnel,
    http1_over_http2_between_proxies,
    websockets_from_a_peer_nobody_here_wrote,
    http2_prior_knowledge_through_two_sidecars,
    grpc_from_a_peer_nobody_here_wrote,
    traces_and_access_log,
    a_dead_collector_costs_requests_nothing,
);

/// An HTTP/1.1 and h2c app (hyper on its own tokio thread): `/echo` streams the request body
/// back, `/status/N` answers N, `/version` the HTTP version it was asked in, anything else
/// answers `METHOD path`, `/headers` the names of the headers it got. It keeps what it was
/// asked.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    conns: Arc<AtomicU64>,
}

fn app() -> App {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(AtomicU64::new(0));
    let (s, c) = (seen.clone(), conns.clone());
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let (sock, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&s, req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
                });
            }
        });
    });
    App { addr, seen, conns }
}

type AppBody = http_body_util::Either<Incoming, Full<Bytes>>;

fn answer(seen: &Mutex<Vec<String>>, req: Request<Incoming>) -> Response<AppBody> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str())
    );
    seen.lock().unwrap().push(line.clone());
    let path = req.uri().path().to_string();
    if path == "/echo" {
        return Response::new(http_body_util::Either::Left(req.into_body()));
    }
    if path == "/traceparent" {
        let v = req
            .headers()
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        return Response::new(http_body_util::Either::Right(Full::new(Bytes::from(v))));
    }
    if path == "/headers" {
        let mut names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        let v = names.join(",");
        return Response::new(http_body_util::Either::Right(Full::new(Bytes::from(v))));
    }
    if path == "/version" {
        let v = format!("{:?}", req.version());
        return Response::new(http_body_util::Either::Right(Full::new(Bytes::from(v))));
    }
    let mut resp = Response::new(http_body_util::Either::Right(Full::new(Bytes::from(line))));
    if let Some(code) = path.strip_prefix("/status/") {
        *resp.status_mut() = hyper::StatusCode::from_u16(code.parse().unwrap()).unwrap();
    }
    resp
}

/// The inbound proxy in front of `app`, with `extra` config.
fn server_proxy(driver: DriverChoice, ids: &Identities, app: SocketAddr, extra: &str) -> Proxy {
    let cfg = config(&format!(
        "identity: {{ source: workload_api, socket: \"{}\" }}\n{extra}",
        ids.socket("server").display()
    ));
    start(driver, cfg, fixed(app))
}

/// The outbound proxy: the service `web` at 10.96.0.10:80 is `peer`, which must be
/// SERVER_ID.
fn client_proxy(driver: DriverChoice, ids: &Identities, peer: SocketAddr, extra: &str) -> Proxy {
    let cfg = config(&format!(
        "identity: {{ source: workload_api, socket: \"{}\" }}\nservices: [{{ name: web, addrs: [\"10.96.0.10:80\"], endpoints: [{{ addr: \"{peer}\", identity: \"{SERVER_ID}\" }}] }}]\n{extra}",
        ids.socket("client").display()
    ));
    start(driver, cfg, fixed("10.96.0.10:80".parse().unwrap()))
}

struct Mesh {
    app: App,
    _ids: Identities,
    sp: Proxy,
    cp: Proxy,
}

fn mesh(driver: DriverChoice, server_extra: &str) -> Mesh {
    let ids = Identities::start(Duration::from_secs(3600));
    let app = app();
    let sp = server_proxy(driver, &ids, app.addr, server_extra);
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), "");
    Mesh {
        app,
        _ids: ids,
        sp,
        cp,
    }
}

/// curl with `args`; returns stdout. `-sS`, a deadline, and no proxy from the environment.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--noproxy", "*"])
        .args(args)
        .output()
        .expect("curl runs (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn url(p: &Proxy, path: &str) -> String {
    format!("http://{}{path}", p.outbound_addr())
}

fn keep_alive_requests_through_two_sidecars(driver: DriverChoice) {
    let m = mesh(driver, "inbound: { mode: strict }");
    // Three requests on one connection (curl reuses it), one with a query.
    let out = curl(&[
        "-w",
        "|%{http_code}|%{num_connects}\n",
        &url(&m.cp, "/a"),
        &url(&m.cp, "/b?x=1"),
        &url(&m.cp, "/status/404"),
    ]);
    assert_eq!(
        out, "GET /a|200|1\nGET /b?x=1|200|0\nGET /status/404|404|0\n",
        "curl's view"
    );
    assert_eq!(
        *m.app.seen.lock().unwrap(),
        ["GET /a", "GET /b?x=1", "GET /status/404"]
    );
    // The client's proxy knows the service; the server's knows only its own port.
    for (p, dir, svc) in [(&m.cp, "outbound", "web"), (&m.sp, "inbound", "")] {
        assert_eq!(
            metric(
                p,
                &format!(
                    "ringmesh_http_requests_total{{direction=\"{dir}\",dst_service=\"{svc}\",method=\"GET\"}}"
                )
            ),
            3,
            "{dir} requests"
        );
        assert_eq!(
            metric(
                p,
                &format!(
                    "ringmesh_http_responses_total{{direction=\"{dir}\",status_code=\"404\",classification=\"success\",proxy=\"false\"}}"
                )
            ),
            1
        );
        // Between the proxies the requests ride HTTP/2 (`h2_between_proxies`, the default).
        let wire = if dir == "outbound" { "http1" } else { "http2" };
        assert_eq!(
            metric(
                p,
                &format!("ringmesh_http_detected_total{{direction=\"{dir}\",protocol=\"{wire}\"}}")
            ),
            1
        );
        assert_eq!(
            metric(
                p,
                &format!(
                    "ringmesh_http_response_duration_seconds_count{{direction=\"{dir}\",dst_service=\"{svc}\"}}"
                )
            ),
            3
        );
    }
    // One mTLS connection between the proxies carried them, and the app had one.
    assert_eq!(
        metric(
            &m.cp,
            "ringmesh_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}"
        ),
        1
    );
    assert_eq!(m.app.conns.load(Ordering::SeqCst), 1);
}

fn bodies_stream_both_ways_byte_exact(driver: DriverChoice) {
    let m = mesh(driver, "");
    let dir = ScratchDir::new(&format!(
        "ringmesh-http-body-{}-{driver:?}",
        std::process::id()
    ));
    let input = dir.join("in");
    let output = dir.join("out");
    // 1 GiB, streamed both ways at once: curl uploads it from a pipe, chunked (no length),
    // the app echoes it as it comes, and curl's output is hashed as it comes back. Nothing is
    // held whole anywhere, the proxies included.
    let size: usize = 1 << 30;
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "600", "--noproxy", "*"])
        .args(["-X", "POST", "-T", "-", "-o", "-"])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg(url(&m.cp, "/echo"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let mut up = child.stdin.take().unwrap();
    let sender = thread::spawn(move || {
        use sha2::Digest;
        let block = pattern(1 << 20);
        let mut h = sha2::Sha256::new();
        for i in 0..size >> 20 {
            // Each MiB differs from the last, so a dropped or repeated block shows.
            let mut b = block.clone();
            b[..8].copy_from_slice(&(i as u64).to_be_bytes());
            h.update(&b);
            up.write_all(&b).unwrap();
        }
        h.finalize()
    });
    let mut down = child.stdout.take().unwrap();
    let (got, received) = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        loop {
            match down.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading curl's output: {e}"),
            }
        }
        (h.finalize(), n)
    };
    let sent = sender.join().unwrap();
    assert!(child.wait().unwrap().success(), "curl failed");
    assert_eq!(received, size, "bytes echoed");
    assert!(got == sent, "the echo differs from what was sent");
    // With a Content-Length and Expect: 100-continue (curl sends it for large bodies).
    let small = pattern(3 << 20);
    std::fs::write(&input, &small).unwrap();
    let code = curl(&[
        "-w",
        "%{http_code}",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", input.display()),
        "-o",
        &output.display().to_string(),
        &url(&m.cp, "/echo"),
    ]);
    assert_eq!(code, "200");
    assert!(std::fs::read(&output).unwrap() == small);
}

fn connection_per_request_reuses_pooled_mtls(driver: DriverChoice) {
    let m = mesh(driver, "");
    for i in 0..10 {
        let out = curl(&[&url(&m.cp, &format!("/n{i}"))]);
        assert_eq!(out, format!("GET /n{i}"));
    }
    assert_eq!(
        metric(
            &m.cp,
            "ringmesh_connections_opened_total{direction=\"outbound\"}"
        ),
        10,
        "ten client connections"
    );
    assert_eq!(
        metric(
            &m.cp,
            "ringmesh_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}"
        ),
        // Two workers, each with its own pool: at most one handshake each.
        metric(
            &m.cp,
            "ringmesh_http_upstream_connections_total{pool=\"miss\"}"
        ),
    );
    assert!(
        metric(
            &m.cp,
            "ringmesh_http_upstream_connections_total{pool=\"miss\"}"
        ) <= 2,
        "pooled: at most one upstream connection per worker"
    );
    assert!(
        metric(
            &m.cp,
            "ringmesh_http_upstream_connections_total{pool=\"hit\"}"
        ) >= 8
    );
    assert!(m.app.conns.load(Ordering::SeqCst) <= 2);
}

fn access_by_route_answers_403(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    let app = app();
    let sp = server_proxy(
        driver,
        &ids,
        app.addr,
        &format!(
            r#"
inbound: {{ mode: strict }}
http:
  route_groups:
    - name: api
      matches:
        - {{ name: read, pathRegex: "/api(/.*)?", methods: [GET] }}
        - {{ name: ops, pathRegex: "/admin", methods: ["*"], headers: {{ x-role: "ops" }} }}
access:
  default: deny
  rules:
    - destination: {{ port: {} }}
      sources: ["{CLIENT_ID}"]
      routes: [api]
"#,
            app.addr.port()
        ),
    );
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), "");
    let ask = |method: &str, path: &str, extra: &[&str]| -> (String, String) {
        let mut args = vec![
            "-X",
            method,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        args.extend_from_slice(extra);
        let u = url(&cp, path);
        args.push(&u);
        let out = curl(&args);
        let code = out[out.len() - 3..].to_string();
        (code, out)
    };
    for (method, path, extra, want) in [
        ("GET", "/api", &[][..], "200"),
        ("GET", "/api/x", &[], "200"),
        ("POST", "/api/x", &[], "403"),
        ("GET", "/apiv2", &[], "403"),
        ("GET", "/API/x", &[], "403"),
        ("GET", "/v1/api", &[], "403"),
        ("DELETE", "/admin", &["-H", "X-Role: ops"][..], "200"),
        ("DELETE", "/admin", &["-H", "X-Role: opsx"][..], "403"),
        ("DELETE", "/admin", &[], "403"),
        // Encoded unreserved characters are decoded before matching (and forwarded so).
        ("GET", "/%61pi/y", &[], "200"),
        // Dot segments cannot climb out of an allowed prefix.
        ("GET", "/api/../admin", &["--path-as-is"][..], "403"),
        // An encoded slash is refused outright: the app could read it as a separator.
        ("GET", "/api%2F..%2Fadmin", &[], "400"),
    ] {
        let (code, head) = ask(method, path, extra);
        assert_eq!(code, want, "{method} {path} {extra:?}: {head}");
        if want != "200" {
            assert!(
                head.to_ascii_lowercase().contains("ringmesh-proxy-error:"),
                "{method} {path}: the proxy says it answered: {head}"
            );
        }
    }
    assert_eq!(
        *app.seen.lock().unwrap(),
        ["GET /api", "GET /api/x", "DELETE /admin", "GET /api/y"],
        "only allowed requests reached the app"
    );
    assert_eq!(metric(&sp, "ringmesh_http_access_denied_total"), 7);
    assert_eq!(
        metric(
            &sp,
            "ringmesh_http_requests_total{direction=\"inbound\",route=\"api/read\",method=\"GET\"}"
        ),
        3
    );
    // The same policy over HTTP/2 (h2c from the app, h2 inside the mTLS).
    app.seen.lock().unwrap().clear();
    for (method, path, want) in [
        ("GET", "/api/h2", "200"),
        ("GET", "/apiv2", "403"),
        ("POST", "/api/h2", "403"),
    ] {
        let (code, head) = ask(method, path, &["--http2-prior-knowledge"]);
        assert_eq!(code, want, "h2 {method} {path}: {head}");
    }
    assert_eq!(*app.seen.lock().unwrap(), ["GET /api/h2"], "over h2 too");
    assert_eq!(metric(&sp, "ringmesh_http_access_denied_total"), 9);
    // A route-scoped rule allows no opaque connection: raw bytes to the same port are refused.
    let mut c = connect(cp.outbound_addr());
    c.write_all(b"\x00\x01not http\r\n").unwrap();
    let mut buf = [0u8; 16];
    let got = c.read(&mut buf);
    assert!(
        matches!(got, Ok(0)) || got.as_ref().is_err_and(is_reset),
        "opaque refused: {got:?}"
    );
    wait_until(
        "the opaque refusal is counted",
        Duration::from_secs(5),
        || {
            closed(
                &sp,
                ringmesh_core::metrics::Direction::Inbound,
                ringmesh_core::metrics::Outcome::AccessDenied,
            ) == 1
        },
    );
}

fn failures_answer_as_http(driver: DriverChoice) {
    // 503: nothing listens at the endpoint.
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // 504: an endpoint that takes the request and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    // 502: an endpoint that reads the request and resets.
    let rude = TcpListener::bind("127.0.0.1:0").unwrap();
    let rude_addr = rude.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in rude.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });
    let services = format!(
        r#"
http: {{ response_timeout: 500ms }}
services:
  - {{ name: gone, addrs: ["10.96.0.1:80"], endpoints: [{{ addr: "{closed_port}" }}] }}
  - {{ name: silent, addrs: ["10.96.0.2:80"], endpoints: [{{ addr: "{silent_addr}" }}] }}
  - {{ name: rude, addrs: ["10.96.0.3:80"], endpoints: [{{ addr: "{rude_addr}" }}] }}
"#
    );
    for (vip, want, reason) in [
        ("10.96.0.1:80", "503", "upstream unreachable"),
        ("10.96.0.2:80", "504", "response timeout"),
        ("10.96.0.3:80", "502", "upstream reset"),
    ] {
        let p = start(driver, config(&services), fixed(vip.parse().unwrap()));
        let out = curl(&["-D", "-", "-w", "%{http_code}", &url(&p, "/x")]);
        assert!(out.ends_with(want), "{vip}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains(&format!("ringmesh-proxy-error: {reason}")),
            "{vip}: {out}"
        );
        assert_eq!(
            metric(
                &p,
                &format!(
                    "ringmesh_http_responses_total{{status_code=\"{want}\",classification=\"failure\",proxy=\"true\"}}"
                )
            ),
            1
        );
    }
}

/// Sends `raw` on a new connection to `to` and returns the response's status line.
fn raw_status(to: SocketAddr, raw: &[u8]) -> String {
    let mut c = connect(to);
    c.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Reads one response whose head carries a Content-Length: the head and that many bytes.
fn read_head_and_body(c: &mut std::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).unwrap();
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0; len];
    c.read_exact(&mut body).unwrap();
    got.extend(body);
    String::from_utf8_lossy(&got).into_owned()
}

fn malformed_http_never_reaches_the_app(driver: DriverChoice) {
    let app = app();
    let p = start(
        driver,
        config(&format!(
            "protocols: {{ ports: {{ {}: http }} }}\nhttp: {{ max_header_bytes: 16384 }}",
            app.addr.port()
        )),
        fixed(app.addr),
    );
    let to = p.outbound_addr();
    for (raw, want) in [
        (
            &b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"
                [..],
            "HTTP/1.1 400",
        ),
        (b"GET /x HTTP/1.1\r\nHost a\r\n\r\n", "HTTP/1.1 400"),
        (b"GET\x01/ HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400"),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ] {
        assert!(
            raw_status(to, raw).starts_with(want),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let mut big = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 32 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        raw_status(to, &big),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert!(
        app.seen.lock().unwrap().is_empty(),
        "nothing reached the app: {:?}",
        app.seen.lock().unwrap()
    );
    // Content-Length with Transfer-Encoding, in either order: refused with a 400 that says
    // why, before anything reaches the app, and the connection closed, so what the length
    // would have framed differently (a smuggled request) is never read as a request.
    for heads in [
        "Content-Length: 40\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 40",
    ] {
        let mut c = connect(to);
        write!(
            c,
            "POST /te HTTP/1.1\r\nHost: a\r\n{heads}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(
            text.contains("conflicting Content-Length and Transfer-Encoding"),
            "{text}"
        );
        assert_eq!(
            text.matches("HTTP/1.1").count(),
            1,
            "one response, then closed: {text}"
        );
        assert!(
            app.seen.lock().unwrap().is_empty(),
            "{:?}",
            app.seen.lock().unwrap()
        );
    }
    // The same after a good request on a kept-alive connection, pipelined: the first is
    // answered by the app, the second refused by its number on the connection.
    let mut c = connect(to);
    c.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nPOST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    // The app's body ("GET /first") has no newline: the status lines are found by their
    // version, each followed by its code.
    let statuses: Vec<&str> = text
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|rest| rest.get(..3).unwrap_or(rest))
        .collect();
    assert_eq!(statuses, ["200", "400"], "{text}");
    assert_eq!(*app.seen.lock().unwrap(), ["GET /first"]);
    app.seen.lock().unwrap().clear();
    // And one sent only after the first was answered, so the engine reads it from the
    // socket in a read of its own.
    let mut c = connect(to);
    c.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let first = read_head_and_body(&mut c);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    c.write_all(b"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(*app.seen.lock().unwrap(), ["GET /first"]);
    app.seen.lock().unwrap().clear();
    // A good request on the same port still works.
    assert_eq!(curl(&[&url(&p, "/ok")]), "GET /ok");
    app.seen.lock().unwrap().clear();

    // HTTP/2 garbage after a good preface (detected, not pinned): a CONTINUATION with no
    // HEADERS before it, then a frame with a reserved type and a length past the limit. The
    // proxy's h2 answers GOAWAY with PROTOCOL_ERROR (or FRAME_SIZE_ERROR) and closes.
    let p2 = start(driver, config(""), fixed(app.addr));
    let mut c = connect(p2.outbound_addr());
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    raw.extend_from_slice(&[0, 0, 4, 9, 0, 0, 0, 0, 1, b'j', b'u', b'n', b'k']);
    raw.extend_from_slice(&[0xff, 0xff, 0xff, 0xee, 0, 0, 0, 0, 3]);
    let _ = c.write_all(&raw);
    let mut out = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.read_to_end(&mut out);
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= out.len() {
        let len =
            usize::from(out[at]) << 16 | usize::from(out[at + 1]) << 8 | usize::from(out[at + 2]);
        let payload = &out[at + 9..(at + 9 + len).min(out.len())];
        frames.push((out[at + 3], payload.to_vec()));
        at += 9 + len;
    }
    let goaway = frames
        .iter()
        .find(|(kind, _)| *kind == 7)
        .unwrap_or_else(|| panic!("no GOAWAY in {frames:?}"));
    let code = u32::from_be_bytes(goaway.1[4..8].try_into().unwrap());
    assert!(code == 1 || code == 6, "GOAWAY error code {code}");
    assert!(
        app.seen.lock().unwrap().is_empty(),
        "h2 garbage reached the app"
    );
    assert_eq!(
        metric(&p2, "ringmesh_http_detected_total{protocol=\"http2\"}"),
        1
    );
}

fn opaque_tcp_keeps_its_path(driver: DriverChoice) {
    // Not HTTP: detection decides on the first bytes and the copy carries them.
    let echo = echo_server();
    let p = start(driver, config(""), fixed(echo.addr));
    let mut c = connect(p.outbound_addr());
    roundtrip(&mut c, b"\x00\x01binary, not HTTP");
    let data = pattern(1 << 20);
    assert!(echo_all(&mut c, &data) == data);
    assert_eq!(
        metric(
            &p,
            "ringmesh_http_detected_total{direction=\"outbound\",protocol=\"opaque\"}"
        ),
        1
    );
    // A server-first port skips detection: the server's greeting is not held up.
    let greeter = TcpListener::bind("127.0.0.1:0").unwrap();
    let greeter_addr = greeter.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in greeter.incoming().flatten() {
            let _ = s.write_all(b"220 hello\r\n");
        }
    });
    let p2 = start(
        driver,
        config(&format!(
            "protocols: {{ ports: {{ {}: opaque }} }}",
            greeter_addr.port()
        )),
        fixed(greeter_addr),
    );
    let mut c = connect(p2.outbound_addr());
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 11];
    c.read_exact(&mut buf)
        .expect("greeting within 500 ms (well under the detection timeout)");
    assert_eq!(&buf, b"220 hello\r\n");
}

/// `http.h2_between_proxies`: HTTP/1.1 from the app travels between the proxies as streams of
/// one HTTP/2 connection per worker, and reaches the app as HTTP/1.1 with nothing added; the
/// mark is honoured only from a peer proxy.
fn http1_over_http2_between_proxies(driver: DriverChoice) {
    let ids = Identities::start(Duration::from_secs(3600));
    let app = app();
    let sp = server_proxy(driver, &ids, app.addr, "");
    let cp = client_proxy(
        driver,
        &ids,
        sp.inbound_addr(),
        "http: { h2_between_proxies: true }",
    );
    // Keep-alive HTTP/1.1 from curl: the app sees HTTP/1.1, its Host, and no mark.
    let out = curl(&[
        "-w",
        "|%{http_version}\n",
        &url(&cp, "/version"),
        &url(&cp, "/headers"),
        &url(&cp, "/status/404"),
    ]);
    assert_eq!(
        out, "HTTP/1.1|1.1\naccept,host,traceparent,user-agent|1.1\nGET /status/404|1.1\n",
        "curl's view"
    );
    // A body both ways, byte exact, and a connection per request.
    let dir = ScratchDir::new(&format!(
        "ringmesh-h1-over-h2-{}-{driver:?}",
        std::process::id()
    ));
    let data = pattern(8 << 20);
    std::fs::write(dir.join("body"), &data).unwrap();
    let back = dir.join("back");
    curl(&[
        "--data-binary",
        &format!("@{}", dir.join("body").display()),
        "-o",
        back.to_str().unwrap(),
        &url(&cp, "/echo"),
    ]);
    assert!(std::fs::read(&back).unwrap() == data, "echo differs");
    for i in 0..6 {
        assert_eq!(curl(&[&url(&cp, &format!("/n{i}"))]), format!("GET /n{i}"));
    }
    // Eight client connections; between the proxies, at most one HTTP/2 connection per
    // client-proxy worker (two), detected as such by the server's proxy.
    let h2 = metric(&sp, "ringmesh_http_detected_total{protocol=\"http2\"}");
    assert!(
        (1..=2).contains(&h2),
        "{h2} HTTP/2 connections between the proxies"
    );
    assert_eq!(
        metric(&sp, "ringmesh_http_detected_total{protocol=\"http1\"}"),
        0
    );
    assert_eq!(
        metric(
            &cp,
            "ringmesh_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}"
        ),
        h2
    );
    assert_eq!(
        metric(&sp, "ringmesh_http_requests_total{direction=\"inbound\"}"),
        10
    );

    // The mark from a client that is not a peer proxy (plaintext h2c to the permissive
    // inbound port) is dropped: the request stays HTTP/2, and the app never sees it.
    let direct = format!("http://{}", sp.inbound_addr());
    let mark = "ringmesh-orig-proto: HTTP/1.1";
    let h2c = ["--http2-prior-knowledge", "-H", mark];
    let version = curl(&[&h2c[..], &[&format!("{direct}/version")]].concat());
    assert_eq!(version, "HTTP/2.0");
    let headers = curl(&[&h2c[..], &[&format!("{direct}/headers")]].concat());
    assert!(!headers.contains("ringmesh-orig-proto"), "{headers}");
}

/// A WebSocket-style app, HTTP/1.1 with keep-alive: `/chat` with `Upgrade: websocket` is
/// answered 101 and then echoed byte for byte; `/nope` with an upgrade asked is refused with
/// 426 and the connection goes on; anything else gets `200 ok`. Each request head it read
/// is kept, lowercased.
fn ws_app() -> (Server, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let app = server(move |mut s| {
        loop {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).unwrap_or(0) == 0 {
                    return;
                }
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            seen.lock().unwrap().push(head.clone());
            let upgrade = head.contains("\r\nupgrade: websocket\r\n");
            if head.starts_with("get /chat ") && upgrade {
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .unwrap();
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                return;
            }
            let answer: &[u8] = if head.starts_with("get /nope ") {
                b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            if s.write_all(answer).is_err() {
                return;
            }
        }
    });
    (app, heads)
}

const WS_HEADERS: &str = "Host: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Reads a response head, byte by byte, so nothing after it is taken.
fn read_head(c: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        // read_exact retries EINTR (a socket with a timeout is not restarted by the kernel).
        c.read_exact(&mut b).expect("closed before a whole head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Asserts `c` is a tunnel to the echoing app: a frame, then 1 MiB with a half-close.
fn assert_tunnel(c: &mut std::net::TcpStream) {
    roundtrip(c, b"\x81\x05hello");
    let data = pattern(1 << 20);
    assert!(echo_all(c, &data) == data, "the tunnel's echo differs");
}

fn websocket_upgrade_is_a_tunnel(driver: DriverChoice) {
    let (ws, heads) = ws_app();
    let ids = Identities::start(Duration::from_secs(3600));
    let sp = server_proxy(driver, &ids, ws.addr, "inbound: { mode: strict }");
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), "");

    // The first request of a connection, through both sidecars and their mTLS.
    let mut c = connect(cp.outbound_addr());
    write!(c, "GET /chat HTTP/1.1\r\n{WS_HEADERS}").unwrap();
    let head = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert_tunnel(&mut c);
    let up = heads.lock().unwrap().pop().unwrap();
    assert!(up.contains("\r\nconnection: upgrade\r\n"), "{up}");
    assert!(
        up.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{up}"
    );
    for p in [&cp, &sp] {
        assert_eq!(
            metric(p, "ringmesh_http_detected_total{protocol=\"upgrade\"}"),
            1
        );
    }
    // Counted as a request, its 101 as a response.
    for (p, dir) in [(&cp, "outbound"), (&sp, "inbound")] {
        assert_eq!(
            metric(
                p,
                &format!(
                    "ringmesh_http_responses_total{{direction=\"{dir}\",status_code=\"101\",proxy=\"false\"}}"
                )
            ),
            1,
            "{dir}"
        );
    }

    // Later on a kept-alive connection: a plain request, an upgrade the app refuses (the
    // connection goes on), an h2c upgrade (not carried: an ordinary request), then one it
    // accepts.
    let mut c = connect(cp.outbound_addr());
    c.write_all(b"GET /before HTTP/1.1\r\nHost: web\r\n\r\n")
        .unwrap();
    let head = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
    write!(c, "GET /nope HTTP/1.1\r\n{WS_HEADERS}").unwrap();
    let head = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    let mut nope = [0u8; 4];
    c.read_exact(&mut nope).unwrap();
    assert_eq!(&nope, b"nope");
    c.write_all(b"GET /h2c HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n").unwrap();
    let head = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.read_exact(&mut ok).unwrap();
    let up = heads.lock().unwrap().pop().unwrap();
    assert!(up.starts_with("get /h2c "), "{up}");
    assert!(
        !up.contains("upgrade") && !up.contains("http2-settings"),
        "h2c's upgrade went upstream: {up}"
    );
    write!(c, "GET /chat HTTP/1.1\r\n{WS_HEADERS}").unwrap();
    let head = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_tunnel(&mut c);

    // A port pinned to HTTP, one proxy, and the first frame sent with the upgrade request,
    // before the 101: it reaches the app after it.
    let pinned = start(
        driver,
        config(&format!(
            "protocols: {{ ports: {{ {}: http }} }}",
            ws.addr.port()
        )),
        fixed(ws.addr),
    );
    let mut c = connect(pinned.outbound_addr());
    let mut first = format!("GET /chat HTTP/1.1\r\n{WS_HEADERS}").into_bytes();
    first.extend_from_slice(b"\x81\x02hi");
    c.write_all(&first).unwrap();
    let head = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut early = [0u8; 4];
    c.read_exact(&mut early).unwrap();
    assert_eq!(&early, b"\x81\x02hi");
    assert_tunnel(&mut c);
}

/// PyPI's websockets, client and server, through both sidecars and their mTLS: messages
/// both ways, a ping, the closing handshake.
fn websockets_from_a_peer_nobody_here_wrote(driver: DriverChoice) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_peer.py");
    let (mut server, port) = python_server(script);
    let ids = Identities::start(Duration::from_secs(3600));
    let app: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sp = server_proxy(driver, &ids, app, "inbound: { mode: strict }");
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), "");
    let url = format!("ws://{}/chat", cp.outbound_addr());
    let out = Command::new(PYTHON)
        .args([script, "client", &url])
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "websockets client: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        ["ok text", "ok binary", "ok ping", "ok close"]
    );
    for p in [&cp, &sp] {
        assert_eq!(
            metric(p, "ringmesh_http_responses_total{status_code=\"101\"}"),
            1
        );
    }
    drop(server.stdin.take());
    let _ = server.wait();
}

fn http2_prior_knowledge_through_two_sidecars(driver: DriverChoice) {
    let m = mesh(driver, "inbound: { mode: strict }");
    // One request per connection: curl 7.88 (Debian 12) fails a second request on a reused
    // h2c prior-knowledge connection even against a plain hyper server; grpcio below
    // multiplexes on one connection.
    let h2 = |path: &str| {
        curl(&[
            "--http2-prior-knowledge",
            "-w",
            "|%{http_code}|%{http_version}",
            &url(&m.cp, path),
        ])
    };
    assert_eq!(h2("/a"), "GET /a|200|2");
    assert_eq!(
        h2("/version"),
        "HTTP/2.0|200|2",
        "the app was asked in HTTP/2 too"
    );
    assert_eq!(h2("/status/503"), "GET /status/503|503|2");
    // A body both ways, across many DATA frames and flow-control windows.
    let dir = ScratchDir::new(&format!(
        "ringmesh-h2-body-{}-{driver:?}",
        std::process::id()
    ));
    let data = pattern(8 << 20);
    std::fs::write(dir.join("body"), &data).unwrap();
    let back = dir.join("back");
    curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        &format!("@{}", dir.join("body").display()),
        "-o",
        back.to_str().unwrap(),
        &url(&m.cp, "/echo"),
    ]);
    assert!(std::fs::read(&back).unwrap() == data, "echo differs");
    // Another connection per request: every one shares the pooled h2 connection upstream.
    for _ in 0..3 {
        assert_eq!(
            curl(&["--http2-prior-knowledge", &url(&m.cp, "/version")]),
            "HTTP/2.0"
        );
    }
    // Each of the client proxy's two workers pools its own: at most two mTLS connections
    // (and two app connections) carried all seven client connections' requests.
    let upstreams = metric(
        &m.cp,
        "ringmesh_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}",
    );
    assert!((1..=2).contains(&upstreams), "{upstreams} mTLS handshakes");
    assert_eq!(
        metric(
            &m.cp,
            "ringmesh_http_upstream_connections_total{pool=\"miss\"}"
        ),
        upstreams
    );
    assert!(m.app.conns.load(Ordering::SeqCst) <= 2);
    for (p, dir) in [(&m.cp, "outbound"), (&m.sp, "inbound")] {
        assert_eq!(
            metric(
                p,
                &format!("ringmesh_http_detected_total{{direction=\"{dir}\",protocol=\"http2\"}}")
            ),
            if dir == "outbound" { 7 } else { upstreams },
            "{dir} detections"
        );
        assert_eq!(
            metric(
                p,
                &format!("ringmesh_http_requests_total{{direction=\"{dir}\",method=\"GET\"}}")
            ),
            6,
            "{dir} GETs"
        );
        assert_eq!(
            metric(
                p,
                &format!(
                    "ringmesh_http_responses_total{{direction=\"{dir}\",status_code=\"503\",classification=\"failure\",proxy=\"false\"}}"
                )
            ),
            1
        );
    }
}

/// grpcio's server behind one sidecar, its client before the other: unary, streaming each
/// way and both, trailers, a trailers-only error and an error after data.
/// The venv's python, with the PyPI peers (.ci/deps.sh installs them).
const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/venv/bin/python");

/// Starts `script server`, which prints "listening PORT" and serves until its stdin closes
/// (drop the child's stdin, then wait for it).
fn python_server(script: &str) -> (std::process::Child, u16) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut server = Command::new(PYTHON)
        .args([script, "server"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the venv's python (.ci/deps.sh installs it)");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{script} server said {line:?}"));
    (server, port)
}

fn grpc_from_a_peer_nobody_here_wrote(driver: DriverChoice) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_peer.py");
    let (mut server, port) = python_server(script);
    let ids = Identities::start(Duration::from_secs(3600));
    let app: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sp = server_proxy(driver, &ids, app, "inbound: { mode: strict }");
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), "");
    let out = Command::new(PYTHON)
        .args([script, "client", &cp.outbound_addr().to_string()])
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc client: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.lines().count(), 7, "{said}");
    for p in [&cp, &sp] {
        let m = p.metrics();
        assert_eq!(
            metric_in(&m, "ringmesh_http_detected_total{protocol=\"http2\"}"),
            1,
            "{m}"
        );
        assert_eq!(
            metric_in(&m, "ringmesh_http_requests_total{method=\"POST\"}"),
            6,
            "{m}"
        );
        for (grpc, class, n) in [
            ("0", "success", 4),
            ("5", "failure", 1),
            ("7", "failure", 1),
        ] {
            assert_eq!(
                metric_in(
                    &m,
                    &format!(
                        "ringmesh_http_responses_total{{status_code=\"200\",grpc_status=\"{grpc}\",classification=\"{class}\"}}"
                    )
                ),
                n,
                "grpc-status {grpc}: {m}"
            );
        }
    }
    // tonic's client, the same calls (run after the counts above: they add to them).
    assert_eq!(tonic_client(cp.outbound_addr()), 5, "tonic calls");
    assert_eq!(
        metric(&cp, "ringmesh_http_requests_total{method=\"POST\"}"),
        11
    );

    // The proxy's own failure, to a gRPC client: a gRPC status it can act on, not an HTTP 503.
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lost = client_proxy(driver, &ids, gone, "");
    let (code, message) = tonic_status(lost.outbound_addr(), "Unary");
    assert_eq!(code, tonic::Code::Unavailable);
    assert_eq!(message, "upstream unreachable");
    assert_eq!(
        metric(
            &lost,
            "ringmesh_http_responses_total{status_code=\"200\",grpc_status=\"14\",classification=\"failure\",proxy=\"true\"}"
        ),
        1,
        "{}",
        lost.metrics()
    );
    drop(server.stdin.take());
    let _ = server.wait();
}

/// A Python process that prints "listening PORT" first: its port and its stdout lines.
struct PyPeer {
    child: std::process::Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl PyPeer {
    fn start(script: &str) -> Self {
        use std::io::BufRead;
        use std::process::Stdio;
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/venv/bin/python");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the venv's python (.ci/deps.sh installs it)");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{script} said {first:?}"));
        let (tx, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, port, lines }
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until `path` holds `n` lines.
fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A caller's trace continues through both proxies to the app, each proxy's span exported
/// to a collector built from OpenTelemetry's own messages; a request with no trace starts
/// one; both proxies log every request, in JSON and in text.
fn traces_and_access_log(driver: DriverChoice) {
    let collector = PyPeer::start(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/otlp_collector.py"
    ));
    let dir = ScratchDir::new(&format!("ringmesh-trail-{}-{driver:?}", std::process::id()));
    let (cp_log, sp_log) = (dir.join("client.log"), dir.join("server.log"));
    let telemetry = |log: &std::path::Path, format: &str| {
        format!(
            "http: {{ access_log: {{ enabled: true, format: {format}, path: \"{}\" }}, tracing: {{ sample_ratio: 1.0, otlp: \"127.0.0.1:{}\", service_name: mesh-test }} }}",
            log.display(),
            collector.port
        )
    };
    let ids = Identities::start(Duration::from_secs(3600));
    let app = app();
    let sp = server_proxy(
        driver,
        &ids,
        app.addr,
        &format!(
            "inbound: {{ mode: strict }}\n{}",
            telemetry(&sp_log, "text")
        ),
    );
    let cp = client_proxy(driver, &ids, sp.inbound_addr(), &telemetry(&cp_log, "json"));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let seen = curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{caller}-01"),
        "-H",
        "tracestate: vendor=x",
        "-A",
        "trail-test",
        &url(&cp, "/traceparent"),
    ]);
    // The app gets the same trace, with the inbound proxy's span as its parent.
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(
        (parts.len(), parts[0], parts[1], parts[3]),
        (4, "00", trace, "01"),
        "{seen}"
    );
    assert_ne!(parts[2], caller, "each proxy's span is the next parent");
    // No trace given: one is started (and sampled, at ratio 1).
    let fresh = curl(&[&url(&cp, "/traceparent")]);
    assert!(
        fresh.starts_with("00-") && !fresh.contains(trace),
        "{fresh}"
    );

    let mut spans = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while spans.len() < 4 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = collector
            .lines
            .recv_timeout(left)
            .expect("four spans at the collector");
        spans.push(
            serde_json::from_str::<serde_json::Value>(&line)
                .unwrap_or_else(|e| panic!("collector line {line:?}: {e}")),
        );
    }
    let of = |trace_id: &str, kind: i64| {
        spans
            .iter()
            .find(|s| s["trace_id"] == trace_id && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no kind {kind} span of {trace_id} in {spans:?}"))
    };
    let client_span = of(trace, 3);
    let server_span = of(trace, 2);
    assert_eq!(client_span["parent_span_id"], caller);
    assert_eq!(server_span["parent_span_id"], client_span["span_id"]);
    assert_eq!(server_span["span_id"], parts[2]);
    for s in [client_span, server_span] {
        assert_eq!(s["service"], "mesh-test");
        assert_eq!(s["attributes"]["http.request.method"], "GET");
        assert_eq!(s["attributes"]["url.path"], "/traceparent");
        assert_eq!(s["attributes"]["http.response.status_code"], 200);
        assert!(s["end"].as_u64() >= s["start"].as_u64());
    }
    let fresh_trace = fresh.split('-').nth(1).unwrap();
    assert_eq!(of(fresh_trace, 3)["parent_span_id"], "", "a root span");

    // The client proxy's JSON lines and the server proxy's text lines.
    let json = lines_of(&cp_log, 2);
    assert_eq!(json.len(), 2, "{json:?}");
    let first: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(first["direction"], "outbound");
    assert_eq!(first["path"], "/traceparent");
    assert_eq!(first["status"], 200);
    assert_eq!(first["service"], "web");
    assert_eq!(first["user_agent"], "trail-test");
    assert_eq!(first["trace_id"], trace);
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["response_bytes"], seen.len());
    let text = lines_of(&sp_log, 2);
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].contains("\"GET /traceparent HTTP/1.1\" 200 ")
            && text[0].contains(&format!("\"{CLIENT_ID}\""))
            && text[0].contains(&format!("\"{trace}\"")),
        "{}",
        text[0]
    );
    for p in [&cp, &sp] {
        assert_eq!(metric(p, "ringmesh_http_access_log_lines_total"), 2);
        assert_eq!(metric(p, "ringmesh_http_access_log_dropped_total"), 0);
        assert_eq!(metric(p, "ringmesh_trace_spans_dropped_total"), 0);
    }
}

/// With the collector gone and the access log unwritable, requests are served as before; the
/// failed exports and the lines not written are counted.
fn a_dead_collector_costs_requests_nothing(driver: DriverChoice) {
    // A port with nothing behind it.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = app();
    let p = start(
        driver,
        config(&format!(
            "protocols: {{ ports: {{ {}: http }} }}\nhttp: {{ tracing: {{ sample_ratio: 1.0, otlp: \"{dead}\" }}, access_log: {{ enabled: true, path: /proc/ringmesh-nowhere/access.log }} }}",
            app.addr.port()
        )),
        fixed(app.addr),
    );
    for i in 0..20 {
        assert_eq!(curl(&[&url(&p, &format!("/d{i}"))]), format!("GET /d{i}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&p, "ringmesh_trace_spans_dropped_total") < 20 {
        assert!(std::time::Instant::now() < deadline, "{}", p.metrics());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&p, "ringmesh_trace_export_failures_total") >= 1);
    assert_eq!(metric(&p, "ringmesh_trace_spans_exported_total"), 0);
    while metric(&p, "ringmesh_http_access_log_errors_total") < 20 {
        assert!(std::time::Instant::now() < deadline, "{}", p.metrics());
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&p, "ringmesh_http_access_log_lines_total"), 0);
}

/// Raw-bytes messages for tonic (the Python server's are raw bytes too).
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// tonic's client through `to`: unary, server streaming, bidirectional with a 1 MiB
/// message, a trailers-only error and an error after data. Returns the calls that checked out.
fn tonic_client(to: SocketAddr) -> usize {
    use tokio_stream::StreamExt;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}"))
            .unwrap()
            .connect()
            .await
            .expect("tonic connects");
        let mut grpc = tonic::client::Grpc::new(channel);
        let path = |m: &str| {
            tonic::codegen::http::uri::PathAndQuery::try_from(format!("/mesh.Echo/{m}")).unwrap()
        };
        let mut ok = 0;
        grpc.ready().await.unwrap();
        let r = grpc
            .unary(tonic::Request::new(b"tonic".to_vec()), path("Unary"), Raw)
            .await
            .unwrap();
        assert_eq!(r.get_ref(), b"echo:tonic");
        ok += 1;
        grpc.ready().await.unwrap();
        let mut parts = grpc
            .server_streaming(
                tonic::Request::new(b"3".to_vec()),
                path("ServerStream"),
                Raw,
            )
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = parts.message().await.unwrap() {
            got.push(m);
        }
        assert_eq!(
            got,
            [b"part 0".to_vec(), b"part 1".to_vec(), b"part 2".to_vec()]
        );
        ok += 1;
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let sent = vec![b"a".to_vec(), big.clone(), b"c".to_vec()];
        grpc.ready().await.unwrap();
        let back: Vec<Vec<u8>> = grpc
            .streaming(
                tonic::Request::new(tokio_stream::iter(sent.clone())),
                path("Bidi"),
                Raw,
            )
            .await
            .unwrap()
            .into_inner()
            .map(Result::unwrap)
            .collect()
            .await;
        assert!(back == sent, "bidi echo differs");
        ok += 1;
        grpc.ready().await.unwrap();
        let e = grpc
            .unary(tonic::Request::new(b"x".to_vec()), path("Fail"), Raw)
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::NotFound, "no such thing")
        );
        ok += 1;
        grpc.ready().await.unwrap();
        let mut late = grpc
            .server_streaming(tonic::Request::new(b"x".to_vec()), path("FailLate"), Raw)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(late.message().await.unwrap(), Some(b"partial".to_vec()));
        let e = late.message().await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        ok += 1;
        ok
    })
}

/// One unary call through `to` that must fail: its gRPC status.
fn tonic_status(to: SocketAddr, method: &str) -> (tonic::Code, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}"))
            .unwrap()
            .connect()
            .await
            .expect("tonic connects");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path =
            tonic::codegen::http::uri::PathAndQuery::try_from(format!("/mesh.Echo/{method}"))
                .unwrap();
        let e = grpc
            .unary(tonic::Request::new(b"x".to_vec()), path, Raw)
            .await
            .unwrap_err();
        (e.code(), e.message().to_owned())
    })
}
