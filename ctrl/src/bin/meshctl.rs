//! `meshctl`: operator tools for ringmesh. Today: the development SPIFFE Workload API server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringmesh_core::SpiffeId;
use ringmesh_ctrl::ca::DevCa;
use ringmesh_ctrl::devserver::{self, DevServer, Mapping};
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
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
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
        }) => {
            let mapping = parse_maps(&maps, default_id.as_deref())?;
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
                let stop = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                server.serve(listener, None, stop).await?;
                let _ = std::fs::remove_file(&socket);
                Ok(())
            })
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
