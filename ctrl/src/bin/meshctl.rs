//! `meshctl`: operator tools for ringmesh: the development SPIFFE Workload API server and its
//! CA, and the control plane's side of configuration over NATS (push, get, status, and a
//! nats-server configuration with least-privilege users).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringmesh_core::SpiffeId;
use ringmesh_core::config::{Config, Format};
use ringmesh_ctrl::ca::DevCa;
use ringmesh_ctrl::devserver::{self, DevServer, Mapping};
use ringmesh_ctrl::nats::connect::FileMaterial;
use ringmesh_ctrl::nats::layout::Scope;
use ringmesh_ctrl::nats::publish;
use ringmesh_ctrl::source::{self, SourceEvent};

/// ringmesh operator tools.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Workload identities (SPIFFE).
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Add ringmesh to Kubernetes workloads (Pod, Deployment, StatefulSet, DaemonSet,
    /// ReplicaSet, ReplicationController, Job, CronJob, List; YAML or JSON, several documents):
    /// the interception init container, the sidecar, volumes, and the app's probes rewritten to
    /// the sidecar's health port. Injecting twice changes nothing; --uninject removes exactly
    /// what was added. Writes the result to stdout and a line per pod template to stderr.
    Inject(Box<InjectArgs>),
    /// A node proxy's workloads (its root-only registration socket).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Validate a config file and publish its live part as the next version of a scope.
    Push {
        #[command(flatten)]
        nats: NatsArgs,
        /// mesh, node/NAME or workload/NAME.
        #[arg(long, default_value = "mesh")]
        scope: String,
        /// The version to publish [default: the file's `version:`, else the next one].
        #[arg(long)]
        version: Option<u64>,
        /// JetStream replicas for buckets this creates.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// The config (YAML, or JSON for *.json).
        file: PathBuf,
    },
    /// Print the version in force in a scope, as YAML.
    Get {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, default_value = "mesh")]
        scope: String,
    },
    /// List every proxy's report: the version it runs, rejections, and which are behind.
    Status {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Print a nats-server configuration: TLS with client certificates mapped to users by
    /// SPIFFE ID, the control plane allowed everything, each proxy allowed to read the
    /// config and write only its own status.
    NatsConfig {
        #[arg(long, default_value = "127.0.0.1:4222")]
        listen: String,
        #[arg(long)]
        server_name: Option<String>,
        /// JetStream storage directory.
        #[arg(long)]
        store: PathBuf,
        /// The trust bundle client certificates must chain to.
        #[arg(long)]
        ca: PathBuf,
        /// The server's own certificate and key.
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// The control plane's SPIFFE ID (may write config).
        #[arg(long)]
        control_plane: String,
        /// SPIFFE_ID=WORKLOAD: a proxy's identity and the workload it reports as (repeatable).
        #[arg(long = "proxy", value_name = "SPIFFE_ID=WORKLOAD")]
        proxies: Vec<String>,
        /// Cluster: this server's route listener and the others' routes.
        #[arg(long)]
        cluster_listen: Option<String>,
        #[arg(long = "route")]
        routes: Vec<String>,
        #[arg(long, default_value = ringmesh_ctrl::nats::CONFIG_BUCKET)]
        bucket: String,
        #[arg(long, default_value = ringmesh_ctrl::nats::STATUS_BUCKET)]
        status_bucket: String,
    },
}

/// How to reach NATS as the control plane.
#[derive(Debug, clap::Args)]
struct NatsArgs {
    /// NATS server URLs (tls://HOST:PORT), comma-separated or repeated.
    #[arg(long = "nats", required = true, value_delimiter = ',')]
    servers: Vec<String>,
    /// The roots the server's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// The control plane's certificate and key.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = ringmesh_ctrl::nats::CONFIG_BUCKET)]
    bucket: String,
    #[arg(long, default_value = ringmesh_ctrl::nats::STATUS_BUCKET)]
    status_bucket: String,
}

#[derive(Debug, clap::Args)]
struct InjectArgs {
    /// The manifests; - for stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: String,
    /// Remove what inject added instead.
    #[arg(long)]
    uninject: bool,
    #[arg(long, default_value_t = ringmesh_ctrl::inject::Options::default().proxy_image)]
    proxy_image: String,
    #[arg(long, default_value_t = ringmesh_ctrl::inject::Options::default().init_image)]
    init_image: String,
    /// The sidecar's uid and gid (interception lets its traffic pass by uid).
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The rule backend of the init container: nftables or iptables.
    #[arg(long, default_value = "nftables", value_parser = ["nftables", "iptables"])]
    backend: String,
    /// Intercept UDP (eBPF) in every pod, unless its ringmesh.io/intercept-udp annotation
    /// says "false".
    #[arg(long)]
    udp: bool,
    /// Inbound ports that reach the app directly; must agree with a pod's
    /// ringmesh.io/exclude-inbound-ports or config.nsm.nginx.com/ignore-incoming-ports.
    #[arg(long, alias = "ignore-incoming-ports", value_delimiter = ',')]
    exclude_inbound_ports: Option<Vec<u16>>,
    /// Outbound ports not intercepted; must agree with a pod's
    /// ringmesh.io/exclude-outbound-ports or config.nsm.nginx.com/ignore-outgoing-ports.
    #[arg(long, alias = "ignore-outgoing-ports", value_delimiter = ',')]
    exclude_outbound_ports: Option<Vec<u16>>,
    /// Outbound networks not intercepted; must agree with ringmesh.io/exclude-outbound-cidrs.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Option<Vec<ipnet::IpNet>>,
    /// The ConfigMap (in the pod's namespace) whose config.yaml the sidecar runs.
    #[arg(long, default_value = "ringmesh-sidecar")]
    config_map: String,
    /// The node directory with the Workload API socket.
    #[arg(long, default_value = "/run/spire/sockets")]
    spire_socket_dir: String,
    /// The sidecar's seccomp profile, relative to the kubelet's seccomp root (the runtime's
    /// default plus io_uring: packaging/seccomp/ringmesh.json).
    #[arg(long, default_value = "profiles/ringmesh.json")]
    seccomp_profile: String,
    /// Use the runtime's default seccomp profile instead: io_uring is denied there and the
    /// proxy runs on epoll (ringmesh_driver reports it).
    #[arg(long, conflicts_with = "seccomp_profile")]
    runtime_default_seccomp: bool,
    /// The sidecar's health port: /ready, /live, /metrics and the rewritten app probes.
    #[arg(long, default_value_t = 15020)]
    health_port: u16,
}

fn inject(a: InjectArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let input = if a.file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&a.file).map_err(|e| anyhow::anyhow!("{}: {e}", a.file))?
    };
    let opts = ringmesh_ctrl::inject::Options {
        proxy_image: a.proxy_image,
        init_image: a.init_image,
        proxy_uid: a.proxy_uid,
        backend: a.backend,
        udp: a.udp,
        exclude_inbound_ports: a.exclude_inbound_ports,
        exclude_outbound_ports: a.exclude_outbound_ports,
        exclude_outbound_cidrs: a.exclude_outbound_cidrs,
        config_map: a.config_map,
        spire_socket_dir: a.spire_socket_dir,
        seccomp_profile: (!a.runtime_default_seccomp).then_some(a.seccomp_profile),
        health_port: a.health_port,
    };
    let (out, report) = if a.uninject {
        ringmesh_ctrl::inject::uninject(&input)?
    } else {
        ringmesh_ctrl::inject::inject(&input, &opts)?
    };
    for l in &report.lines {
        eprintln!("{l}");
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Register a workload with a node proxy: it listens inside the workload's network
    /// namespace and presents its SVID.
    Add {
        #[arg(long, default_value = "/run/ringmesh/node.sock")]
        socket: PathBuf,
        /// NAMESPACE/NAME.
        #[arg(long)]
        name: String,
        /// Its network namespace: /run/netns/X or /proc/PID/ns/net.
        #[arg(long)]
        netns: PathBuf,
        /// The SPIFFE ID its SVID must carry.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Its addresses (repeatable).
        #[arg(long = "addr")]
        addrs: Vec<std::net::IpAddr>,
        /// TYPE:VALUE selectors for the Delegated Identity API (repeatable; default
        /// ringmesh:workload:NAME).
        #[arg(long = "selector")]
        selectors: Vec<String>,
    },
    /// Remove a workload: listeners closed, connections drained, identity forgotten.
    Remove {
        #[arg(long, default_value = "/run/ringmesh/node.sock")]
        socket: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// List the registered workloads.
    List {
        #[arg(long, default_value = "/run/ringmesh/node.sock")]
        socket: PathBuf,
    },
}

/// One request to a node proxy's registration socket; prints the answer, fails on `ok: false`.
fn node_request(socket: &std::path::Path, req: serde_json::Value) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (is a node proxy running, and are you root?)",
            socket.display()
        )
    })?;
    s.write_all(format!("{req}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line)?;
    let reply: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| anyhow::anyhow!("unreadable answer {line:?}: {e}"))?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    if reply["ok"] != serde_json::Value::Bool(true) {
        anyhow::bail!("{}", reply["error"].as_str().unwrap_or("refused"));
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
enum IdentityCmd {
    /// Serve the SPIFFE Workload API on a unix socket with a development CA: each caller gets
    /// an X509-SVID for the SPIFFE ID its uid maps to, rotated at half the TTL.
    Serve {
        #[arg(long, default_value_os_t = devserver::default_socket())]
        socket: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// SVID lifetime; a new SVID is streamed at half of it.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// UID=SPIFFE_ID: the identity for callers running as UID (repeatable).
        #[arg(long = "map", value_name = "UID=SPIFFE_ID")]
        maps: Vec<String>,
        /// The identity for callers no --map names (otherwise they are refused).
        #[arg(long)]
        default_id: Option<String>,
        /// Use this CA (PEM certificate and key) instead of generating one; with
        /// --upstream-bundle it is an intermediate under those roots.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        #[arg(long, requires = "ca_cert")]
        upstream_bundle: Option<PathBuf>,
        /// Also write the trust bundle (PEM) here.
        #[arg(long)]
        write_bundle: Option<PathBuf>,
        /// Also serve SPIRE's Delegated Identity API on this socket (owner only): a trusted
        /// node agent (--delegate-uid) gets other workloads' SVIDs by their selectors.
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        /// A uid allowed to use the Delegated Identity API (repeatable).
        #[arg(long = "delegate-uid", requires = "admin_socket")]
        delegate_uids: Vec<u32>,
        /// TYPE:VALUE=SPIFFE_ID: the workload a selector names (repeatable).
        #[arg(
            long = "selector",
            value_name = "TYPE:VALUE=SPIFFE_ID",
            requires = "admin_socket"
        )]
        selectors: Vec<String>,
        /// A selector whose SVID is issued once and never renewed (repeatable; for tests of
        /// expiry).
        #[arg(
            long = "no-rotate",
            value_name = "TYPE:VALUE",
            requires = "admin_socket"
        )]
        no_rotate: Vec<String>,
    },
    /// Create a CA for a trust domain (to keep, and to serve and mint from).
    Ca {
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Mint a certificate from a CA: an X509-SVID for --id, or a TLS server certificate for
    /// --name (DNS names and IP addresses, with or without an --id).
    Mint {
        #[arg(long)]
        ca_cert: PathBuf,
        #[arg(long)]
        ca_key: PathBuf,
        #[arg(long)]
        id: Option<String>,
        #[arg(long = "name")]
        names: Vec<String>,
        #[arg(long, default_value = "720h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Where the chain and key go (PEM).
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Fetch this process's identity from a Workload API and print it.
    Show {
        #[arg(long, default_value_os_t = devserver::default_socket())]
        socket: PathBuf,
    },
}

fn parse_maps(maps: &[String], default_id: Option<&str>) -> anyhow::Result<Mapping> {
    let mut m = Mapping::default();
    for entry in maps {
        let (uid, id) = entry
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--map {entry:?}: want UID=SPIFFE_ID"))?;
        let uid: u32 = uid
            .parse()
            .map_err(|e| anyhow::anyhow!("--map {entry:?}: uid: {e}"))?;
        let id = SpiffeId::parse(id).map_err(|e| anyhow::anyhow!("--map {entry:?}: {e}"))?;
        m.by_uid.insert(uid, id);
    }
    m.default = default_id
        .map(|d| SpiffeId::parse(d).map_err(|e| anyhow::anyhow!("--default-id {d:?}: {e}")))
        .transpose()?;
    Ok(m)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGMESH_LOG")
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Cmd::Inject(a) => inject(*a),
        Cmd::Identity(IdentityCmd::Serve {
            socket,
            trust_domain,
            ttl,
            maps,
            default_id,
            ca_cert,
            ca_key,
            upstream_bundle,
            write_bundle,
            admin_socket,
            delegate_uids,
            selectors,
            no_rotate,
        }) => {
            let mapping = parse_maps(&maps, default_id.as_deref())?;
            let mut delegation = devserver::Delegation {
                uids: delegate_uids,
                no_rotate,
                ..Default::default()
            };
            for entry in &selectors {
                let (sel, id) = entry
                    .rsplit_once('=')
                    .filter(|(s, _)| s.contains(':'))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--selector {entry:?}: want TYPE:VALUE=SPIFFE_ID")
                    })?;
                let id = SpiffeId::parse(id)
                    .map_err(|e| anyhow::anyhow!("--selector {entry:?}: {e}"))?;
                anyhow::ensure!(
                    id.trust_domain() == trust_domain,
                    "{id} is not in trust domain {trust_domain}"
                );
                delegation.selectors.insert(sel.to_string(), id);
            }
            for id in mapping.by_uid.values().chain(&mapping.default) {
                anyhow::ensure!(
                    id.trust_domain() == trust_domain,
                    "{id} is not in trust domain {trust_domain}"
                );
            }
            let ca = match (&ca_cert, &ca_key) {
                (Some(c), Some(k)) => DevCa::from_files(c, k, upstream_bundle.as_deref())?,
                _ => DevCa::generate(&trust_domain)?,
            };
            if let Some(path) = write_bundle {
                let pem: String = ca
                    .bundle()
                    .iter()
                    .map(|c| ringmesh_ctrl::pem::encode("CERTIFICATE", c.as_ref()))
                    .collect();
                std::fs::write(&path, pem)?;
            }
            let server = Arc::new(DevServer {
                ca,
                trust_domain,
                ttl,
                mapping,
            });
            rt.block_on(async {
                let listener = devserver::bind(&socket)?;
                tracing::info!(socket = %socket.display(), "serving the SPIFFE Workload API");
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = stop_tx.send(true);
                });
                let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                let admin = match &admin_socket {
                    Some(path) => {
                        let l = devserver::bind_admin(path)?;
                        tracing::info!(socket = %path.display(), "serving the Delegated Identity API");
                        Some(tokio::spawn(server.clone().serve_delegated(l, delegation, stop(stop_rx.clone()))))
                    }
                    None => None,
                };
                server.serve(listener, None, stop(stop_rx)).await?;
                if let Some(a) = admin {
                    a.await??;
                }
                let _ = std::fs::remove_file(&socket);
                if let Some(p) = &admin_socket {
                    let _ = std::fs::remove_file(p);
                }
                Ok(())
            })
        }
        Cmd::Identity(IdentityCmd::Ca {
            trust_domain,
            cert,
            key,
        }) => {
            let ca = DevCa::generate(&trust_domain)?;
            let (c, k) = ca.to_pem();
            std::fs::write(&cert, c)?;
            write_private(&key, &k)?;
            println!(
                "CA for {trust_domain}: {} {}",
                cert.display(),
                key.display()
            );
            Ok(())
        }
        Cmd::Identity(IdentityCmd::Mint {
            ca_cert,
            ca_key,
            id,
            names,
            ttl,
            cert,
            key,
        }) => {
            let ca = DevCa::from_files(&ca_cert, &ca_key, None)?;
            let id = id.map(|i| SpiffeId::parse(&i)).transpose()?;
            let now = std::time::SystemTime::now();
            let m = match (&id, names.is_empty()) {
                (Some(id), true) => ca.mint(id, ttl, now)?,
                (_, false) => ca.mint_server(&names, id.as_ref(), ttl, now)?,
                (None, true) => anyhow::bail!("give --id, --name, or both"),
            };
            let chain: String = m
                .chain
                .iter()
                .map(|c| ringmesh_ctrl::pem::encode("CERTIFICATE", c.as_ref()))
                .collect();
            std::fs::write(&cert, chain)?;
            write_private(&key, &ringmesh_ctrl::pem::encode("PRIVATE KEY", &m.key))?;
            Ok(())
        }
        Cmd::Node(NodeCmd::Add {
            socket,
            name,
            netns,
            spiffe_id,
            addrs,
            selectors,
        }) => node_request(
            &socket,
            serde_json::json!({
                "op": "add", "name": name, "netns": netns, "spiffe_id": spiffe_id,
                "addrs": addrs, "selectors": selectors,
            }),
        ),
        Cmd::Node(NodeCmd::Remove { socket, name }) => {
            node_request(&socket, serde_json::json!({ "op": "remove", "name": name }))
        }
        Cmd::Node(NodeCmd::List { socket }) => {
            node_request(&socket, serde_json::json!({ "op": "list" }))
        }
        Cmd::Push {
            nats,
            scope,
            version,
            replicas,
            file,
        } => rt.block_on(push(nats, &scope, version, replicas, &file)),
        Cmd::Get { nats, scope } => rt.block_on(async {
            let scope = Scope::parse(&scope).map_err(anyhow::Error::msg)?;
            let (kv, _) = buckets(&nats, 1, false).await?;
            match publish::get(&kv, &scope)
                .await
                .map_err(anyhow::Error::msg)?
            {
                Some((_, doc)) => print!("{}", serde_yaml::to_string(&doc)?),
                None => println!("# nothing pushed to {scope}"),
            }
            Ok(())
        }),
        Cmd::Status { nats } => rt.block_on(status(nats)),
        Cmd::NatsConfig {
            listen,
            server_name,
            store,
            ca,
            cert,
            key,
            control_plane,
            proxies,
            cluster_listen,
            routes,
            bucket,
            status_bucket,
        } => {
            let proxies = proxies
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .map(|(id, w)| (id.to_string(), w.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("--proxy {p:?}: want SPIFFE_ID=WORKLOAD"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let cfg = ringmesh_ctrl::nats::server_config::ServerConfig {
                listen,
                server_name,
                store,
                ca,
                cert,
                key,
                control_plane,
                proxies,
                cluster_listen,
                routes,
                bucket,
                status_bucket,
            };
            print!("{}", cfg.render().map_err(anyhow::Error::msg)?);
            Ok(())
        }
        Cmd::Identity(IdentityCmd::Show { socket }) => rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let follow = tokio::spawn(source::workload_api(socket, move |e| {
                let _ = tx.send(e);
            }));
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            follow.abort();
            match event {
                Ok(Some(SourceEvent::Update(id))) => {
                    println!("spiffe_id  {}", id.leaf.id);
                    println!("serial     {}", id.leaf.serial);
                    println!(
                        "not_after  {}",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + Duration::from_secs(id.leaf.not_after.max(0) as u64)
                        )
                    );
                    println!(
                        "bundles    {}",
                        id.bundles.trust_domains().collect::<Vec<_>>().join(", ")
                    );
                    Ok(())
                }
                Ok(Some(SourceEvent::Error(e))) => anyhow::bail!("{e}"),
                _ => anyhow::bail!("no identity from the Workload API within 10 s"),
            }
        }),
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

async fn buckets(
    nats: &NatsArgs,
    replicas: usize,
    create: bool,
) -> anyhow::Result<(
    async_nats::jetstream::kv::Store,
    async_nats::jetstream::kv::Store,
)> {
    let material =
        FileMaterial::load(&nats.ca, &nats.cert, &nats.key).map_err(anyhow::Error::msg)?;
    let js = publish::connect(&nats.servers, Arc::new(material))
        .await
        .map_err(anyhow::Error::msg)?;
    if create {
        return publish::ensure_buckets(&js, &nats.bucket, &nats.status_bucket, replicas)
            .await
            .map_err(anyhow::Error::msg);
    }
    let get = |b: &str| {
        let (js, b) = (js.clone(), b.to_string());
        async move {
            js.get_key_value(b.clone())
                .await
                .map_err(|e| anyhow::anyhow!("bucket {b:?}: {e} (nothing pushed yet?)"))
        }
    };
    Ok((get(&nats.bucket).await?, get(&nats.status_bucket).await?))
}

async fn push(
    nats: NatsArgs,
    scope: &str,
    version: Option<u64>,
    replicas: usize,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let scope = Scope::parse(scope).map_err(anyhow::Error::msg)?;
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let format = Format::from_path(file);
    // The whole file must be a valid config: every error, and nothing is written.
    let errors: Vec<String> = match Config::from_str(&text, format) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    };
    let document: serde_json::Value = match format {
        Format::Json => serde_json::from_str(&text)?,
        Format::Yaml => serde_yaml::from_str(&text)?,
    };
    let serde_json::Value::Object(document) = document else {
        anyhow::bail!("{}: a config is a mapping of fields", file.display());
    };
    let file_version = document.get("version").and_then(serde_json::Value::as_u64);
    let mut all = errors;
    if let Err(e) = publish::split(document.clone()) {
        all.extend(e);
    }
    if !all.is_empty() {
        for e in &all {
            eprintln!("{}: {e}", file.display());
        }
        anyhow::bail!("{} error(s); nothing was pushed", all.len());
    }
    let (kv, _) = buckets(&nats, replicas, true).await?;
    let t0 = std::time::Instant::now();
    match publish::push(&kv, &scope, document, version.or(file_version)).await {
        Ok(r) => {
            println!(
                "{scope}: version {} pushed ({} part(s) written, {} bytes; {} unchanged; {} removed) in {:.0?}",
                r.version,
                r.written,
                r.bytes,
                r.unchanged,
                r.deleted,
                t0.elapsed()
            );
            Ok(())
        }
        Err(errs) => {
            for e in &errs {
                eprintln!("{e}");
            }
            anyhow::bail!("push failed");
        }
    }
}

async fn status(nats: NatsArgs) -> anyhow::Result<()> {
    let (kv, status) = buckets(&nats, 1, false).await?;
    let current = publish::manifest(&kv, &Scope::Mesh)
        .await
        .map_err(anyhow::Error::msg)?
        .map(|(m, _)| m.version);
    let reports = publish::statuses(&status)
        .await
        .map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "mesh version in NATS: {}",
        current.map_or("none".into(), |v| v.to_string())
    );
    println!(
        "{:<32} {:<12} {:<24} {:<9} {:>6}  server",
        "WORKLOAD", "NODE", "APPLIED", "STATE", "AGE"
    );
    for r in &reports {
        let applied = r.applied.map_or("-".into(), |v| v.to_string());
        let behind = match (current, r.applied) {
            (Some(c), Some(a)) => a.mesh < c,
            (Some(_), None) => true,
            _ => false,
        };
        let state = match (&r.rejected, behind) {
            (Some(_), _) => "rejected",
            (None, true) => "behind",
            (None, false) => "current",
        };
        println!(
            "{:<32} {:<12} {:<24} {:<9} {:>5}s  {}",
            r.workload,
            r.node.as_deref().unwrap_or("-"),
            applied,
            state,
            now.saturating_sub(r.reported_at),
            r.connected_to.as_deref().unwrap_or("-")
        );
        if let Some(rej) = &r.rejected {
            println!("    rejected version {}:", rej.versions);
            for e in &rej.errors {
                println!("      {e}");
            }
        }
    }
    if reports.is_empty() {
        println!(
            "(no proxy has reported in the last {} s)",
            publish::STATUS_TTL.as_secs()
        );
    }
    Ok(())
}
