//! The `uring-proxy` binary itself: start-up errors that name cause and fix, and real signals
//! (SIGHUP re-reads the config, SIGTERM drains and exits 0), on both drivers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{http_get, wait_until};
use uring_proxy::DriverChoice;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uring-proxy"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(name: &str) -> support::ScratchDir {
    support::ScratchDir::new(&format!("ringmesh-bin-{}-{name}", std::process::id()))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn loopback_config(admin: u16) -> String {
    format!(
        "listeners: {{ outbound: \"127.0.0.1:0\", inbound: \"127.0.0.1:0\" }}\nadmin: \"127.0.0.1:{admin}\"\nbypass_mark: 0\n"
    )
}

#[test]
fn invalid_config_lists_every_error_and_exits_2() {
    let dir = scratch("invalid");
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "admin: nowhere\ntimeouts: { idle: 0s }\nservices: [{ name: a, addrs: [\"1.2.3.4:0\"], endpoints: [] }]\n").unwrap();
    let out = proxy()
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for want in [
        "admin: invalid socket address",
        "timeouts.idle: must be longer than zero",
        "services[0].addrs[0]: port 0",
        "services[0].endpoints: a service needs",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    let out = proxy()
        .args(["--config", "/nonexistent/ringmesh.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read config file /nonexistent/ringmesh.yaml"),
        "{}",
        stderr(&out)
    );
    let out = proxy()
        .args(["--config", path.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn port_in_use_is_named_and_exits_1() {
    for driver in ["uring", "epoll"] {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = scratch(&format!("inuse-{driver}"));
        let path = dir.join("p.yaml");
        std::fs::write(&path, format!("listeners: {{ outbound: \"127.0.0.1:{port}\", inbound: \"127.0.0.1:0\" }}\nadmin: \"127.0.0.1:0\"\nbypass_mark: 0\n")).unwrap();
        let out = proxy()
            .args(["--config", path.to_str().unwrap(), "--driver", driver])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "outbound listener address 127.0.0.1:{port} is already in use"
            )),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn mark_without_capability_names_the_fix() {
    support::netns::require_root();
    let dir = scratch("mark");
    let path = dir.join("p.yaml");
    // The default mark (1337) stays on; as an unprivileged uid SO_MARK is refused.
    std::fs::write(&path, "listeners: { outbound: \"127.0.0.1:0\", inbound: \"127.0.0.1:0\" }\nadmin: \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            env!("CARGO_BIN_EXE_uring-proxy"),
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("CAP_NET_ADMIN") && err.contains("bypass_mark: 0"),
        "{err}"
    );
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(c: &Child, s: Signal) {
    kill(Pid::from_raw(c.id() as i32), s).unwrap();
}

fn config(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = http_get(admin, "/config");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()
}

fn config_version(admin: SocketAddr) -> String {
    config(admin)["version"].as_str().unwrap().to_string()
}

fn sighup_reload_and_sigterm_exit(driver: DriverChoice) {
    let name = format!("{driver:?}");
    let dir = scratch(&format!("signals-{name}"));
    let path = dir.join("p.yaml");
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    std::fs::write(&path, format!("version: 1\n{}", loopback_config(port))).unwrap();
    let drv = if driver == DriverChoice::Uring {
        "uring"
    } else {
        "epoll"
    };
    let child = proxy()
        .args([
            "--config",
            path.to_str().unwrap(),
            "--driver",
            drv,
            "--workers",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Running(child);
    wait_until("admin ready", Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok() && http_get(admin, "/ready").0 == 200
    });
    assert_eq!(config_version(admin), "1");
    assert_eq!(config(admin)["source"], format!("file {}", path.display()));

    // A bad file is rejected whole; the running config stays.
    std::fs::write(
        &path,
        format!("version: 9\n{}egress: maybe\n", loopback_config(port)),
    )
    .unwrap();
    signal(&p.0, Signal::SIGHUP);
    wait_until("rejection counted", Duration::from_secs(5), || {
        http_get(admin, "/metrics")
            .1
            .contains("ringmesh_config_reloads_total{result=\"rejected\"} 1")
    });
    assert_eq!(config_version(admin), "1");

    // A good one is applied.
    std::fs::write(
        &path,
        format!("version: 2\n{}egress: deny\n", loopback_config(port)),
    )
    .unwrap();
    signal(&p.0, Signal::SIGHUP);
    wait_until("config version 2", Duration::from_secs(5), || {
        config_version(admin) == "2"
    });
    let c = config(admin);
    assert_eq!(c["in_force"]["live"]["egress"], "deny", "{c:#}");
    assert_eq!(c["restart_required"], serde_json::json!([]), "{c:#}");

    // A restart-only change: the live part is applied, the admin address stays (it is where
    // we are asking), and both /config and the metrics say a restart is needed.
    let moved = loopback_config(port).replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1");
    std::fs::write(&path, format!("version: 3\n{moved}egress: allow\n")).unwrap();
    signal(&p.0, Signal::SIGHUP);
    wait_until("config version 3", Duration::from_secs(5), || {
        config_version(admin) == "3"
    });
    let c = config(admin);
    assert_eq!(c["restart_required"], serde_json::json!(["admin"]), "{c:#}");
    assert_eq!(
        c["in_force"]["restart_only"]["admin"],
        format!("127.0.0.1:{port}")
    );
    assert_eq!(c["in_force"]["live"]["egress"], "allow");
    let m = http_get(admin, "/metrics").1;
    assert!(
        m.contains("ringmesh_config_restart_required{field=\"admin\"} 1\n"),
        "{m}"
    );

    signal(&p.0, Signal::SIGTERM);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
}

both_drivers!(sighup_reload_and_sigterm_exit);

/// Starts the proxy behind `wrapper` (a command that execs the rest) with an admin port of
/// its own; returns it once `/live` answers.
fn start_behind(name: &str, wrapper: &[&str], args: &[&str]) -> (Running, SocketAddr) {
    let port = free_port();
    start_with(name, wrapper, args, port, &loopback_config(port))
}

/// Starts the binary on `config`, whose admin port is `admin_port`.
fn start_with(
    name: &str,
    wrapper: &[&str],
    args: &[&str],
    admin_port: u16,
    config: &str,
) -> (Running, SocketAddr) {
    let dir = scratch(name);
    let path = dir.join("p.yaml");
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    std::fs::write(&path, config).unwrap();
    let (prog, pre) = wrapper
        .split_first()
        .map_or((env!("CARGO_BIN_EXE_uring-proxy"), &[][..]), |(p, rest)| {
            (*p, rest)
        });
    let mut cmd = Command::new(prog);
    cmd.args(pre);
    if !wrapper.is_empty() {
        cmd.arg(env!("CARGO_BIN_EXE_uring-proxy"));
    }
    let child = cmd
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Running(child);
    wait_until("admin answers", Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok() && http_get(admin, "/live").0 == 200
    });
    (p, admin)
}

fn metric(admin: SocketAddr, series: &str) -> u64 {
    support::metric_in(&http_get(admin, "/metrics").1, series)
}

/// The outbound listener's port, as `/config` shows it in force.
fn outbound_port_of(admin: SocketAddr) -> u16 {
    let (_, body) = http_get(admin, "/config");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["in_force"]["restart_only"]["listeners"]["outbound"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn io_uring_denied_by_seccomp_falls_back_to_epoll_and_says_why() {
    let wrapper = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/no_io_uring.py");
    let dir = scratch("seccomp");
    let path = dir.join("p.yaml");
    let (port, out_port) = (free_port(), free_port());
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    std::fs::write(
        &path,
        loopback_config(port).replace(
            "outbound: \"127.0.0.1:0\"",
            &format!("outbound: \"127.0.0.1:{out_port}\""),
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/python3")
        .arg(wrapper)
        .arg(env!("CARGO_BIN_EXE_uring-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["--driver", "auto", "--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("/usr/bin/python3 with python3-seccomp (make deps)");
    let _p = Running(child);
    wait_until("admin answers", Duration::from_secs(10), || {
        std::net::TcpStream::connect(admin).is_ok() && http_get(admin, "/ready").0 == 200
    });
    let m = http_get(admin, "/metrics").1;
    assert_eq!(
        support::metric_in(&m, "ringmesh_driver{driver=\"epoll\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        support::metric_in(&m, "ringmesh_driver{driver=\"io_uring\"}"),
        0
    );
    let reason = m
        .lines()
        .find(|l| l.starts_with("ringmesh_driver_fallback{"))
        .unwrap_or_else(|| panic!("no fallback reason in\n{m}"));
    assert!(reason.contains("io_uring_setup"), "{reason}");
    // The epoll workers serve: a connection that was never redirected has no original
    // destination, and is refused and counted as such.
    assert_eq!(outbound_port_of(admin), out_port);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", out_port)).unwrap();
    let _ = std::io::Read::read(&mut c, &mut [0u8; 1]);
    wait_until("no_original_dst counted", Duration::from_secs(5), || {
        metric(
            admin,
            "ringmesh_connections_closed_total{direction=\"outbound\",outcome=\"no_original_dst\"}",
        ) == 1
    });

    // Forced io_uring under the same filter is a start-up error that says what to do.
    let out = Command::new("/usr/bin/python3")
        .arg(wrapper)
        .arg(env!("CARGO_BIN_EXE_uring-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["--driver", "uring"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--driver auto"), "{}", stderr(&out));
}

/// A cgroup v1 cpu group with a quota, removed on drop.
struct CpuCgroup(PathBuf);

impl CpuCgroup {
    fn new(name: &str, quota_us: i64, period_us: i64) -> Self {
        support::netns::require_root();
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/cpu/ringmesh-test-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cgroup v1 cpu controller at /sys/fs/cgroup/cpu: {e}"));
        std::fs::write(dir.join("cpu.cfs_period_us"), period_us.to_string()).unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
        Self(dir)
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn workers_follow_the_cpu_quota_and_the_affinity_mask() {
    // No quota, the whole mask: one pinned worker per CPU.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let (p, admin) = start_behind("cpus-all", &[], &[]);
    assert_eq!(metric(admin, "ringmesh_workers"), cpus);
    assert_eq!(metric(admin, "ringmesh_workers_pinned"), 1);
    drop(p);

    // A quota of one CPU, in a real cgroup: one worker, not pinned (the CPUs are shared).
    let cg = CpuCgroup::new("quota", 100_000, 100_000);
    let procs = cg.0.join("cgroup.procs");
    let script = format!("echo $$ > {} && exec \"$@\"", procs.display());
    let (p, admin) = start_behind("cpus-quota", &["sh", "-c", &script, "sh"], &[]);
    assert_eq!(metric(admin, "ringmesh_workers"), 1);
    assert_eq!(metric(admin, "ringmesh_workers_pinned"), 0);
    drop(p);

    // An affinity mask of one CPU: one worker, pinned to it.
    let (p, admin) = start_behind("cpus-mask", &["taskset", "-c", "0"], &[]);
    assert_eq!(metric(admin, "ringmesh_workers"), 1);
    assert_eq!(metric(admin, "ringmesh_workers_pinned"), 1);
    drop(p);

    // --workers wins over both.
    let (p, admin) = start_behind("cpus-flag", &["taskset", "-c", "0"], &["--workers", "3"]);
    assert_eq!(metric(admin, "ringmesh_workers"), 3);
    assert_eq!(metric(admin, "ringmesh_workers_pinned"), 0);
    drop(p);
    drop(cg);
}

/// Every ```yaml block of the README is a proxy config a reader may copy: each must pass
/// `--check-config` (blocks of other YAML are fenced with another info string, such as
/// `yaml k8s`).
#[test]
fn readme_config_examples_are_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let dir = scratch("readme");
    let mut blocks = 0;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```yaml" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let path = dir.join(format!("readme-{blocks}.yaml"));
        std::fs::write(&path, block.join("\n")).unwrap();
        let out = proxy()
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README yaml block {blocks} is rejected:\n{}\n{}",
            block.join("\n"),
            stderr(&out)
        );
        blocks += 1;
    }
    assert!(blocks >= 1, "the README shows at least one config");
}

/// `--steer-by-cpu`: every connection made from a thread on CPU c is accepted by the worker
/// pinned to c, on both drivers; without pinned workers it is refused with a warning and the
/// kernel's hash spreads them.
#[test]
fn steer_by_cpu_hands_connections_to_the_worker_on_the_client_cpu() {
    let cpus: Vec<usize> = {
        let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap();
        (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    };
    assert!(
        cpus.len() >= 2,
        "this test needs two CPUs in the affinity mask, has {cpus:?}"
    );
    const PER_CPU: u64 = 24;
    for driver in ["uring", "epoll"] {
        let (admin_port, port) = (free_port(), free_port());
        let config = loopback_config(admin_port).replace(
            "outbound: \"127.0.0.1:0\"",
            &format!("outbound: \"127.0.0.1:{port}\""),
        );
        let (p, admin) = start_with(
            &format!("steer-{driver}"),
            &[],
            &["--driver", driver, "--steer-by-cpu"],
            admin_port,
            &config,
        );
        assert_eq!(metric(admin, "ringmesh_workers"), cpus.len() as u64);
        assert_eq!(metric(admin, "ringmesh_workers_pinned"), 1);
        assert_eq!(metric(admin, "ringmesh_workers_steered"), 1, "{driver}");
        assert_eq!(outbound_port_of(admin), port);
        for (worker, &cpu) in cpus.iter().enumerate() {
            let series =
                format!("ringmesh_worker_connections_accepted_total{{worker=\"{worker}\"}}");
            let before = metric(admin, &series);
            let total_before = metric(admin, "ringmesh_worker_connections_accepted_total");
            std::thread::spawn(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).unwrap();
                nix::sched::sched_setaffinity(Pid::from_raw(0), &set).unwrap();
                for _ in 0..PER_CPU {
                    // Not intercepted, so the proxy finds no original destination and
                    // closes it; accepting is what is counted.
                    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let _ = std::io::Read::read(&mut &s, &mut [0u8; 1]);
                }
            })
            .join()
            .unwrap();
            wait_until(
                "the connections are accepted",
                Duration::from_secs(10),
                || {
                    metric(admin, "ringmesh_worker_connections_accepted_total")
                        >= total_before + PER_CPU
                },
            );
            assert_eq!(
                metric(admin, &series) - before,
                PER_CPU,
                "{driver}: connections from CPU {cpu} went to workers other than {worker}:\n{}",
                http_get(admin, "/metrics").1
            );
        }
        drop(p);

        let (p, admin) = start_behind(
            &format!("steer-unpinned-{driver}"),
            &[],
            &["--driver", driver, "--steer-by-cpu", "--no-pin"],
        );
        assert_eq!(metric(admin, "ringmesh_workers_pinned"), 0);
        assert_eq!(metric(admin, "ringmesh_workers_steered"), 0, "{driver}");
        drop(p);
    }
}
