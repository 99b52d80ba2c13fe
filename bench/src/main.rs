//! `mesh-bench`: load generator, built-in backends, and the comparison report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringmesh_bench::load::{self, LoadSpec, Workload};
use ringmesh_bench::report;
use ringmesh_bench::rt::Driver;
use ringmesh_bench::serve::{self, Backend, ServeSpec};

/// Open-loop load with latency histograms, and the backends to load.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate load against a target and report throughput, errors and latency.
    Run(RunArgs),
    /// Serve a built-in backend until killed.
    Serve {
        backend: Backend,
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// tcp-echo: read requests of this size and answer with --response-size bytes
        /// (without it, plain echo).
        #[arg(long)]
        request_size: Option<usize>,
        /// tcp-echo with --request-size, and http: the response (body) size.
        #[arg(long, default_value_t = 64)]
        response_size: usize,
        #[arg(long, value_enum, default_value_t = Driver::Auto)]
        driver: Driver,
    },
    /// Turn a comparison's results (JSON lines) into tables, goals, RESULTS.md and a plot.
    Report {
        #[arg(long)]
        results: PathBuf,
        /// Markdown to put at the top (machine, versions, command, pinning).
        #[arg(long)]
        meta: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// SVG latency plot of the fixed-rate scenario.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// The contender the goals are checked for.
        #[arg(long, default_value = "uring")]
        ours: String,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = Workload::Tcp)]
    workload: Workload,
    #[arg(long)]
    target: SocketAddr,
    /// Requests per second over all connections (open loop); 0 or absent: as fast as
    /// responses come back (closed loop).
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, short, default_value_t = 32)]
    connections: u64,
    /// Load threads [default: CPUs this process may use].
    #[arg(long, short)]
    threads: Option<usize>,
    #[arg(long, short, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Runs before the measured window, not counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value_t = 64)]
    request_size: usize,
    #[arg(long, default_value_t = 64)]
    response_size: usize,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value = "bench")]
    host: String,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Write the result as JSON here ("-" for stdout, instead of the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency percentile distribution (HdrHistogram .hgrm text) here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Measure this process's CPU time and peak RSS over the window (repeatable; summed).
    #[arg(long = "watch-pid")]
    watch: Vec<u32>,
    /// The generator's I/O driver.
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    driver: Driver,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(a) => {
            let threads = a
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let spec = LoadSpec {
                workload: a.workload,
                target: a.target,
                rate: a.rate.filter(|&r| r > 0),
                connections: a.connections.max(1),
                threads: threads.min(a.connections.max(1) as usize),
                duration: a.duration,
                warmup: a.warmup,
                request_size: a.request_size,
                response_size: a.response_size,
                path: a.path,
                host: a.host,
                timeout: a.timeout,
                watch: a.watch,
                driver: a.driver,
            };
            let result = load::run(&spec)?;
            if let Some(p) = &a.hgrm {
                std::fs::write(p, result.hgrm())?;
            }
            match a.json.as_deref() {
                Some(p) if p.as_os_str() == "-" => println!("{}", serde_json::to_string(&result)?),
                Some(p) => {
                    std::fs::write(p, serde_json::to_string_pretty(&result)?)?;
                    print!("{}", result.table());
                }
                None => print!("{}", result.table()),
            }
            Ok(())
        }
        Cmd::Serve {
            backend,
            listen,
            threads,
            request_size,
            response_size,
            driver,
        } => serve::serve(&ServeSpec {
            backend,
            listen,
            threads,
            request_size,
            response_size,
            driver,
        }),
        Cmd::Report {
            results,
            meta,
            out,
            plot,
            ours,
        } => {
            let records = report::parse(&std::fs::read_to_string(&results)?)?;
            let mut md = String::from("# ringmesh performance\n\n");
            if let Some(m) = meta {
                md.push_str(&std::fs::read_to_string(m)?);
                md.push('\n');
            }
            md.push_str(&format!("## Goals ({ours}, loopback layout)\n\n"));
            md.push_str(&report::goals_table(&report::goals(&records, &ours, "")));
            if report::scenarios(&records)
                .iter()
                .any(|s| s.starts_with("fair-"))
            {
                md.push_str(&format!("\n## Goals ({ours}, fair layout)\n\n"));
                md.push_str(&report::goals_table(&report::goals(
                    &records, &ours, "fair-",
                )));
            }
            md.push_str("\n## Results (median [min–max] over the rounds)\n\n");
            md.push_str(&report::markdown_tables(&records));
            md.push_str("## Memory\n\n");
            md.push_str(&report::memory_table(&records));
            if let Some(p) = plot {
                std::fs::write(&p, report::latency_svg(&records, "http-rate"))?;
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                md.push_str(&format!(
                    "\n## Latency at a fixed rate\n\n![latency percentiles]({name})\n"
                ));
            }
            std::fs::write(&out, &md)?;
            print!("{md}");
            Ok(())
        }
    }
}
