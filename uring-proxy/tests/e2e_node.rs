//! Node mode end to end with the real binaries. "Node 1" is a network namespace with a bridge
//! and three pod namespaces on it, "node 2" one with one pod; the nodes are joined by a veth
//! pair and route between their pod networks. One `uring-proxy` in node mode runs in each
//! node's namespace; each pod has its own `mesh-redirect` rules (bypass: the node proxy's
//! mark), and is registered with its node proxy (`meshctl node add`). SVIDs come from
//! `meshctl identity serve`'s Delegated Identity API, by selector. Runs on each driver.
//! Root only; fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::netns::{Pod, ProxyProc, bin, must, require_root};
use support::wait_until;

const APP_PORT: u16 = 8080;
const TTL: Duration = Duration::from_secs(6);

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn id(pod: &str) -> String {
    format!("spiffe://cluster.local/ns/demo/sa/{pod}")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The namespaces of two nodes and four pods; deleted on drop.
struct Cluster {
    tag: String,
    node1: Pod,
    node2: Pod,
    pods: Vec<Pod>,
    dir: PathBuf,
}

impl Cluster {
    fn new() -> Self {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let pod = |name: &str, ip: Ipv4Addr| Pod {
            ns: format!("rmn{tag}{name}"),
            ip4: ip,
            ip6: "::1".parse().unwrap(),
        };
        let b = 10 + n as u8;
        let node1 = pod("n1", Ipv4Addr::new(10, 203, b, 1));
        let node2 = pod("n2", Ipv4Addr::new(10, 203, b, 2));
        let pods = vec![
            pod("p1", Ipv4Addr::new(10, 204, b, 11)),
            pod("p2", Ipv4Addr::new(10, 204, b, 12)),
            pod("p3", Ipv4Addr::new(10, 204, b, 13)),
            pod("p4", Ipv4Addr::new(10, 205, b, 14)),
        ];
        let dir = std::env::temp_dir().join(format!("ringmesh-node-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = Self {
            tag,
            node1,
            node2,
            pods,
            dir,
        };
        c.build();
        c
    }

    fn build(&self) {
        let t = &self.tag;
        let (n1, n2) = (&self.node1.ns, &self.node2.ns);
        for p in [&self.node1, &self.node2].into_iter().chain(&self.pods) {
            must(&format!("ip netns add {}", p.ns));
            must(&format!("ip -n {} link set lo up", p.ns));
        }
        let b = self.node1.ip4.octets()[2];
        // Node 1: a bridge for its three pods.
        must(&format!(
            "ip -n {n1} link add br{t} type bridge && ip -n {n1} addr add 10.204.{b}.1/24 dev br{t} && ip -n {n1} link set br{t} up"
        ));
        for (i, p) in self.pods.iter().enumerate() {
            let (node, gw) = if i < 3 {
                (n1, format!("10.204.{b}.1"))
            } else {
                (n2, format!("10.205.{b}.1"))
            };
            must(&format!(
                "ip link add h{t}{i} netns {node} type veth peer name eth0 netns {}",
                p.ns
            ));
            must(&format!(
                "ip -n {} addr add {}/24 dev eth0 && ip -n {} link set eth0 up && ip -n {} route add default via {gw}",
                p.ns, p.ip4, p.ns, p.ns
            ));
            if i < 3 {
                must(&format!(
                    "ip -n {node} link set h{t}{i} master br{t} && ip -n {node} link set h{t}{i} up"
                ));
            } else {
                must(&format!(
                    "ip -n {node} addr add {gw}/24 dev h{t}{i} && ip -n {node} link set h{t}{i} up"
                ));
            }
        }
        // Between the nodes.
        must(&format!(
            "ip link add x{t}a netns {n1} type veth peer name x{t}b netns {n2}"
        ));
        must(&format!(
            "ip -n {n1} addr add {}/24 dev x{t}a && ip -n {n1} link set x{t}a up && \
             ip -n {n2} addr add {}/24 dev x{t}b && ip -n {n2} link set x{t}b up && \
             ip -n {n1} route add 10.205.{b}.0/24 via {} && ip -n {n2} route add 10.204.{b}.0/24 via {} && \
             ip netns exec {n1} sysctl -qw net.ipv4.ip_forward=1 && ip netns exec {n2} sysctl -qw net.ipv4.ip_forward=1",
            self.node1.ip4, self.node2.ip4, self.node2.ip4, self.node1.ip4
        ));
    }

    fn pod(&self, i: usize) -> &Pod {
        &self.pods[i - 1]
    }

    fn socket(&self, node: usize) -> PathBuf {
        self.dir.join(format!("node{node}.sock"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in [&self.node1, &self.node2].into_iter().chain(&self.pods) {
            let _ = support::netns::sh(&format!("ip netns del {} 2>/dev/null", p.ns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process we started, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Says where each connection arrived and from whom, then echoes one line.
fn app(pod: &Pod) {
    let l = pod.run(|| TcpListener::bind(("0.0.0.0", APP_PORT)).unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(&s).read_line(&mut line);
                let reply = format!("peer={} echo={line}", s.peer_addr().unwrap());
                let _ = s.write_all(reply.as_bytes());
            });
        }
    });
}

/// One request from `pod` to `dst`: the reply, or the error.
fn ask(pod: &Pod, dst: SocketAddr, msg: &str) -> Result<String, String> {
    let msg = msg.to_string();
    pod.run(move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| format!("read: {e}"))?;
        if reply.is_empty() {
            return Err("closed without a reply".into());
        }
        Ok(reply)
    })
}

fn meshctl_node(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("meshctl"))
        .arg("node")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

fn register(socket: &Path, name: &str, pod: &Pod, selector: Option<&str>) {
    let netns = format!("/run/netns/{}", pod.ns);
    let addr = pod.ip4.to_string();
    let short = name.trim_start_matches("demo/");
    let spiffe = id(short);
    let mut args = vec![
        "add",
        "--name",
        name,
        "--netns",
        &netns,
        "--spiffe-id",
        &spiffe,
        "--addr",
        &addr,
    ];
    if let Some(s) = selector {
        args.extend(["--selector", s]);
    }
    let out = meshctl_node(socket, &args);
    assert!(
        out.status.success(),
        "meshctl node add {name}: {}",
        text(&out)
    );
}

fn config(socket: &Path, admin_socket: &Path, c: &Cluster) -> String {
    let svc = |n: usize| {
        format!(
            "  - name: svc{n}\n    addrs: [\"10.96.0.{n}:{APP_PORT}\"]\n    endpoints: [{{ addr: \"{}\", identity: \"{}\" }}]\n",
            c.pod(n).addr4(APP_PORT),
            id(&format!("p{n}"))
        )
    };
    format!(
        "mode: node\nnode: {{ socket: \"{}\" }}\nidentity: {{ source: delegated, socket: \"{}\" }}\n\
         inbound: {{ mode: strict }}\n\
         access:\n  default: deny\n  rules:\n    - destination: {{ port: {APP_PORT} }}\n      sources: [\"{}\"]\n\
         services:\n{}{}{}",
        socket.display(),
        admin_socket.display(),
        id("p1"),
        svc(2),
        svc(3),
        svc(4)
    )
}

fn vip(n: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 96, 0, n), APP_PORT))
}

fn node_mode(driver: &str) {
    let c = Cluster::new();
    let admin = c.dir.join("admin.sock");
    let workload_api = c.dir.join("workload.sock");
    let ttl = format!("{}s", TTL.as_secs());
    let mut identity = Command::new(bin("meshctl"));
    identity
        .args(["identity", "serve", "--ttl", &ttl, "--delegate-uid", "0"])
        .arg("--socket")
        .arg(&workload_api)
        .arg("--admin-socket")
        .arg(&admin)
        .args(["--no-rotate", "ringmesh:workload:demo/p3-expiring"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(c.dir.join("identity.log")).unwrap());
    for p in 1..=4 {
        identity.arg("--selector").arg(format!(
            "ringmesh:workload:demo/p{p}={}",
            id(&format!("p{p}"))
        ));
    }
    identity
        .arg("--selector")
        .arg(format!("ringmesh:workload:demo/p3-expiring={}", id("p3")));
    let _identity = Proc(identity.spawn().unwrap());
    wait_until("the identity server", Duration::from_secs(10), || {
        admin.exists()
    });

    // Each pod's own interception, bypassing the node proxy by its mark.
    for p in &c.pods {
        let out = p
            .command(bin("mesh-redirect").to_str().unwrap())
            .args(["install", "--backend", "nftables", "--no-ipv6"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        app(p);
    }
    let n1 = ProxyProc::start(
        &c.node1,
        &config(&c.socket(1), &admin, &c),
        &[],
        &["--driver", driver, "--drain-timeout", "1s"],
    );
    let _n2 = ProxyProc::start(
        &c.node2,
        &config(&c.socket(2), &admin, &c),
        &[],
        &["--driver", driver, "--drain-timeout", "1s"],
    );
    register(&c.socket(1), "demo/p1", c.pod(1), None);
    register(&c.socket(1), "demo/p2", c.pod(2), None);
    register(&c.socket(2), "demo/p4", c.pod(4), None);
    wait_until("p1's SVID", Duration::from_secs(10), || {
        n1.metrics()
            .contains(&format!("workload=\"demo/p1\",spiffe_id=\"{}\"", id("p1")))
    });

    // Same node and across nodes, by VIP and by address, over mTLS; the apps see their own
    // pod's loopback (the node proxy connected from inside the pod).
    let p1 = c.pod(1).clone();
    for (dst, what) in [
        (vip(2), "same node, VIP"),
        (c.pod(2).addr4(APP_PORT), "same node, address"),
        (vip(4), "across nodes"),
    ] {
        let reply = ask(&p1, dst, what).unwrap_or_else(|e| panic!("{what}: {e}\n{}", n1.log()));
        assert!(reply.contains(&format!("echo={what}")), "{reply}");
        assert!(reply.contains("peer=127.0.0.1:"), "{what}: {reply}");
    }
    let handshakes = |p: &ProxyProc, w: &str, dir: &str| {
        p.metric(&format!(
            "ringmesh_tls_handshakes_total{{workload=\"{w}\",direction=\"{dir}\",result=\"ok\"}}"
        ))
    };
    assert!(handshakes(&n1, "demo/p1", "outbound") >= 3);
    assert!(handshakes(&n1, "demo/p2", "inbound") >= 2);
    assert!(handshakes(&_n2, "demo/p4", "inbound") >= 1);

    // Background traffic p1 -> p2 for the rest of the test: no error allowed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let last_error = Arc::new(std::sync::Mutex::new(String::new()));
    let bg = {
        let (stop, ok, errors, last_error) =
            (stop.clone(), ok.clone(), errors.clone(), last_error.clone());
        let p1 = p1.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match ask(&p1, vip(2), "background") {
                    Ok(r) if r.contains("echo=background") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        *last_error.lock().unwrap() = r;
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        *last_error.lock().unwrap() = e;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // A pod added at runtime is served within a second.
    let added = Instant::now();
    register(&c.socket(1), "demo/p3", c.pod(3), None);
    loop {
        if ask(&p1, vip(3), "new pod").is_ok_and(|r| r.contains("echo=new pod")) {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "p3 not served a second after it was added\n{}",
            n1.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The receiving proxy sees the sending pod's SPIFFE ID: p3 (same node as p1) is refused
    // by p2's access rule, which admits only p1.
    let p3 = c.pod(3).clone();
    assert!(
        ask(&p3, vip(2), "from p3").is_err(),
        "p3 must be refused by p2's policy"
    );
    wait_until("p3's refusal to be counted", Duration::from_secs(5), || {
        n1.metric(&format!(
            "ringmesh_access_denied_total{{workload=\"demo/p2\",source=\"{}\"}}",
            id("p3")
        )) == 1
    });

    // A pod removed: its listeners close and its connections end; the others carry on.
    let held = p3.run(|| TcpStream::connect_timeout(&vip(4), Duration::from_secs(3)).unwrap());
    let out = meshctl_node(&c.socket(1), &["remove", "--name", "demo/p3"]);
    assert!(out.status.success(), "{}", text(&out));
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let gone = (&held).read(&mut buf);
    assert!(
        matches!(gone, Ok(0) | Err(_)),
        "p3's connection outlived its removal: {gone:?}"
    );
    let refused = p3.run(|| TcpStream::connect_timeout(&vip(4), Duration::from_secs(3)));
    assert!(refused.is_err(), "p3's outbound listener is still there");
    assert!(
        ask(&p1, vip(3), "removed").is_err(),
        "p3's inbound listener is still there"
    );
    let listed = text(&meshctl_node(&c.socket(1), &["list"]));
    assert!(!listed.contains("demo/p3"), "{listed}");

    // One workload's SVID expires (issued once, never renewed): only it fails closed.
    register(
        &c.socket(1),
        "demo/p3",
        c.pod(3),
        Some("ringmesh:workload:demo/p3-expiring"),
    );
    wait_until("p3 to be served again", Duration::from_secs(5), || {
        ask(&p1, vip(3), "again").is_ok_and(|r| r.contains("echo=again"))
    });
    let expiring = Instant::now();
    wait_until("p3's SVID to expire", TTL + Duration::from_secs(5), || {
        ask(&p1, vip(3), "expired").is_err()
    });
    assert!(expiring.elapsed() >= TTL - Duration::from_secs(2));
    assert!(ask(&p3, vip(4), "p3 without SVID").is_err());
    // p1, p2 and p4 rotated meanwhile (TTL/2) and still work; the node proxy stays ready.
    assert!(ask(&p1, vip(4), "still").unwrap().contains("echo=still"));
    assert_eq!(
        n1.pod
            .run(|| support::http_get("127.0.0.1:15000".parse().unwrap(), "/ready").0),
        200
    );
    let identity = n1
        .pod
        .run(|| support::http_get("127.0.0.1:15000".parse().unwrap(), "/identity").1);
    let identity: serde_json::Value = serde_json::from_str(&identity).unwrap();
    let by = |w: &str| {
        identity["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["workload"] == w)
            .cloned()
            .unwrap_or_else(|| panic!("{w} not in /identity: {identity}"))
    };
    assert_eq!(by("demo/p3")["valid"], false);
    assert_eq!(by("demo/p1")["valid"], true);
    assert_eq!(by("demo/p1")["spiffe_id"], id("p1"));

    // A workload whose namespace is deleted under the proxy is cleaned up and counted.
    must(&format!("ip netns del {}", c.pod(3).ns));
    wait_until("p3 to be removed", Duration::from_secs(5), || {
        n1.metric("ringmesh_node_registrations_total{result=\"netns_gone\"}") == 1
    });
    assert_eq!(n1.metric("ringmesh_node_workloads"), 2);
    assert!(!n1.metrics().contains("workload=\"demo/p3\""));

    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "the background traffic ran"
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "background traffic failed: {}",
        last_error.lock().unwrap()
    );
}

mod node {
    #[test]
    fn io_uring() {
        super::node_mode("uring");
    }
    #[test]
    fn epoll() {
        super::node_mode("epoll");
    }
}
