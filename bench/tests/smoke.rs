//! A short smoke run of the harness: `mesh-bench` against its own backends, and through an
//! in-process `uring-proxy`, on both drivers. It asserts zero errors and plausible counts,
//! never a speed: benchmarks are not tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ringmesh_bench::stats::RunResult;
use ringmesh_core::OrigDst;
use ringmesh_core::config::{Config, Format};
use uring_proxy::{ConnInfo, DriverChoice, Proxy, ProxyOptions};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-bench");

/// A backend process, killed on drop.
struct Backend(Child, SocketAddr);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(backend: &str, driver: &str) -> Backend {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            backend,
            "--listen",
            "127.0.0.1:0",
            "--driver",
            driver,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{backend}: {line:?}: {e}"));
    Backend(child, addr)
}

fn run(target: SocketAddr, driver: &str, args: &[&str]) -> RunResult {
    let out = Command::new(BIN)
        .args([
            "run",
            "--target",
            &target.to_string(),
            "--driver",
            driver,
            "--threads",
            "1",
        ])
        .args(["--duration", "1s", "--warmup", "200ms", "--json", "-"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn no_errors(r: &RunResult) {
    assert!(
        r.errors.is_empty(),
        "{} -> {}: errors {:?}",
        r.workload,
        r.target,
        r.errors
    );
}

/// The scenarios that go through a TCP proxy, against `echo`, `http` and `sink` addresses.
fn tcp_scenarios(echo: SocketAddr, http: SocketAddr, sink: SocketAddr, driver: &str) {
    let r = run(
        echo,
        driver,
        &[
            "--workload",
            "tcp",
            "-c",
            "4",
            "--request-size",
            "100",
            "--response-size",
            "100",
        ],
    );
    no_errors(&r);
    assert!(r.requests > 100, "tcp: {} requests", r.requests);
    assert!(
        r.latency.p50 > 0.0 && r.latency.p50 <= r.latency.p99 && r.latency.p99 <= r.latency.max
    );

    // Open loop at 400 req/s for 1 s: about 400, neither far fewer nor more.
    let r = run(
        http,
        driver,
        &["--workload", "http", "-c", "8", "--rate", "400"],
    );
    no_errors(&r);
    assert!(
        (300..=440).contains(&r.requests),
        "http at 400/s: {} requests",
        r.requests
    );

    let r = run(
        echo,
        driver,
        &[
            "--workload",
            "conn",
            "-c",
            "2",
            "--request-size",
            "16",
            "--response-size",
            "16",
        ],
    );
    no_errors(&r);
    assert!(r.requests > 50, "conn: {} connections", r.requests);

    let r = run(sink, driver, &["--workload", "stream", "-c", "1"]);
    no_errors(&r);
    assert!(
        r.bytes > 1 << 20 && r.bits_per_second > 0.0,
        "stream: {} bytes",
        r.bytes
    );
}

fn proxy_to(backend: SocketAddr, driver: DriverChoice) -> Proxy {
    let config = Config::from_str(
        "listeners: { outbound: \"127.0.0.1:0\", inbound: \"127.0.0.1:0\" }\nadmin: \"127.0.0.1:0\"\nbypass_mark: 0\n",
        Format::Yaml,
    )
    .unwrap();
    let opts = ProxyOptions {
        workers: Some(1),
        driver,
        orig_dst: Arc::new(move |_: &ConnInfo| Ok(OrigDst::new(backend))),
        admin: false,
        signals: false,
        drain_timeout: Duration::from_secs(1),
        pin: false,
        ..ProxyOptions::default()
    };
    let p = Proxy::start(config, opts).unwrap();
    assert!(p.wait_ready(Duration::from_secs(5)));
    p
}

fn smoke(driver: &str, proxy_driver: DriverChoice) {
    let (echo, http, sink, udp) = (
        serve("tcp-echo", driver),
        serve("http", driver),
        serve("sink", driver),
        serve("udp-echo", driver),
    );
    tcp_scenarios(echo.1, http.1, sink.1, driver);

    let r = run(
        udp.1,
        driver,
        &["--workload", "udp", "-c", "2", "--rate", "200"],
    );
    no_errors(&r);
    assert!(
        (150..=220).contains(&r.requests),
        "udp at 200/s: {}",
        r.requests
    );

    let r = run(
        echo.1,
        driver,
        &[
            "--workload",
            "hold",
            "-c",
            "50",
            "--request-size",
            "1",
            "--response-size",
            "1",
        ],
    );
    no_errors(&r);
    assert_eq!(
        r.requests, 50,
        "every held connection made its one exchange"
    );

    // The same through uring-proxy (one proxy per backend: the original destination is fixed).
    let (pe, ph, ps) = (
        proxy_to(echo.1, proxy_driver),
        proxy_to(http.1, proxy_driver),
        proxy_to(sink.1, proxy_driver),
    );
    tcp_scenarios(
        pe.outbound_addr(),
        ph.outbound_addr(),
        ps.outbound_addr(),
        driver,
    );
    let carried: u64 = pe
        .shards()
        .iter()
        .map(|s| s.opened_count(ringmesh_core::metrics::Direction::Outbound))
        .sum();
    assert!(
        carried > 50,
        "the proxy carried the runs: {carried} connections"
    );
}

#[test]
fn smoke_io_uring() {
    smoke("uring", DriverChoice::Uring);
}

#[test]
fn smoke_epoll() {
    smoke("epoll", DriverChoice::Epoll);
}

/// `ring-ceiling`, the instrument perf/compare.sh measures the owned-ring lever with, must be a
/// correct forwarder or its numbers mean nothing: a mesh-bench run through it has no errors,
/// 4 MiB come back byte-exact through an echo backend, and a half-close reaches the other side.
#[test]
fn ring_ceiling_forwards_byte_exact() {
    use std::io::{Read, Write};
    let echo = serve("tcp-echo", "uring");
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let _fwd = Backend(
        Command::new(env!("CARGO_BIN_EXE_ring-ceiling"))
            .args(["--listen", &listen.to_string(), "--workers", "2"])
            .args(["--upstream", &echo.1.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        listen,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match std::net::TcpStream::connect(listen) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("ring-ceiling does not listen on {listen}: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let sent = sent.clone();
        std::thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut got = Vec::new();
    // read_to_end returns only at EOF: the client's half-close went through the forwarder
    // to the echo backend, which closed, and that came back.
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(
        got == sent,
        "{} bytes back of {}, or different",
        got.len(),
        sent.len()
    );

    for workload in [
        &["--workload", "tcp", "--connections", "8"][..],
        &[
            "--workload",
            "conn",
            "--connections",
            "4",
            "--request-size",
            "64",
            "--response-size",
            "64",
        ],
    ] {
        let r = run(listen, "uring", workload);
        no_errors(&r);
        assert!(r.throughput > 10.0, "{workload:?}: {r:?}");
    }
}
