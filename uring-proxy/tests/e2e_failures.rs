//! How failures look from outside, with the real binaries in network namespaces: a
//! destination that drops SYNs, a peer that vanishes mid-connection, a worker that panics,
//! a worker that stalls. Each on both drivers. Root only; fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::netns::{Pod, ProxyProc, Testbed, bin};

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn io_uring() {
                super::$name("uring")
            }
            #[test]
            fn epoll() {
                super::$name("epoll")
            }
        }
    )*};
}

both!(
    connect_timeout_on_dropped_syns,
    vanished_peer_is_dropped_by_keepalive,
    worker_panic_aborts_the_process,
    stalled_worker_is_not_live,
);

fn redirect_outbound(pod: &Pod) {
    let out = pod
        .command(bin("mesh-redirect").to_str().unwrap())
        .args(["install", "--backend", "iptables", "--no-inbound"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn echo(pod: &Pod, port: u16) {
    let l = pod.run(|| TcpListener::bind(("::", port)).unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &s, &mut &s);
            });
        }
    });
}

/// A client-pod proxy (outbound interception only) with `config`.
fn client_proxy(bed: &Testbed, config: &str, driver: &str, extra: &[&str]) -> ProxyProc {
    redirect_outbound(&bed.client);
    let mut args = vec!["--driver", driver];
    args.extend_from_slice(extra);
    ProxyProc::start(&bed.client, config, &[], &args)
}

fn connect_timeout_on_dropped_syns(driver: &str) {
    let bed = Testbed::new();
    // The server pod drops SYNs to port 7100: a connect there never completes.
    support::netns::must(&format!(
        "ip netns exec {} iptables -A INPUT -p tcp --dport 7100 --syn -j DROP",
        bed.server.ns
    ));
    let proxy = client_proxy(&bed, "timeouts: { connect: 300ms }\n", driver, &[]);
    let dst = bed.server.addr4(7100);
    let (took, end) = bed.client.run(move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t0 = Instant::now();
        let _ = s.write_all(b"hello?");
        let end = s.read(&mut [0u8; 16]).map_err(|e| e.kind());
        (t0.elapsed(), end)
    });
    assert!(
        matches!(end, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "{end:?}"
    );
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert_eq!(
        proxy.metric(
            "ringmesh_connections_closed_total{direction=\"outbound\",outcome=\"connect_timeout\"}"
        ),
        1
    );
}

fn vanished_peer_is_dropped_by_keepalive(driver: &str) {
    let bed = Testbed::new();
    echo(&bed.server, 7000);
    let proxy = client_proxy(
        &bed,
        "tcp: { keepalive_time: 1s, keepalive_interval: 1s, keepalive_probes: 2, user_timeout: 4s }\n",
        driver,
        &[],
    );
    let dst = bed.server.addr4(7000);
    let client = bed.client.clone();
    let (mut s, sockets) = bed.client.run(move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        (s, client.sh("ss -tnoH state established").stdout)
    });
    // Both of the proxy's sockets carry a keepalive timer: the upstream one (set when it was
    // made) and the accepted one (inherited from the listener).
    let sockets = String::from_utf8_lossy(&sockets).to_string();
    let with_timer = |port: &str| {
        sockets
            .lines()
            .any(|l| l.contains(port) && l.contains("timer:(keepalive"))
    };
    assert!(
        with_timer(":15001 "),
        "accepted side without keepalive:\n{sockets}"
    );
    assert!(
        with_timer(":7000 "),
        "upstream side without keepalive:\n{sockets}"
    );

    // The server pod vanishes from the network: nothing in, nothing out, no RST.
    support::netns::must(&format!(
        "ip netns exec {0} iptables -I INPUT -j DROP && ip netns exec {0} iptables -I OUTPUT -j DROP",
        bed.server.ns
    ));
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let end = s.read(&mut [0u8; 4]).map_err(|e| e.kind());
    let took = t0.elapsed();
    assert!(
        matches!(end, Err(std::io::ErrorKind::ConnectionReset) | Ok(0)),
        "{end:?}"
    );
    // 1 s idle + 2 probes 1 s apart: about 3 s, far from the idle hour.
    assert!(took < Duration::from_secs(10), "noticed after {took:?}");
    assert_eq!(
        proxy.metric(
            "ringmesh_connections_closed_total{direction=\"outbound\",outcome=\"upstream_error\"}"
        ),
        1
    );
}

fn worker_panic_aborts_the_process(driver: &str) {
    let bed = Testbed::new();
    let mut proxy = client_proxy(&bed, "{}\n", driver, &[]);
    // The test build panics a worker on a connection to port 1 (src/fault.rs).
    let dst = bed.server.addr4(1);
    bed.client.run(move || {
        if let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(5)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.read(&mut [0u8; 1]);
        }
    });
    let status = proxy.wait_exit(Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc_sigabrt()),
        "{status}; log:\n{}",
        proxy.log()
    );
    assert!(
        proxy.log().contains("panicked; aborting"),
        "{}",
        proxy.log()
    );
}

fn libc_sigabrt() -> i32 {
    nix::sys::signal::Signal::SIGABRT as i32
}

fn stalled_worker_is_not_live(driver: &str) {
    let bed = Testbed::new();
    let proxy = client_proxy(&bed, "{}\n", driver, &["--stall-timeout", "500ms"]);
    let admin = "127.0.0.1:15000".parse().unwrap();
    let get = |path: &'static str| proxy.pod.run(move || support::http_get(admin, path).0);
    assert_eq!(get("/live"), 200);
    // The test build blocks a worker's thread for 3 s on a connection to port 2.
    let dst = bed.server.addr4(2);
    let stalling = bed.client.spawn(move || {
        let _ = TcpStream::connect_timeout(&dst, Duration::from_secs(5));
        std::thread::sleep(Duration::from_secs(4));
    });
    support::wait_until("/live fails", Duration::from_secs(3), || {
        get("/live") == 503
    });
    assert_eq!(get("/ready"), 503);
    let m = proxy.metrics();
    assert_eq!(support::metric_in(&m, "ringmesh_live"), 0, "{m}");
    support::wait_until("/live recovers", Duration::from_secs(10), || {
        get("/live") == 200
    });
    assert_eq!(get("/ready"), 200);
    stalling.join().unwrap();
}
