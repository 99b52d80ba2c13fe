//! Helpers for the in-process pipeline tests: real proxies on loopback with an injected
//! original destination, real echo servers, std clients.
#![allow(dead_code)]
// Test support: a panic here is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_core::OrigDst;
use ringmesh_core::config::{Config, Format};
use ringmesh_core::metrics::{Direction, Outcome};
use uring_proxy::{ConnInfo, DriverChoice, OrigDstSource, Proxy, ProxyOptions};

pub mod mesh;
pub mod natsbed;
pub mod netns;

/// A test's own directory under the temp dir, removed when it goes out of scope, unless the
/// thread is panicking: a failed test leaves its files (configs, logs) to be read.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs a test function once per driver, as two tests: `name::io_uring` and `name::epoll`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn io_uring() {
                super::$name(uring_proxy::DriverChoice::Uring)
            }
            #[test]
            fn epoll() {
                super::$name(uring_proxy::DriverChoice::Epoll)
            }
        }
    )*};
}

pub fn init_logging() {
    if let Ok(filter) = std::env::var("RINGMESH_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

const BASE: &str = r#"
listeners: { outbound: "127.0.0.1:0", inbound: "127.0.0.1:0" }
admin: "127.0.0.1:0"
bypass_mark: 0
"#;

/// The test base config (loopback listeners on free ports, no mark) with `extra`'s top-level
/// keys laid over it.
pub fn config(extra: &str) -> Config {
    let mut base: serde_yaml::Mapping = serde_yaml::from_str(BASE).unwrap();
    if !extra.trim().is_empty() {
        let over: serde_yaml::Mapping = serde_yaml::from_str(extra).unwrap();
        for (k, v) in over {
            base.insert(k, v);
        }
    }
    Config::from_str(&serde_yaml::to_string(&base).unwrap(), Format::Yaml)
        .unwrap_or_else(|e| panic!("test config invalid: {e:?}"))
}

pub fn options(driver: DriverChoice, workers: usize, orig_dst: impl OrigDstSource) -> ProxyOptions {
    ProxyOptions {
        workers: Some(workers),
        driver,
        orig_dst: Arc::new(orig_dst),
        admin: true,
        signals: false,
        drain_timeout: Duration::from_secs(5),
        pin: false,
        ..ProxyOptions::default()
    }
}

pub fn start_with(config: Config, opts: ProxyOptions) -> Proxy {
    init_logging();
    let p = Proxy::start(config, opts).expect("proxy starts");
    assert!(p.wait_ready(Duration::from_secs(5)), "proxy not ready");
    p
}

pub fn start(driver: DriverChoice, config: Config, orig_dst: impl OrigDstSource) -> Proxy {
    start_with(config, options(driver, 2, orig_dst))
}

/// Every connection's original destination is `addr`.
pub fn fixed(addr: SocketAddr) -> impl OrigDstSource {
    move |_: &ConnInfo| Ok(OrigDst::new(addr))
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes `msg` and reads back exactly as many bytes.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// Reads until EOF or error; says which.
pub fn read_end(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).map(|_| out)
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Deterministic, non-repeating-looking test bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A server on loopback running `handler` for each accepted connection on its own thread.
pub struct Server {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

pub fn server(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let h = handler.clone();
            thread::spawn(move || h(s));
        }
    });
    Server { addr, accepted }
}

/// Echoes until EOF, then half-closes.
pub fn echo_server() -> Server {
    server(|mut s| {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

pub fn closed(p: &Proxy, dir: Direction, outcome: Outcome) -> u64 {
    p.shards()
        .iter()
        .map(|s| s.closed_count(dir, outcome))
        .sum()
}

pub fn opened(p: &Proxy, dir: Direction) -> u64 {
    p.shards().iter().map(|s| s.opened_count(dir)).sum()
}

pub fn active(p: &Proxy) -> i64 {
    p.shards().iter().map(|s| s.active_total()).sum()
}

/// Waits until `dir` has exactly `n` connections closed with `outcome`.
pub fn expect_closed(p: &Proxy, dir: Direction, outcome: Outcome, n: u64) {
    wait_until(
        &format!("{n} {dir} connection(s) closed as {outcome}"),
        Duration::from_secs(10),
        || closed(p, dir, outcome) >= n,
    );
    assert_eq!(
        closed(p, dir, outcome),
        n,
        "{dir} {outcome}\n{}",
        p.metrics()
    );
}

/// A series' value in the proxy's metrics: `name` or `name{k="v",...}`, summed over every
/// sample of that name whose labels include the given ones (so `workload` and other labels
/// need not be spelled out). Panics if no sample matches.
pub fn metric(p: &Proxy, series: &str) -> u64 {
    metric_in(&p.metrics(), series)
}

/// [`metric`] over exposition text.
pub fn metric_in(text: &str, series: &str) -> u64 {
    let (name, want) = split_series(series);
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((s, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, labels) = split_series(s);
        if n == name && want.iter().all(|w| labels.contains(w)) {
            found = true;
            sum += v.parse::<f64>().unwrap();
        }
    }
    assert!(found, "no {series} in\n{text}");
    sum as u64
}

/// `name{a="1",b="2"}` into the name and its `k="v"` pairs (values without commas).
fn split_series(s: &str) -> (&str, Vec<&str>) {
    match s.split_once('{') {
        Some((name, rest)) => (
            name,
            rest.trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
                .collect(),
        ),
        None => (s, Vec::new()),
    }
}

/// Sends `data` and half-closes while reading everything that comes back, so neither side's
/// buffers fill up; returns what came back.
pub fn echo_all(c: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = c.try_clone().unwrap();
    let sent = data.to_vec();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let back = read_end(c).unwrap();
    writer.join().unwrap();
    back
}

/// A plain HTTP/1.0 GET against the admin server: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").unwrap();
    let text = String::from_utf8(read_end(&mut s).unwrap()).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
