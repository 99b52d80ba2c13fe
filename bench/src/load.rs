//! The load generator: `threads` monoio threads, each driving its share of the connections.
//!
//! Fixed-rate runs are open loop: each connection has its own schedule and latency counts from
//! when a request was due (see [`schedule`](crate::schedule)). Max-throughput runs are closed
//! loop: each connection sends its next request as soon as the last response is in.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::net::udp::UdpSocket;

use crate::rt;
use crate::schedule::{Schedule, latency_start};
use crate::stats::{ErrorKind, RunResult, Tally};

/// What each request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// TCP request/response on long-lived connections (`serve tcp-echo`).
    Tcp,
    /// HTTP/1.1 keep-alive GET.
    Http,
    /// One request per connection: connect, request, response, close (`serve tcp-echo`).
    Conn,
    /// One HTTP/1.1 GET per connection: connect, request, response, close (`serve http`).
    HttpConn,
    /// Bulk one-way streaming into `serve sink`; reports bits per second.
    Stream,
    /// UDP request/response (`serve udp-echo`).
    Udp,
    /// Open the connections, one exchange each, then hold them idle for the duration.
    Hold,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Tcp => "tcp",
            Workload::Http => "http",
            Workload::Conn => "conn",
            Workload::HttpConn => "http-conn",
            Workload::Stream => "stream",
            Workload::Udp => "udp",
            Workload::Hold => "hold",
        }
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub workload: Workload,
    pub target: SocketAddr,
    /// Requests per second over all connections; `None` is closed loop (maximum throughput).
    pub rate: Option<u64>,
    pub connections: u64,
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub request_size: usize,
    pub response_size: usize,
    /// HTTP request path and Host header.
    pub path: String,
    pub host: String,
    /// A response not complete within this is an error.
    pub timeout: Duration,
    /// Processes whose CPU time and peak memory are measured over the window (the proxy).
    pub watch: Vec<u32>,
    pub driver: rt::Driver,
}

/// When the measured window is.
#[derive(Clone, Copy)]
struct Window {
    /// Zero of the schedule; connections are set up before it.
    zero: Instant,
    warmup_ns: u64,
    end_ns: u64,
}

impl Window {
    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.zero)
            .as_nanos() as u64
    }
    fn measured(&self, t_ns: u64) -> bool {
        t_ns >= self.warmup_ns && t_ns < self.end_ns
    }
}

/// Runs the load and returns the merged result.
pub fn run(spec: &LoadSpec) -> anyhow::Result<RunResult> {
    let threads = spec.threads.max(1);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let spec = spec.clone();
        let barrier = barrier.clone();
        handles.push(
            thread::Builder::new()
                .name(format!("mesh-bench-{t}"))
                .spawn(move || {
                    let driver = spec.driver;
                    rt::block_on(driver, |_| thread_main(spec, t, threads, barrier)).unwrap_or_else(
                        |e| {
                            let mut tally = Tally::default();
                            tally.error(ErrorKind::of(&e));
                            tally
                        },
                    )
                })?,
        );
    }
    // Connections are opened before the schedule starts: the window begins after setup.
    barrier.wait();
    let watched = watch(&spec.watch, spec.warmup, spec.duration);
    let mut total = Tally::default();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        total.merge(&t);
    }
    let base = RunResult {
        workload: spec.workload.as_str().to_string(),
        target: spec.target.to_string(),
        mode: if spec.rate.is_some() { "rate" } else { "max" }.to_string(),
        rate: spec.rate.unwrap_or(0),
        connections: spec.connections,
        threads: threads as u64,
        ..Default::default()
    };
    let mut result = base.from_tally(&total, spec.duration.as_secs_f64());
    if let Some((cpu, rss)) = watched {
        result.watched_cpu_seconds = Some(cpu);
        result.watched_rss_peak_kb = Some(rss);
    }
    Ok(result)
}

/// CPU seconds (user + system) of a process so far, from /proc (USER_HZ is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Resident set of a process now, KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Samples the watched processes over the measured window: CPU used and peak RSS.
fn watch(pids: &[u32], warmup: Duration, duration: Duration) -> Option<(f64, u64)> {
    if pids.is_empty() {
        return None;
    }
    let cpu = || pids.iter().filter_map(|&p| cpu_seconds(p)).sum::<f64>();
    let rss = || pids.iter().filter_map(|&p| rss_kb(p)).sum::<u64>();
    thread::sleep(warmup);
    let (start, cpu0) = (Instant::now(), cpu());
    let mut peak = rss();
    while start.elapsed() < duration {
        thread::sleep(Duration::from_millis(50).min(duration.saturating_sub(start.elapsed())));
        peak = peak.max(rss());
    }
    Some((cpu() - cpu0, peak))
}

async fn thread_main(spec: LoadSpec, t: usize, threads: usize, barrier: Arc<Barrier>) -> Tally {
    let mine: Vec<u64> = (0..spec.connections)
        .filter(|i| *i as usize % threads == t)
        .collect();
    // Long-lived connections are opened before the clock starts.
    let mut conns = Vec::new();
    let mut setup = Tally::default();
    if matches!(
        spec.workload,
        Workload::Tcp | Workload::Http | Workload::Stream | Workload::Hold
    ) {
        for &i in &mine {
            match connect(spec.target, spec.timeout).await {
                Ok(s) => conns.push((i, Some(s))),
                Err(k) => {
                    setup.error(k);
                    conns.push((i, None));
                }
            }
        }
    } else {
        conns = mine.iter().map(|&i| (i, None)).collect();
    }
    // Every thread starts the same clock.
    let barrier_wait = thread::spawn(move || barrier.wait());
    while !barrier_wait.is_finished() {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    let zero = Instant::now();
    let warmup_ns = spec.warmup.as_nanos() as u64;
    let window = Window {
        zero,
        warmup_ns,
        end_ns: warmup_ns + spec.duration.as_nanos() as u64,
    };
    let spec = Arc::new(spec);
    let mut tasks = Vec::new();
    for (i, stream) in conns {
        let spec = spec.clone();
        tasks.push(monoio::spawn(async move {
            let mut tally = Tally::default();
            let result = match spec.workload {
                Workload::Tcp | Workload::Http => match stream {
                    Some(s) => request_loop(&spec, i, s, window, &mut tally).await,
                    None => Ok(()),
                },
                Workload::Conn | Workload::HttpConn => {
                    conn_loop(&spec, i, window, &mut tally).await
                }
                Workload::Stream => match stream {
                    Some(s) => stream_one(&spec, s, window, &mut tally).await,
                    None => Ok(()),
                },
                Workload::Udp => udp_loop(&spec, i, window, &mut tally).await,
                Workload::Hold => match stream {
                    Some(s) => hold(&spec, s, window, &mut tally).await,
                    None => Ok(()),
                },
            };
            if let Err(k) = result {
                tally.error(k);
            }
            tally
        }));
    }
    let mut total = setup;
    for t in tasks {
        total.merge(&t.await);
    }
    total
}

async fn connect(target: SocketAddr, timeout: Duration) -> Result<TcpStream, ErrorKind> {
    match monoio::time::timeout(timeout, TcpStream::connect(target)).await {
        Err(_) => Err(ErrorKind::ConnectTimeout),
        Ok(Err(e)) => Err(match ErrorKind::of(&e) {
            ErrorKind::Reset | ErrorKind::Eof => ErrorKind::Connect,
            k => k,
        }),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

fn request_bytes(spec: &LoadSpec) -> Vec<u8> {
    match spec.workload {
        Workload::Http => {
            format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", spec.path, spec.host).into_bytes()
        }
        Workload::HttpConn => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            spec.path, spec.host
        )
        .into_bytes(),
        _ => vec![b'q'; spec.request_size.max(1)],
    }
}

/// Waits for the next due time (open loop) and says where latency starts; `None` once the
/// run is over.
async fn next_slot(
    schedule: Option<Schedule>,
    k: u64,
    prev_done: u64,
    w: &Window,
) -> Option<(u64, u64)> {
    match schedule {
        Some(s) => {
            let due = s.due(k);
            if due >= w.end_ns {
                return None;
            }
            let now = w.now_ns();
            if now < due {
                let at = w.zero + Duration::from_nanos(due);
                monoio::time::sleep_until(monoio::time::Instant::from_std(at)).await;
            }
            let sent = w.now_ns();
            Some((latency_start(due, prev_done, sent), due))
        }
        None => {
            let now = w.now_ns();
            (now < w.end_ns).then_some((now, now))
        }
    }
}

/// Long-lived connection: request, response, repeat.
async fn request_loop(
    spec: &LoadSpec,
    index: u64,
    mut s: TcpStream,
    w: Window,
    tally: &mut Tally,
) -> Result<(), ErrorKind> {
    let schedule = spec.rate.map(|r| Schedule::new(r, spec.connections, index));
    let mut req = request_bytes(spec);
    let mut buf = vec![0u8; 64 * 1024];
    let mut prev_done = 0;
    let mut k = 0;
    while let Some((start, due)) = next_slot(schedule, k, prev_done, &w).await {
        k += 1;
        let (r, back) = s.write_all(req).await;
        req = back;
        r.map_err(|e| ErrorKind::of(&e))?;
        buf = match monoio::time::timeout(spec.timeout, read_response(spec, &mut s, buf)).await {
            Err(_) => return Err(ErrorKind::Timeout),
            Ok((Err(e), _)) => return Err(e),
            Ok((Ok(()), b)) => b,
        };
        let done = w.now_ns();
        prev_done = done;
        if w.measured(due) && done < w.end_ns {
            tally.record(done - start);
        }
    }
    Ok(())
}

/// Reads one whole response: `response_size` bytes, or one HTTP/1.1 response.
async fn read_response(
    spec: &LoadSpec,
    s: &mut TcpStream,
    buf: Vec<u8>,
) -> (Result<(), ErrorKind>, Vec<u8>) {
    match spec.workload {
        Workload::Http | Workload::HttpConn => read_http(s, buf).await,
        _ => read_n(s, buf, spec.response_size.max(1)).await,
    }
}

async fn read_n(
    s: &mut TcpStream,
    mut buf: Vec<u8>,
    mut n: usize,
) -> (Result<(), ErrorKind>, Vec<u8>) {
    while n > 0 {
        let want = n.min(buf.capacity());
        let (r, b) = s.read(buf.slice_mut(0..want)).await;
        buf = b.into_inner();
        match r {
            Ok(0) => return (Err(ErrorKind::Eof), buf),
            Ok(m) => n -= m,
            Err(e) => return (Err(ErrorKind::of(&e)), buf),
        }
    }
    (Ok(()), buf)
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_http(s: &mut TcpStream, mut buf: Vec<u8>) -> (Result<(), ErrorKind>, Vec<u8>) {
    let cap = buf.capacity();
    let mut filled = 0;
    loop {
        if filled == cap {
            return (Err(ErrorKind::Protocol), buf);
        }
        let (r, b): (_, SliceMut<Vec<u8>>) = s.read(buf.slice_mut(filled..cap)).await;
        buf = b.into_inner();
        match r {
            Ok(0) => return (Err(ErrorKind::Eof), buf),
            Ok(m) => filled += m,
            Err(e) => return (Err(ErrorKind::of(&e)), buf),
        }
        let head = &buf[..filled.min(buf.len())];
        if let Some(end) = find(head, b"\r\n\r\n") {
            let Some(len) = content_length(&head[..end]) else {
                return (Err(ErrorKind::Protocol), buf);
            };
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                return (Err(ErrorKind::Protocol), buf);
            }
            let have = filled - (end + 4);
            if have >= len {
                return (Ok(()), buf);
            }
            return read_n(s, buf, len - have).await;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

/// One request per connection.
async fn conn_loop(
    spec: &LoadSpec,
    index: u64,
    w: Window,
    tally: &mut Tally,
) -> Result<(), ErrorKind> {
    let schedule = spec.rate.map(|r| Schedule::new(r, spec.connections, index));
    let mut req = request_bytes(spec);
    let mut buf = vec![0u8; 64 * 1024];
    let mut prev_done = 0;
    let mut k = 0;
    while let Some((start, due)) = next_slot(schedule, k, prev_done, &w).await {
        k += 1;
        let mut s = match connect(spec.target, spec.timeout).await {
            Ok(s) => s,
            Err(e) => {
                if w.measured(due) {
                    tally.error(e);
                }
                prev_done = w.now_ns();
                continue;
            }
        };
        let (r, back) = s.write_all(req).await;
        req = back;
        let outcome = match r {
            Err(e) => Err(ErrorKind::of(&e)),
            Ok(_) => {
                match monoio::time::timeout(spec.timeout, read_response(spec, &mut s, buf)).await {
                    Err(_) => {
                        buf = vec![0u8; 64 * 1024];
                        Err(ErrorKind::Timeout)
                    }
                    Ok((r, b)) => {
                        buf = b;
                        r
                    }
                }
            }
        };
        drop(s);
        let done = w.now_ns();
        prev_done = done;
        if w.measured(due) && done < w.end_ns {
            match outcome {
                Ok(()) => tally.record(done - start),
                Err(e) => tally.error(e),
            }
        }
    }
    Ok(())
}

/// Writes as fast as the path takes it for the window, then pauses; the sink answers with
/// what it received, which must be everything that was written.
async fn stream_one(
    spec: &LoadSpec,
    mut s: TcpStream,
    w: Window,
    tally: &mut Tally,
) -> Result<(), ErrorKind> {
    let mut chunk = vec![b's'; 256 * 1024];
    // The warm-up is written too, but neither timed nor counted.
    let mut sent_total = 0u64;
    while w.now_ns() < w.warmup_ns {
        let (r, back) = s.write_all(chunk).await;
        r.map_err(|e| ErrorKind::of(&e))?;
        sent_total += back.len() as u64;
        chunk = back;
    }
    let (began, mut written) = (w.now_ns(), 0u64);
    while w.now_ns() < w.end_ns {
        let (r, back) = s.write_all(chunk).await;
        r.map_err(|e| ErrorKind::of(&e))?;
        written += back.len() as u64;
        chunk = back;
    }
    sent_total += written;
    // The sink reports its running total when we pause; wait until it has everything.
    let mut count = vec![0u8; 8];
    loop {
        let (r, c) = monoio::time::timeout(spec.timeout * 4, s.read_exact(count))
            .await
            .map_err(|_| ErrorKind::Timeout)?;
        r.map_err(|e| ErrorKind::of(&e))?;
        let received = u64::from_le_bytes(c[..8].try_into().map_err(|_| ErrorKind::Protocol)?);
        count = c;
        if received >= sent_total {
            break;
        }
    }
    // The sink answers 100 ms after the last byte: that pause is not transfer time.
    let elapsed = (w.now_ns() - began).saturating_sub(100_000_000).max(1);
    // Bytes written in the timed window, over the time until the sink had them all, scaled
    // to the nominal window so that bits/s = bytes * 8 / duration.
    let duration_ns = (w.end_ns - w.warmup_ns).max(1);
    tally.bytes += (u128::from(written) * u128::from(duration_ns) / u128::from(elapsed)) as u64;
    tally.record(elapsed);
    Ok(())
}

/// Opens, exchanges once, holds idle until the end.
async fn hold(
    spec: &LoadSpec,
    mut s: TcpStream,
    w: Window,
    tally: &mut Tally,
) -> Result<(), ErrorKind> {
    let t0 = w.now_ns();
    let (r, _) = s.write_all(vec![b'h'; spec.request_size.max(1)]).await;
    r.map_err(|e| ErrorKind::of(&e))?;
    let (r, _) = monoio::time::timeout(
        spec.timeout,
        read_n(&mut s, vec![0; 4096], spec.response_size.max(1)),
    )
    .await
    .map_err(|_| ErrorKind::Timeout)?;
    r?;
    tally.record(w.now_ns() - t0);
    let rest = w.end_ns.saturating_sub(w.now_ns());
    monoio::time::sleep(Duration::from_nanos(rest)).await;
    Ok(())
}

/// UDP request/response; a datagram not answered within the timeout counts as lost.
async fn udp_loop(
    spec: &LoadSpec,
    index: u64,
    w: Window,
    tally: &mut Tally,
) -> Result<(), ErrorKind> {
    let local: SocketAddr = if spec.target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| ErrorKind::Other)?;
    let sock = UdpSocket::bind(local).map_err(|e| ErrorKind::of(&e))?;
    sock.connect(spec.target)
        .await
        .map_err(|e| ErrorKind::of(&e))?;
    let schedule = spec.rate.map(|r| Schedule::new(r, spec.connections, index));
    let mut req = vec![b'u'; spec.request_size.max(8)];
    let mut buf = vec![0u8; 65536];
    let mut prev_done = 0;
    let mut k = 0;
    while let Some((start, due)) = next_slot(schedule, k, prev_done, &w).await {
        req[..8].copy_from_slice(&k.to_le_bytes());
        k += 1;
        let (r, back) = sock.send(req).await;
        req = back;
        r.map_err(|e| ErrorKind::of(&e))?;
        // Skip stale answers to requests already given up on.
        let answered = loop {
            match monoio::time::timeout(spec.timeout, sock.recv(buf)).await {
                Err(_) => {
                    buf = vec![0u8; 65536];
                    break false;
                }
                Ok((Err(e), _)) => return Err(ErrorKind::of(&e)),
                Ok((Ok(n), b)) => {
                    buf = b;
                    if n >= 8 && buf[..8] == (k - 1).to_le_bytes() {
                        break true;
                    }
                }
            }
        };
        let done = w.now_ns();
        prev_done = done;
        if w.measured(due) && done < w.end_ns {
            if answered {
                tally.record(done - start);
            } else {
                tally.error(ErrorKind::Timeout);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_head_parsing() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\nServer: x";
        assert_eq!(content_length(head), Some(42));
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\nServer: x"), None);
        assert_eq!(find(b"abc\r\n\r\nxyz", b"\r\n\r\n"), Some(3));
    }
}
