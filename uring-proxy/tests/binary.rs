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

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringmesh-bin-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
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
