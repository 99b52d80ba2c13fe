//! A two-pod testbed: a client and a server network namespace joined by a veth pair, with
//! IPv4 and IPv6 addresses, deleted on drop even when the test fails. Root only: the tests
//! that use it fail, never skip, without root.
#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

pub fn require_root() {
    assert_eq!(
        euid(),
        0,
        "this test builds network namespaces and netfilter rules and must run as root \
         (`make test` as root); it fails rather than skip"
    );
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

pub fn must(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One "pod": a network namespace with an address of each family.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

impl Pod {
    pub fn addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip4.into(), port)
    }
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip6.into(), port)
    }

    /// Runs `prog args` inside the pod.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, prog]);
        c
    }

    pub fn sh(&self, script: &str) -> Output {
        self.command("sh").args(["-c", script]).output().unwrap()
    }

    /// Runs `f` on a thread that has entered the pod's network namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| s.spawn(|| self.enter_then(f)).join().unwrap())
    }

    /// Like [`run`](Self::run), in the background.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let pod = self.clone();
        std::thread::spawn(move || pod.enter_then(f))
    }

    fn enter_then<T>(&self, f: impl FnOnce() -> T) -> T {
        let fd = File::open(format!("/run/netns/{}", self.ns)).unwrap();
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    }
}

/// Two pods on one link.
pub struct Testbed {
    pub client: Pod,
    pub server: Pod,
    /// The server pod's end of the veth.
    pub server_if: String,
}

impl Testbed {
    pub fn new() -> Self {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let client = Pod {
            ns: format!("rmc{tag}"),
            ip4: Ipv4Addr::new(10, 200, n as u8, 1),
            ip6: format!("fd00:200:{n}::1").parse().unwrap(),
        };
        let server = Pod {
            ns: format!("rms{tag}"),
            ip4: Ipv4Addr::new(10, 200, n as u8, 2),
            ip6: format!("fd00:200:{n}::2").parse().unwrap(),
        };
        let bed = Self {
            client,
            server,
            server_if: format!("vs{tag}"),
        };
        let (c, s) = (&bed.client, &bed.server);
        must(&format!("ip netns add {} && ip netns add {}", c.ns, s.ns));
        must(&format!(
            "ip link add vc{tag} netns {} type veth peer name vs{tag} netns {}",
            c.ns, s.ns
        ));
        for (pod, dev, peer) in [(c, format!("vc{tag}"), s), (s, format!("vs{tag}"), c)] {
            let out = pod.sh(&format!(
                "set -e; ip link set lo up; ip link set {dev} up; \
                 ip addr add {}/24 dev {dev}; ip -6 addr add {}/64 dev {dev} nodad; \
                 ip route add default via {}; ip -6 route add default via {}",
                pod.ip4, pod.ip6, peer.ip4, peer.ip6
            ));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        bed
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        let _ = sh(&format!(
            "ip netns del {}; ip netns del {}",
            self.client.ns, self.server.ns
        ));
    }
}

/// The workspace's binaries, built beside this test's own.
pub fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_uring-proxy"))
        .parent()
        .unwrap()
        .to_path_buf();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// A `uring-proxy` process in a pod; SIGTERM on drop, and its log kept for failures.
pub struct ProxyProc {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub pod: Pod,
    /// Its config and log; kept when the test fails.
    _dir: super::ScratchDir,
}

impl ProxyProc {
    /// Starts `uring-proxy --config CONFIG ARGS` in the pod, behind `wrapper` (a command that
    /// execs the rest, e.g. `setpriv --reuid=1337 ...` or `prlimit --nofile=64 --`).
    pub fn start(pod: &Pod, config: &str, wrapper: &[&str], args: &[&str]) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = super::ScratchDir::new(&format!("ringmesh-e2e-{}-{n}", pod.ns));
        let cfg = dir.join("proxy.yaml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("proxy.log");
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = pod.command(prog);
                c.args(rest).arg(bin("uring-proxy"));
                c
            }
            None => pod.command(bin("uring-proxy").to_str().unwrap()),
        };
        cmd.args([
            "--config",
            cfg.to_str().unwrap(),
            "--workers",
            "2",
            "--log-level",
            "debug",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        let p = Self {
            child: Some(child),
            log,
            pod: pod.clone(),
            _dir: dir,
        };
        p.wait_ready();
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// CPU time (user + system) the process has used.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = self.pod.run(|| {
                std::net::TcpStream::connect("127.0.0.1:15000").is_ok()
                    && super::http_get("127.0.0.1:15000".parse().unwrap(), "/ready").0 == 200
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy in {} not ready; log:\n{}",
                self.pod.ns,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/metrics`, read inside the pod.
    pub fn metrics(&self) -> String {
        self.pod
            .run(|| super::http_get("127.0.0.1:15000".parse().unwrap(), "/metrics").1)
    }

    /// A series' value, as [`super::metric_in`] reads it.
    pub fn metric(&self, series: &str) -> u64 {
        super::metric_in(&self.metrics(), series)
    }

    /// Waits for the process to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "proxy in {} did not exit; log:\n{}",
                    self.pod.ns,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "proxy in {} did not exit after SIGTERM; log:\n{}",
                    self.pod.ns,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A helper process (the identity server, a capture) stopped on drop.
pub struct Spawned(Option<Child>);

impl Spawned {
    pub fn new(cmd: &mut Command, log: &Path) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Self(Some(child))
    }

    /// SIGINT (what a capture needs to flush and finish its file), then wait.
    pub fn interrupt(&mut self) {
        if let Some(mut c) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.interrupt();
    }
}
