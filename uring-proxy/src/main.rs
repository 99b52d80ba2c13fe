//! `uring-proxy`: the ringmesh data plane binary.

use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::{Parser, ValueEnum};
use ringmesh_core::WorkloadKey;
use ringmesh_core::config::{Config, DEFAULT_YAML};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use uring_proxy::state::DroppedLines;
use uring_proxy::{ConfigSource, DriverChoice, Proxy, ProxyOptions, SoOriginalDst};

/// ringmesh data plane: a transparent TCP proxy, one io_uring worker per core.
///
/// Takes the connections that `mesh-redirect` sends to its outbound (15001) and inbound
/// (15006) listeners, recovers where each was going (SO_ORIGINAL_DST), routes it by the mesh
/// config, and copies bytes both ways. SIGHUP re-reads --config; SIGTERM drains.
#[derive(Debug, Parser)]
#[command(name = "uring-proxy", version, about, long_about)]
struct Args {
    /// Config file (YAML, or JSON if it ends in .json). Without it the embedded default
    /// serves: sidecar ports, egress allowed, no services (see --print-default-config).
    #[arg(short, long, env = "RINGMESH_CONFIG")]
    config: Option<PathBuf>,

    /// Worker threads, one per core [default: the CPUs this process may use].
    #[arg(long, env = "RINGMESH_WORKERS")]
    workers: Option<NonZeroUsize>,

    /// I/O driver: io_uring, falling back to epoll (auto), or one of them only.
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto, env = "RINGMESH_DRIVER")]
    driver: DriverChoice,

    /// On SIGTERM, how long in-flight connections get to finish before they are reset.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, default_value = "info", env = "RINGMESH_LOG")]
    log_level: String,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "RINGMESH_LOG_FORMAT")]
    log_format: LogFormat,

    /// Do not pin workers to CPUs (they are pinned only when each can have a CPU of its own:
    /// as many workers as CPUs in the affinity mask, and no lower CPU quota).
    #[arg(long)]
    no_pin: bool,

    /// Hand each new connection to the worker pinned to the CPU that received it (a classic
    /// BPF SO_REUSEPORT program), instead of the kernel's hash of the addresses. Only with
    /// pinned workers.
    #[arg(long)]
    steer_by_cpu: bool,

    /// Copy plaintext connections with the worker's io_uring's ordinary polls and
    /// `recv`/`send` calls, instead of multishot receives into provided buffers on an
    /// io_uring of the worker's own (the default on the io_uring driver; for comparison).
    #[arg(long, env = "RINGMESH_NO_OWNED_RING")]
    no_owned_ring: bool,

    /// The workload this sidecar serves, as metrics and logs name it [default:
    /// POD_NAMESPACE/POD_NAME from the downward API, else "sidecar"].
    #[arg(long, env = "RINGMESH_WORKLOAD")]
    workload: Option<String>,

    /// A worker that misses its heartbeat for this long makes /live and /ready fail.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    stall_timeout: Duration,

    /// Serve /ready, /live, /metrics and the app's rewritten probes on this address (the pod's
    /// address, for the kubelet and Prometheus; `meshctl inject` sets 0.0.0.0:15020). The
    /// admin endpoints stay on the config's `admin` address.
    #[arg(long, env = "RINGMESH_HEALTH")]
    health: Option<std::net::SocketAddr>,

    /// The app probes the health port answers for, as JSON: path
    /// (`/app-health/CONTAINER/PROBE`) to a Kubernetes httpGet or tcpSocket handler with
    /// numeric ports, and timeoutSeconds (`meshctl inject` writes it).
    #[arg(long, env = "RINGMESH_APP_PROBES", requires = "health")]
    app_probes: Option<String>,

    /// Validate the config, print every error, and exit.
    #[arg(long)]
    check_config: bool,

    /// Print the embedded default config and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go through a non-blocking writer on its own thread: no worker ever waits on stderr.
/// When its buffer is full, lines are dropped and counted (`ringmesh_log_lines_dropped_total`).
fn init_logging(args: &Args) -> Result<(WorkerGuard, DroppedLines), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", args.log_level))?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("ringmesh-log")
        .finish(std::io::stderr());
    let counter = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok((guard, Arc::new(move || counter.dropped_lines() as u64)))
}

/// Lines the log writer holds before it drops new ones. Its channel is allocated (and
/// touched) whole at start: 16,384 lines cost about 0.5 MiB of idle RSS, 2,048 about 64 KiB
/// (perf/ANALYSIS.md); failure lines are rate-limited to 10 a second per reason per worker.
const LOG_BUFFER_LINES: usize = 2048;

/// The workload key: the flag, else the pod's namespace and name, else the default.
fn workload_key(flag: Option<&str>) -> Result<WorkloadKey, String> {
    let from_pod = || {
        let ns = std::env::var("POD_NAMESPACE").ok()?;
        let name = std::env::var("POD_NAME").ok()?;
        Some(format!("{ns}/{name}"))
    };
    match flag.map(str::to_string).or_else(from_pod) {
        Some(k) => WorkloadKey::parse(&k).map_err(|e| format!("workload {k:?}: {e}")),
        None => Ok(WorkloadKey::sidecar()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_YAML}");
        return ExitCode::SUCCESS;
    }
    let (_log_guard, dropped_lines) = match init_logging(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("uring-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let workload = match workload_key(args.workload.as_deref()) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let config = match &args.config {
        Some(path) => match uring_proxy::load_config_file(path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("config error: {e}");
                }
                tracing::error!(
                    path = %path.display(),
                    "config rejected ({} error(s)); fix the file and start again",
                    errors.len()
                );
                return ExitCode::from(2);
            }
        },
        None => Config::embedded_default(),
    };
    let app_probes = match args
        .app_probes
        .as_deref()
        .map(uring_proxy::health::AppProbes::parse)
    {
        None => uring_proxy::health::AppProbes::default(),
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    match uring_proxy::raise_fd_limit() {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    let opts = ProxyOptions {
        workers: args.workers.map(NonZeroUsize::get),
        driver: args.driver,
        orig_dst: Arc::new(SoOriginalDst),
        admin: true,
        signals: true,
        drain_timeout: args.drain_timeout,
        pin: !args.no_pin,
        steer_by_cpu: args.steer_by_cpu,
        owned_ring: !args.no_owned_ring,
        config_path: args.config.clone(),
        config_source: args
            .config
            .clone()
            .map_or(ConfigSource::Embedded, ConfigSource::File),
        workload,
        stall_timeout: args.stall_timeout,
        dropped_lines: Some(dropped_lines),
        health: args.health,
        app_probes: Arc::new(app_probes),
    };
    let proxy = match Proxy::start(config, opts) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match proxy.wait() {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("stopped with errors: {e}");
            ExitCode::from(1)
        }
    }
}
