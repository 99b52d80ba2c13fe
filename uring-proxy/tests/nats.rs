//! Configuration over NATS against real servers (Debian's nats-server 2.9.10 and the current
//! one from PyPI), with JetStream and TLS with client certificates mapped to users: an
//! in-process proxy follows the control plane while the test pushes versions, kills servers,
//! writes bad parts and tries what a proxy's credentials must not allow.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_core::WorkloadKey;
use support::natsbed::{ControlPlane, Dir, Flavor, Pki, Server, WORKLOAD};
use support::*;
use uring_proxy::{DriverChoice, Proxy};

both_servers!(
    versions_survive_server_restarts,
    cluster_failover_misses_no_version,
    nats_down_at_start_then_persisted_on_restart,
    bad_versions_are_rejected_and_reported,
    credentials_are_least_privilege,
    config_change_under_load,
);

#[test]
fn ten_thousand_services() {
    big_config(Flavor::Pypi);
}

fn proxy_config(pki: &Pki, servers: &[String], persist: &Path) -> String {
    let (cert, key) = pki.cert("proxy");
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "control_plane:\n  nats:\n    servers: [{}]\n    tls: {{ ca: \"{}\", cert: \"{}\", key: \"{}\" }}\n    persist: \"{}\"\n    status_interval: 1s\n",
        servers.join(", "),
        pki.bundle().display(),
        cert.display(),
        key.display(),
        persist.display()
    )
}

fn start_proxy(cfg: &str, orig_dst: SocketAddr) -> Proxy {
    let mut opts = options(DriverChoice::Uring, 2, fixed(orig_dst));
    opts.workload = WorkloadKey::parse(WORKLOAD).unwrap();
    start_with(config(cfg), opts)
}

/// Version `v` of a five-service mesh in which every value carries `v`: a config mixed from
/// two versions would show two numbers.
fn version_doc(v: u64) -> String {
    let mut s = format!(
        "limits: {{ max_connections_per_worker: {} }}\nservices:\n",
        1000 + v
    );
    for i in 0..5 {
        s.push_str(&format!(
            "  - {{ name: s{i}, addrs: [\"10.96.0.{}:80\"], endpoints: [{{ addr: \"10.1.{i}.1:{}\" }}] }}\n",
            i + 1,
            10_000 + v
        ));
    }
    s
}

fn config_json(p: &Proxy) -> serde_json::Value {
    let (_, body) = http_get(p.admin_addr().unwrap(), "/config");
    serde_json::from_str(&body).unwrap()
}

/// The version in force and whether every value in it is that version's.
fn applied(p: &Proxy) -> Option<(u64, bool)> {
    let c = config_json(p);
    let v: u64 = c["version"].as_str()?.parse().ok()?;
    let live = &c["in_force"]["live"];
    let limit = live["limits"]["max_connections_per_worker"].as_u64()?;
    let mut whole = limit == 1000 + v;
    for s in live["services"].as_array()? {
        let addr = s["endpoints"][0]["addr"].as_str()?;
        whole &= addr.ends_with(&format!(":{}", 10_000 + v));
    }
    Some((v, whole))
}

fn wait_version(p: &Proxy, v: u64, within: Duration) {
    wait_until(&format!("version {v} applied"), within, || {
        applied(p).is_some_and(|(got, _)| got >= v)
    });
}

/// New connections through the proxy, one after another, until `stop`: the count of
/// exchanges and of failures.
fn traffic(p: &Proxy, stop: Arc<AtomicBool>) -> thread::JoinHandle<(u64, u64)> {
    let addr = p.outbound_addr();
    thread::spawn(move || {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let r = std::panic::catch_unwind(|| {
                let mut c = connect(addr);
                roundtrip(&mut c, b"through the proxy");
            });
            if r.is_ok() {
                ok += 1;
            } else {
                failed += 1;
            }
            thread::sleep(Duration::from_millis(5));
        }
        (ok, failed)
    })
}

fn versions_survive_server_restarts(flavor: Flavor) {
    let pki = Pki::new();
    let mut server = Server::start(flavor, &pki, "n1", None);
    let cp = ControlPlane::connect(&pki, &[server.url()], 1);
    let dir = Dir::new("restarts");
    let echo = echo_server();
    let p = start_proxy(
        &proxy_config(&pki, &[server.url()], &dir.path("persist.json")),
        echo.addr,
    );

    // Watch the proxy the whole time: the version only rises, and is never half applied.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = traffic(&p, stop.clone());
    let watcher = {
        let (stop, admin) = (stop.clone(), p.admin_addr().unwrap());
        thread::spawn(move || {
            let (mut last, mut seen, mut mixed) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let (_, body) = http_get(admin, "/config");
                let c: serde_json::Value = serde_json::from_str(&body).unwrap();
                if c["source"].as_str().is_some_and(|s| s.starts_with("nats")) {
                    let v: u64 = c["version"].as_str().unwrap().parse().unwrap();
                    assert!(v >= last, "the version went back from {last} to {v}");
                    let live = &c["in_force"]["live"];
                    let whole = live["limits"]["max_connections_per_worker"] == 1000 + v
                        && live["services"].as_array().unwrap().iter().all(|s| {
                            s["endpoints"][0]["addr"]
                                .as_str()
                                .unwrap()
                                .ends_with(&format!(":{}", 10_000 + v))
                        });
                    if !whole {
                        mixed.push(v);
                    }
                    if v != last {
                        seen += 1;
                    }
                    last = v;
                }
                thread::sleep(Duration::from_millis(3));
            }
            (last, seen, mixed)
        })
    };

    let t0 = Instant::now();
    for v in 1..=200u64 {
        if v == 60 || v == 130 {
            server.restart();
        }
        cp.push("mesh", v, &version_doc(v));
        // 50 versions a second.
        let due = t0 + Duration::from_millis(20 * v);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    wait_version(&p, 200, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let (last, seen, mixed) = watcher.join().unwrap();
    let (ok, failed) = traffic.join().unwrap();
    assert_eq!(applied(&p), Some((200, true)));
    assert_eq!(last, 200);
    assert!(mixed.is_empty(), "half-applied versions seen: {mixed:?}");
    assert!(seen >= 2, "{seen} versions seen");
    assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
    assert!(ok > 100, "only {ok} connections");
    let m = p.metrics();
    assert!(metric_in(&m, "ringmesh_nats_reconnects_total") >= 2, "{m}");
    assert_eq!(
        metric_in(
            &m,
            "ringmesh_nats_config_versions_total{result=\"rejected\"}"
        ),
        0
    );
    assert_eq!(metric_in(&m, "ringmesh_config_version"), 200);
}

fn cluster_failover_misses_no_version(flavor: Flavor) {
    let pki = Pki::new();
    let routes: Vec<u16> = (0..3).map(|_| support::natsbed::free_port()).collect();
    let mut servers: Vec<Server> = (0..3)
        .map(|i| {
            let others = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            Server::start(flavor, &pki, &format!("n{i}"), Some((routes[i], others)))
        })
        .collect();
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let cp = ControlPlane::connect(&pki, &urls, 3);
    cp.push("mesh", 1, &version_doc(1));
    let dir = Dir::new("cluster");
    let echo = echo_server();
    let p = start_proxy(
        &proxy_config(&pki, &urls, &dir.path("persist.json")),
        echo.addr,
    );
    wait_version(&p, 1, Duration::from_secs(20));
    let on = config_json(&p)["nats"]["server"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = servers
        .iter()
        .position(|s| on.starts_with(&s.name))
        .unwrap();
    servers[victim].kill();
    for v in 2..=30 {
        cp.push("mesh", v, &version_doc(v));
    }
    wait_version(&p, 30, Duration::from_secs(30));
    assert_eq!(applied(&p), Some((30, true)));
    let now_on = config_json(&p)["nats"]["server"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !now_on.starts_with(&servers[victim].name),
        "still on {now_on}"
    );
}

fn nats_down_at_start_then_persisted_on_restart(flavor: Flavor) {
    let pki = Pki::new();
    let port = support::natsbed::free_port();
    let url = format!("tls://127.0.0.1:{port}");
    let dir = Dir::new("down");
    let persist = dir.path("persist.json");
    let echo = echo_server();
    // No server yet: the proxy starts on its file config, serves, and says why in /ready.
    let cfg = format!(
        "egress: allow\n{}",
        proxy_config(&pki, std::slice::from_ref(&url), &persist)
    );
    let p = start_proxy(&cfg, echo.addr);
    let mut c = connect(p.outbound_addr());
    roundtrip(&mut c, b"served without NATS");
    let (code, body) = http_get(p.admin_addr().unwrap(), "/ready");
    assert_eq!(code, 200);
    assert!(body.contains("NATS not connected"), "{body}");
    assert_eq!(metric(&p, "ringmesh_nats_connected"), 0);

    // NATS comes up (on that port) with a version in it: picked up within seconds.
    let server = start_on(flavor, &pki, port);
    let cp = ControlPlane::connect(&pki, std::slice::from_ref(&url), 1);
    cp.push("mesh", 7, &version_doc(7));
    wait_version(&p, 7, Duration::from_secs(15));
    assert_eq!(metric(&p, "ringmesh_nats_connected"), 1);
    wait_until("persisted", Duration::from_secs(5), || persist.exists());
    drop(p);
    drop(cp);
    drop(server);

    // Restarted with NATS down: it resumes from what it kept, not from the file.
    let p = start_proxy(&cfg, echo.addr);
    assert_eq!(applied(&p), Some((7, true)));
    assert!(
        config_json(&p)["source"]
            .as_str()
            .unwrap()
            .starts_with("persisted")
    );
    roundtrip(&mut connect(p.outbound_addr()), b"still served");
}

/// A server on a given port (the test chose it before the server existed).
fn start_on(flavor: Flavor, pki: &Pki, port: u16) -> Server {
    // Server::start picks its own port; retry until it picks ours is not possible, so the
    // port is reserved by starting with an explicit listen address instead.
    Server::start_at(flavor, pki, "late", port)
}

fn bad_versions_are_rejected_and_reported(flavor: Flavor) {
    let pki = Pki::new();
    let server = Server::start(flavor, &pki, "n1", None);
    let cp = ControlPlane::connect(&pki, &[server.url()], 1);
    cp.push("mesh", 5, &version_doc(5));
    let dir = Dir::new("bad");
    let echo = echo_server();
    let p = start_proxy(
        &proxy_config(&pki, &[server.url()], &dir.path("p.json")),
        echo.addr,
    );
    wait_version(&p, 5, Duration::from_secs(15));

    use ringmesh_ctrl::nats::layout::{Manifest, Part, digest};
    let rt = &cp.rt;
    // Writes raw parts and a manifest naming them, as a broken control plane might.
    let write = |version: u64, parts: &[(&str, Vec<u8>)], extra: &[(&str, u64)]| {
        rt.block_on(async {
            let mut named = std::collections::BTreeMap::new();
            for (k, v) in parts {
                let rev = cp.config.put(*k, v.clone().into()).await.unwrap();
                named.insert(
                    k.to_string(),
                    Part {
                        revision: rev,
                        sha256: digest(v),
                    },
                );
            }
            for (k, rev) in extra {
                named.insert(
                    k.to_string(),
                    Part {
                        revision: *rev,
                        sha256: "00".into(),
                    },
                );
            }
            let m = Manifest {
                version,
                parts: named,
                published_at: 0,
            };
            cp.config
                .put("mesh.manifest", serde_json::to_vec(&m).unwrap().into())
                .await
                .unwrap();
        });
    };
    let rejected_with = |want: &str| {
        // Each look at the reports makes a consumer on the server: look every 100 ms.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cp.statuses().iter().any(|s| {
            s.rejected
                .as_ref()
                .is_some_and(|r| r.errors.iter().any(|e| e.contains(want)))
        }) {
            assert!(Instant::now() < deadline, "no rejection naming {want:?}");
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            applied(&p),
            Some((5, true)),
            "the running version is unchanged"
        );
        roundtrip(&mut connect(p.outbound_addr()), b"still serving");
    };
    let svc = |body: &str| body.as_bytes().to_vec();
    write(
        6,
        &[(
            "mesh.svc.a",
            svc("{\"name\": \"a\", \"addrs\": [\"10.96.0.1:80\""),
        )],
        &[],
    );
    rejected_with("not valid JSON");
    write(
        7,
        &[(
            "mesh.svc.a",
            svc("{\"name\": \"a\", \"addrs\": \"10.96.0.1:80\", \"endpoints\": []}"),
        )],
        &[],
    );
    rejected_with("invalid type");
    write(
        8,
        &[(
            "mesh.svc.a",
            svc(
                "{\"name\": \"a\", \"addrs\": [\"10.96.0.1:80\"], \"endpoints\": [{\"addr\": \"10.0.0.1:80\"}], \"colour\": 1}",
            ),
        )],
        &[],
    );
    rejected_with("unknown field");
    let huge = format!(
        "{{\"name\": \"a\", \"pad\": \"{}\"}}",
        "x".repeat(1_000_000)
    );
    write(9, &[("mesh.svc.a", huge.into_bytes())], &[]);
    rejected_with("above the 768 KiB limit");
    write(
        10,
        &[
            (
                "mesh.svc.a",
                svc(
                    "{\"name\": \"a\", \"addrs\": [\"10.96.0.1:80\"], \"endpoints\": [{\"addr\": \"10.0.0.1:80\"}]}",
                ),
            ),
            (
                "mesh.svc.b",
                svc(
                    "{\"name\": \"a\", \"addrs\": [\"10.96.0.2:80\"], \"endpoints\": [{\"addr\": \"10.0.0.2:80\"}]}",
                ),
            ),
        ],
        &[],
    );
    rejected_with("the service is named \"a\", but its key says \"b\"");
    // A manifest naming a part that never comes: not applied, and waited for, not rejected.
    write(11, &[], &[("mesh.svc.ghost", 999_999)]);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(applied(&p), Some((5, true)));
    // An older version is ignored.
    write(3, &[], &[]);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(applied(&p), Some((5, true)));
    // And a good one still goes through.
    cp.push("mesh", 12, &version_doc(12));
    wait_version(&p, 12, Duration::from_secs(15));
    assert_eq!(applied(&p), Some((12, true)));
    assert!(
        metric(
            &p,
            "ringmesh_nats_config_versions_total{result=\"rejected\"}"
        ) >= 5
    );
    let me = cp
        .statuses()
        .into_iter()
        .find(|s| s.workload == WORKLOAD)
        .unwrap();
    assert_eq!(me.applied.map(|v| v.mesh), Some(12));
}

fn credentials_are_least_privilege(flavor: Flavor) {
    let pki = Pki::new();
    let server = Server::start(flavor, &pki, "n1", None);
    let cp = ControlPlane::connect(&pki, &[server.url()], 1);
    cp.push("mesh", 1, &version_doc(1));
    let rt = support::natsbed::runtime();
    // No client certificate: the server refuses the connection.
    let no_cert = rt.block_on(async {
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            use rustls_pki_types::pem::PemObject;
            for c in rustls_pki_types::CertificateDer::pem_file_iter(pki.bundle()).unwrap() {
                r.add(c.unwrap()).unwrap();
            }
            r
        };
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .tls_client_config(cfg)
            .connection_timeout(Duration::from_secs(3))
            .connect(server.url())
            .await
    });
    assert!(no_cert.is_err(), "a client without a certificate got in");

    // A proxy's certificate reads config but cannot write it.
    let before = rt.block_on(async { cp.config.get("mesh.manifest").await.unwrap() });
    let attempt = rt.block_on(async {
        let js = ringmesh_ctrl::nats::publish::connect(&[server.url()], pki.material("proxy"))
            .await
            .unwrap();
        let kv = js
            .get_key_value(ringmesh_ctrl::nats::CONFIG_BUCKET)
            .await
            .unwrap();
        let read = kv.get("mesh.manifest").await;
        let write = tokio::time::timeout(
            Duration::from_secs(8),
            kv.put(
                "mesh.manifest",
                bytes::Bytes::from_static(b"{\"version\": 999, \"parts\": {}}"),
            ),
        )
        .await;
        let other_status = tokio::time::timeout(
            Duration::from_secs(8),
            js.get_key_value(ringmesh_ctrl::nats::STATUS_BUCKET)
                .await
                .unwrap()
                .put("someone-else", bytes::Bytes::from_static(b"{}")),
        )
        .await;
        (read.is_ok(), write, other_status)
    });
    assert!(attempt.0, "the proxy cannot read the config");
    assert!(
        !matches!(attempt.1, Ok(Ok(_))),
        "a proxy wrote config: {:?}",
        attempt.1
    );
    assert!(
        !matches!(attempt.2, Ok(Ok(_))),
        "a proxy wrote another's status"
    );
    let after = rt.block_on(async { cp.config.get("mesh.manifest").await.unwrap() });
    assert_eq!(before, after, "the manifest changed");
    // An identity the server does not know is refused too.
    let intruder = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(8),
            ringmesh_ctrl::nats::publish::connect(&[server.url()], pki.material("intruder")),
        )
        .await
    });
    assert!(
        !matches!(intruder, Ok(Ok(_))),
        "an unknown identity connected"
    );
}

fn config_change_under_load(flavor: Flavor) {
    let pki = Pki::new();
    let server = Server::start(flavor, &pki, "n1", None);
    let cp = ControlPlane::connect(&pki, &[server.url()], 1);
    let (a, b) = (echo_server(), echo_server());
    let doc = |v: u64, ep: SocketAddr| {
        format!(
            "services:\n  - {{ name: web, addrs: [\"10.96.0.10:80\"], endpoints: [{{ addr: \"{ep}\" }}] }}\nlimits: {{ max_connections_per_worker: {} }}\n",
            1000 + v
        )
    };
    cp.push("mesh", 1, &doc(1, a.addr));
    let dir = Dir::new("load");
    let p = start_proxy(
        &proxy_config(&pki, &[server.url()], &dir.path("p.json")),
        "10.96.0.10:80".parse().unwrap(),
    );
    wait_until("version 1", Duration::from_secs(15), || {
        config_json(&p)["version"] == "1"
    });
    let mut open: Vec<_> = (0..8).map(|_| connect(p.outbound_addr())).collect();
    for c in &mut open {
        roundtrip(c, b"to a");
    }
    assert_eq!(a.accepted.load(Ordering::SeqCst), 8);
    let stop = Arc::new(AtomicBool::new(false));
    let exchanges = Arc::new(AtomicU64::new(0));
    let talkers: Vec<_> = open
        .into_iter()
        .map(|mut c| {
            let (stop, n) = (stop.clone(), exchanges.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    roundtrip(&mut c, b"keep talking");
                    n.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    cp.push("mesh", 2, &doc(2, b.addr));
    wait_until("version 2", Duration::from_secs(15), || {
        config_json(&p)["version"] == "2"
    });
    for _ in 0..5 {
        roundtrip(&mut connect(p.outbound_addr()), b"to b");
    }
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        5,
        "new connections follow the new endpoint"
    );
    assert_eq!(a.accepted.load(Ordering::SeqCst), 8);
    let before = exchanges.load(Ordering::Relaxed);
    wait_until(
        "open connections keep talking",
        Duration::from_secs(5),
        || exchanges.load(Ordering::Relaxed) > before + 80,
    );
    stop.store(true, Ordering::Relaxed);
    for t in talkers {
        t.join()
            .expect("an open connection failed across the change");
    }
}

/// 10,000 services and 100,000 endpoints: pushed, applied, and a one-service change applied
/// by a small write. Prints the times and memory (recorded in perf/).
fn big_config(flavor: Flavor) {
    let pki = Pki::new();
    let server = Server::start(flavor, &pki, "n1", None);
    let cp = ControlPlane::connect(&pki, &[server.url()], 1);
    let mesh = |v: u64, changed: Option<usize>| {
        let mut s = format!("version: {v}\nservices:\n");
        for i in 0..10_000usize {
            let port = if Some(i) == changed { 9 } else { 8 };
            let eps: Vec<String> = (0..10)
                .map(|e| {
                    format!(
                        "{{ addr: \"10.{}.{}.{}:808{port}\" }}",
                        i / 256 % 256,
                        i % 256,
                        e + 1
                    )
                })
                .collect();
            s.push_str(&format!(
                "  - {{ name: svc-{i}, addrs: [\"10.{}.{}.{}:80\"], endpoints: [{}] }}\n",
                96 + i / 65536,
                i / 256 % 256,
                i % 256,
                eps.join(", ")
            ));
        }
        s
    };
    let t0 = Instant::now();
    let r = cp.push("mesh", 1, &mesh(1, None));
    let pushed = t0.elapsed();
    assert_eq!(r.written, 10_001, "every service and the base");
    let dir = Dir::new("big");
    let echo = echo_server();
    let rss0 = rss_kib();
    let t1 = Instant::now();
    let p = start_proxy(
        &proxy_config(&pki, &[server.url()], &dir.path("p.json")),
        echo.addr,
    );
    wait_until(
        "version 1 of 10,000 services",
        Duration::from_secs(120),
        || config_json(&p)["version"] == "1",
    );
    let first = t1.elapsed();
    let rss1 = rss_kib();
    let t2 = Instant::now();
    let r = cp.push("mesh", 2, &mesh(2, Some(4242)));
    let small_push = t2.elapsed();
    assert_eq!(
        r.written, 1,
        "a one-service change writes one part (and the manifest)"
    );
    assert!(r.bytes < 2000, "{} bytes", r.bytes);
    wait_until("version 2", Duration::from_secs(60), || {
        config_json(&p)["version"] == "2"
    });
    let change = t2.elapsed();
    let c = config_json(&p);
    let svc = c["in_force"]["live"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "svc-4242")
        .unwrap()
        .clone();
    assert!(
        svc["endpoints"][0]["addr"]
            .as_str()
            .unwrap()
            .ends_with(":8089")
    );
    eprintln!(
        "10,000 services / 100,000 endpoints ({flavor:?}): push {pushed:.2?}, first apply (connect, read, validate) {first:.2?}, \
         one-service change: push {small_push:.2?}, applied after {change:.2?}; test process RSS +{} MiB",
        rss1.saturating_sub(rss0) / 1024
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}
