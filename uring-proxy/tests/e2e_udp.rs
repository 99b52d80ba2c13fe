//! UDP end to end with the real binaries: two "pods" joined by a veth pair, `mesh-redirect
//! install --udp` in both (the eBPF programs, pinned), a `uring-proxy` sidecar in both (the
//! client's as uid 1337 bypassed by uid, the server's as root bypassed by mark), Debian's
//! dnsmasq as the server app and dig as the client, plus plain sockets. Runs on each driver.
//! Root only; fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::netns::{Pod, ProxyProc, Testbed, bin};

const PROXY_UID: u32 = 1337;
const ECHO_PORT: u16 = 7001;
const EXCLUDED_PORT: u16 = 9100;
/// Above the server pod's intercepted inbound range (its ephemeral ports): not steered in.
const HIGH_PORT: u16 = 40001;
const DNS_VIP: &str = "10.96.0.53";
const ECHO_VIP: &str = "10.96.0.70";

/// `nsenter --net` into the pod: unlike `ip netns exec` it keeps the host's /sys/fs/bpf,
/// where the UDP programs pin.
fn nsenter(pod: &Pod, prog: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", pod.ns)).arg(prog);
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pin_dir(pod: &Pod) -> PathBuf {
    let ino = std::fs::metadata(format!("/run/netns/{}", pod.ns))
        .unwrap()
        .ino();
    PathBuf::from(format!("/sys/fs/bpf/ringmesh/net-{ino}"))
}

/// The interception installed in a pod; uninstalled on drop, even when the test fails (the
/// pins live in the host's BPF filesystem and would outlive the namespace).
struct Interception {
    pod: Pod,
    backend: &'static str,
    removed: bool,
}

impl Interception {
    fn install(pod: &Pod, backend: &'static str, args: &[&str]) -> Self {
        let out = nsenter(pod, bin("mesh-redirect").to_str().unwrap())
            .args(["install", "--udp", "--backend", backend])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install in {}: {}",
            pod.ns,
            text(&out)
        );
        Self {
            pod: pod.clone(),
            backend,
            removed: false,
        }
    }

    /// `mesh-redirect show --udp`'s counter `name`.
    fn counter(&self, name: &str) -> u64 {
        let out = nsenter(&self.pod, bin("mesh-redirect").to_str().unwrap())
            .args(["show", "--udp", "--backend", self.backend])
            .output()
            .unwrap();
        let shown = text(&out);
        shown
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {name} ")))
            .unwrap_or_else(|| panic!("no counter {name} in:\n{shown}"))
            .trim()
            .parse()
            .unwrap()
    }

    fn uninstall(&mut self) -> Output {
        self.removed = true;
        nsenter(&self.pod, bin("mesh-redirect").to_str().unwrap())
            .args(["uninstall", "--backend", self.backend])
            .output()
            .unwrap()
    }
}

impl Drop for Interception {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.uninstall();
        }
    }
}

/// A process in a pod, killed on drop, and the directory of its files (removed after it,
/// unless the test failed).
struct Proc(Child, #[allow(dead_code)] support::ScratchDir);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's dnsmasq on the pod's address, answering every name under svc.test with
/// 10.1.2.3; returns once it has said it started.
fn dnsmasq(pod: &Pod) -> Proc {
    let dir = support::ScratchDir::new(&format!("ringmesh-dnsmasq-{}", pod.ns));
    let log = dir.join("dnsmasq.log");
    let child = nsenter(pod, "dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--log-facility=-",
            "--user=root",
            "--bind-interfaces",
            "--port=53",
            "--address=/svc.test/10.1.2.3",
        ])
        .arg(format!("--listen-address={}", pod.ip4))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("dnsmasq (Debian's dnsmasq-base; .ci/deps.sh installs it)");
    let proc = Proc(child, dir);
    support::wait_until("dnsmasq to start", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("started")
    });
    proc
}

/// A UDP echo in the pod on `port`: answers each datagram with the SHA-256 of its payload
/// and the source address it saw.
fn echo(pod: &Pod, port: u16) {
    let s = pod.run(|| UdpSocket::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                return;
            };
            let mut reply = Sha256::digest(&buf[..n]).to_vec();
            reply.extend_from_slice(from.to_string().as_bytes());
            let _ = s.send_to(&reply, from);
        }
    });
}

/// Parses an echo reply: (hash, the source the echo saw).
fn echo_reply(reply: &[u8]) -> ([u8; 32], SocketAddr) {
    let hash: [u8; 32] = reply[..32].try_into().unwrap();
    let from = std::str::from_utf8(&reply[32..]).unwrap().parse().unwrap();
    (hash, from)
}

fn payload(flow: usize, seq: usize) -> Vec<u8> {
    let len = 1 + (flow * 131 + seq * 977) % 1400;
    (0..len).map(|i| (i * 31 + flow * 7 + seq) as u8).collect()
}

/// Fields drop in this order: the processes and the interception go before the namespaces.
struct UdpMesh {
    client_proxy: ProxyProc,
    server_proxy: ProxyProc,
    client_redirect: Interception,
    server_redirect: Interception,
    _dns: Proc,
    bed: Testbed,
}

fn udp_mesh(driver: &str, client_extra: &str) -> UdpMesh {
    let bed = Testbed::new();
    let (c, s) = (&bed.client, &bed.server);
    let uid = PROXY_UID.to_string();
    let excluded = EXCLUDED_PORT.to_string();
    let client_redirect = Interception::install(
        c,
        "iptables",
        &[
            "--proxy-uid",
            &uid,
            "--no-mark",
            "--exclude-outbound-ports",
            &excluded,
        ],
    );
    let server_redirect =
        Interception::install(s, "nftables", &["--exclude-inbound-ports", &excluded]);
    let dns = dnsmasq(s);
    echo(s, ECHO_PORT);
    echo(s, EXCLUDED_PORT);
    echo(s, HIGH_PORT);
    let config = format!(
        "bypass_mark: 0\n{client_extra}\nservices:\n  - name: dns\n    addrs: [\"{DNS_VIP}:53\"]\n    endpoints: [{{ addr: \"{}\" }}]\n  - name: echo\n    addrs: [\"{ECHO_VIP}:{ECHO_PORT}\"]\n    endpoints: [{{ addr: \"{}\" }}]\n",
        s.addr4(53),
        s.addr4(ECHO_PORT)
    );
    let as_proxy_uid = [
        "setpriv",
        &format!("--reuid={PROXY_UID}"),
        &format!("--regid={PROXY_UID}"),
        "--clear-groups",
    ]
    .map(String::from);
    let as_proxy_uid: Vec<&str> = as_proxy_uid.iter().map(String::as_str).collect();
    let client_proxy = ProxyProc::start(c, &config, &as_proxy_uid, &["--driver", driver]);
    let server_proxy = ProxyProc::start(s, "{}\n", &[], &["--driver", driver]);
    UdpMesh {
        bed,
        client_proxy,
        server_proxy,
        client_redirect,
        server_redirect,
        _dns: dns,
    }
}

/// `dig` in the client pod: one batch of `names` against `server`; the answer lines.
/// The names go in a file in `dir`, which must outlive the child.
fn dig_batch(client: &Pod, dir: &std::path::Path, server: &str, names: &[String]) -> Child {
    let file = dir.join(format!(
        "{server}-{}.txt",
        names.first().map_or("", String::as_str)
    ));
    std::fs::write(&file, names.join("\n") + "\n").unwrap();
    nsenter(client, "dig")
        .args(["+noall", "+answer", "+time=3", "+tries=2"])
        .arg(format!("@{server}"))
        .arg("-f")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dig (Debian's bind9-dnsutils; .ci/deps.sh installs it)")
}

fn check_answers(out: &Output, names: &[String]) {
    let all = text(out);
    assert!(out.status.success(), "dig failed:\n{all}");
    // (A datagram lost and retried is UDP; an answer from the wrong address is a bug.)
    assert!(
        !all.contains("unexpected source"),
        "dig saw a reply from the wrong address:\n{all}"
    );
    let lines: Vec<&str> = all.lines().filter(|l| l.contains("\tIN\tA\t")).collect();
    assert_eq!(lines.len(), names.len(), "one answer per query:\n{all}");
    for (line, name) in lines.iter().zip(names) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], format!("{name}."), "{line}");
        assert_eq!(f.last().copied(), Some("10.1.2.3"), "{line}");
    }
}

fn udp_through_both_sidecars(driver: &str) {
    let mut m = udp_mesh(driver, "");
    let (c, s) = (m.bed.client.clone(), m.bed.server.clone());
    let server_ip = s.ip4.to_string();
    let dig_dir = support::ScratchDir::new(&format!("ringmesh-dig-{}", c.ns));

    // dig by the server's address and by the service's virtual address.
    for server in [server_ip.as_str(), DNS_VIP] {
        let names = vec![format!("one.{}.svc.test", server.replace('.', "-"))];
        let out = dig_batch(&c, &dig_dir, server, &names)
            .wait_with_output()
            .unwrap();
        check_answers(&out, &names);
    }

    // 1,000 queries from four concurrent clients, half of them through the VIP.
    let batches: Vec<(String, Vec<String>)> = (0..4)
        .map(|b| {
            let server = if b % 2 == 0 {
                server_ip.clone()
            } else {
                DNS_VIP.to_string()
            };
            (
                server,
                (0..250).map(|i| format!("q{i}.b{b}.svc.test")).collect(),
            )
        })
        .collect();
    let running: Vec<Child> = batches
        .iter()
        .map(|(server, names)| dig_batch(&c, &dig_dir, server, names))
        .collect();
    for (child, (_, names)) in running.into_iter().zip(&batches) {
        check_answers(&child.wait_with_output().unwrap(), names);
    }
    let outbound = |from: &str| {
        m.client_proxy.metric(&format!(
            "ringmesh_udp_datagrams_total{{workload=\"sidecar\",direction=\"outbound\",from=\"{from}\"}}"
        ))
    };
    let inbound = |from: &str| {
        m.server_proxy.metric(&format!(
            "ringmesh_udp_datagrams_total{{workload=\"sidecar\",direction=\"inbound\",from=\"{from}\"}}"
        ))
    };
    assert!(
        outbound("downstream") >= 1002,
        "{}",
        m.client_proxy.metrics()
    );
    assert!(outbound("upstream") >= 1002);
    assert!(
        inbound("downstream") >= 1002,
        "{}",
        m.server_proxy.metrics()
    );
    assert!(inbound("upstream") >= 1002);
    assert!(m.client_redirect.counter("steered_outbound") >= 1002);
    assert!(m.client_redirect.counter("replies_to_app") >= 1002);
    // The client proxy's own datagrams (by uid) pass; they are not looped back to it.
    assert!(m.client_redirect.counter("passed_proxy_own") >= 1002);
    assert_eq!(
        m.client_proxy.metric(
            "ringmesh_udp_dropped_total{workload=\"sidecar\",direction=\"outbound\",reason=\"redirect_loop\"}"
        ),
        0
    );
    assert!(m.server_redirect.counter("steered_inbound") >= 1002);
    assert!(m.server_redirect.counter("replies_to_peer") >= 1002);
    assert_eq!(m.server_redirect.counter("dropped_spoofed_reply"), 0);

    // A malformed header (sent straight to the relay) drops that datagram only, counted.
    c.run(|| {
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(b"not a PROXY header", "127.0.0.1:15001")
            .unwrap();
        let forged = ringmesh_core::proxy_v2::to_vec(&ringmesh_core::proxy_v2::Addrs {
            transport: ringmesh_core::proxy_v2::Transport::Datagram,
            source: "10.200.250.1:4000".parse().unwrap(),
            destination: s.addr4(ECHO_PORT),
        });
        raw.send_to(&forged, "127.0.0.1:15001").unwrap();
    });
    let malformed =
        "ringmesh_udp_malformed_headers_total{workload=\"sidecar\",reason=\"signature\"}";
    support::wait_until(
        "the malformed header to be counted",
        Duration::from_secs(5),
        || m.client_proxy.metric(malformed) == 1,
    );
    support::wait_until(
        "the forged source to be counted",
        Duration::from_secs(5),
        || {
            m.client_proxy.metric(
            "ringmesh_udp_dropped_total{workload=\"sidecar\",direction=\"outbound\",reason=\"source_mismatch\"}",
        ) == 1
        },
    );

    // Connected and unconnected sockets, several flows at once, every payload checked; the
    // echo saw the server proxy (the server's own address), not the client.
    let vip: SocketAddr = format!("{ECHO_VIP}:{ECHO_PORT}").parse().unwrap();
    let direct = s.addr4(ECHO_PORT);
    let flows: Vec<_> = (0..8)
        .map(|f| {
            let pod = c.clone();
            let server_ip = s.ip4;
            pod.clone().spawn(move || {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let connected = f % 2 == 0;
                let dst = if f % 4 < 2 { vip } else { direct };
                if connected {
                    sock.connect(dst).unwrap();
                }
                let mut buf = [0u8; 128];
                for seq in 0..50 {
                    let p = payload(f, seq);
                    let (n, from) = if connected {
                        sock.send(&p).unwrap();
                        let n = sock
                            .recv(&mut buf)
                            .unwrap_or_else(|e| panic!("flow {f} ({}) seq {seq}: {e}", pod.ns));
                        assert_eq!(sock.peer_addr().unwrap(), dst);
                        (n, dst)
                    } else {
                        sock.send_to(&p, dst).unwrap();
                        sock.recv_from(&mut buf)
                            .unwrap_or_else(|e| panic!("flow {f} ({}) seq {seq}: {e}", pod.ns))
                    };
                    assert_eq!(from, dst, "the reply comes from where the app sent");
                    let (hash, seen) = echo_reply(&buf[..n]);
                    assert_eq!(
                        hash,
                        <[u8; 32]>::from(Sha256::digest(&p)),
                        "flow {f} seq {seq}"
                    );
                    assert_eq!(seen.ip(), server_ip, "the echo saw the server's sidecar");
                }
            })
        })
        .collect();
    for f in flows {
        f.join().unwrap();
    }

    // A server on a port the server pod does not intercept inbound: the client's sidecar
    // still takes the datagram there, and the answer leaves the server pod as sent (not
    // taken for a new outbound flow), so the client's sidecar gets it from where it sent.
    c.run(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = s.addr4(HIGH_PORT);
        sock.connect(dst).unwrap();
        sock.send(b"high").unwrap();
        let mut buf = [0u8; 128];
        let n = sock.recv(&mut buf).unwrap();
        let (hash, seen) = echo_reply(&buf[..n]);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(b"high")));
        assert_eq!(
            seen.ip(),
            c.ip4,
            "not intercepted inbound: the echo saw the client's pod"
        );
    });
    assert!(m.server_redirect.counter("passed_answer") >= 1);

    // An excluded port bypasses both sidecars: the echo sees the client itself.
    let before = outbound("downstream");
    c.run(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dst = s.addr4(EXCLUDED_PORT);
        sock.send_to(b"direct", dst).unwrap();
        let mut buf = [0u8; 128];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(from, dst);
        let (_, seen) = echo_reply(&buf[..n]);
        assert_eq!(
            seen,
            SocketAddr::new(c.ip4.into(), sock.local_addr().unwrap().port())
        );
    });
    assert_eq!(
        outbound("downstream"),
        before,
        "the excluded datagram never reached the proxy"
    );

    let flows_created = m
        .client_proxy
        .metric("ringmesh_udp_flows_created_total{workload=\"sidecar\",direction=\"outbound\"}");
    // About one per dig query (dig picks a random source port per query, and a port that
    // comes round again within the idle timeout is the same flow) and one per test socket.
    assert!(
        flows_created >= 950 + 8,
        "a flow per dig query and test socket: {flows_created}\n{}",
        m.client_proxy.metrics()
    );

    // Stop both sidecars, take the interception out: nothing of ours remains.
    assert!(m.client_proxy.stop().success(), "{}", m.client_proxy.log());
    assert!(m.server_proxy.stop().success(), "{}", m.server_proxy.log());
    for (pod, r) in [(&c, &mut m.client_redirect), (&s, &mut m.server_redirect)] {
        let out = r.uninstall();
        assert!(out.status.success(), "{}", text(&out));
        assert!(!pin_dir(pod).exists(), "pins left in {}", pod.ns);
        let accept_local = pod.sh("sysctl -n net.ipv4.conf.all.accept_local; for i in /proc/sys/net/ipv4/conf/*/accept_local; do cat $i; done");
        assert!(
            String::from_utf8_lossy(&accept_local.stdout)
                .lines()
                .all(|l| l.trim() == "0"),
            "accept_local left on in {}",
            pod.ns
        );
    }
}

/// Idle flows expire and a full table evicts the least recently used flow, both counted.
fn udp_flow_expiry_and_eviction(driver: &str) {
    let m = udp_mesh(driver, "udp: { idle_timeout: 1s, max_flows_per_worker: 2 }");
    let (c, s) = (m.bed.client.clone(), m.bed.server.clone());
    for port in ECHO_PORT + 1..=ECHO_PORT + 6 {
        echo(&s, port);
    }
    // One socket, six destinations: one source, so one worker, six flows in a table of two.
    c.run(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 128];
        for port in ECHO_PORT + 1..=ECHO_PORT + 6 {
            let dst = s.addr4(port);
            sock.send_to(b"hello", dst).unwrap();
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(from, dst);
            assert_eq!(
                echo_reply(&buf[..n]).0,
                <[u8; 32]>::from(Sha256::digest(b"hello"))
            );
        }
    });
    let series = |name: &str| {
        m.client_proxy.metric(&format!(
            "{name}{{workload=\"sidecar\",direction=\"outbound\"}}"
        ))
    };
    assert_eq!(series("ringmesh_udp_flows_created_total"), 6);
    assert_eq!(series("ringmesh_udp_flows_evicted_total"), 4);
    let start = Instant::now();
    support::wait_until(
        "the last two flows to expire",
        Duration::from_secs(10),
        || series("ringmesh_udp_flows_active") == 0,
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(series("ringmesh_udp_flows_expired_total"), 2);
}

mod through_both {
    #[test]
    fn io_uring() {
        super::udp_through_both_sidecars("uring");
    }
    #[test]
    fn epoll() {
        super::udp_through_both_sidecars("epoll");
    }
}

mod flows {
    #[test]
    fn io_uring() {
        super::udp_flow_expiry_and_eviction("uring");
    }
    #[test]
    fn epoll() {
        super::udp_flow_expiry_and_eviction("epoll");
    }
}
