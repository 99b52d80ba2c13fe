//! Our metric shards and encoder against `prometheus-client`, on the same series: the cost of
//! one increment on the hot path (two workers counting at once) and of one scrape.
//!
//! `cargo run --release -p ringmesh-bench --example metrics_encoding`; the result and the
//! decision are in perf/ANALYSIS.md. A measurement, not a test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as PcCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as PcGauge;
use prometheus_client::registry::Registry;
use ringmesh_core::metrics::{
    CopyMethod, Direction, Outcome, ProcessInfo, Side, WorkerShard, WorkerStats, WorkloadMetrics,
    render,
};

/// A sample line: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

const INCREMENTS: u64 = 20_000_000;
const SCRAPES: u32 = 2_000;

/// Two threads each adding `INCREMENTS` to their own counter (`own`) or to one shared one.
fn increments(name: &str, add: impl Fn(usize) + Sync) -> Duration {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let add = &add;
            s.spawn(move || {
                for _ in 0..INCREMENTS {
                    add(black_box(t));
                }
            });
        }
    });
    let per = t0.elapsed().as_secs_f64() * 1e9 / INCREMENTS as f64;
    println!("{name:<52} {per:>6.2} ns per increment (per thread)");
    Duration::from_secs_f64(per / 1e9)
}

fn main() {
    // Hot path: what a worker pays per byte count or connection count.
    let shards = [WorkerShard::default(), WorkerShard::default()];
    increments("ringmesh WorkerShard::bytes (one shard per worker)", |t| {
        black_box(&shards[t]).bytes(
            Direction::Outbound,
            Side::Downstream,
            CopyMethod::Buffer,
            black_box(1),
        )
    });
    let shared = PcCounter::<u64>::default();
    increments("prometheus-client Counter::inc (one, shared)", |_| {
        black_box(&shared).inc();
    });
    let family = Family::<Vec<(String, String)>, PcCounter>::default();
    let labels = vec![
        ("workload".to_string(), "sidecar".to_string()),
        ("direction".to_string(), "outbound".to_string()),
    ];
    let handle = family.get_or_create(&labels).clone();
    increments("prometheus-client family counter (handle held)", |_| {
        black_box(&handle).inc();
    });

    // Scrape: the same series through both encoders.
    for s in &shards {
        for o in Outcome::ALL {
            s.opened(Direction::Inbound);
            s.closed(Direction::Inbound, *o, Duration::from_millis(3));
        }
    }
    let stats = [WorkerStats::default(), WorkerStats::default()];
    let w = [WorkloadMetrics {
        key: "default/web-0",
        shards: &shards,
        identity: None,
        identity_rotations: 0,
        identity_source_errors: 0,
    }];
    let info = ProcessInfo::default();
    let ours = render(&w, &stats, &info);
    let samples: Vec<Sample> = ours
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, v.parse().unwrap())
        })
        .collect();
    let mut registry = Registry::default();
    let mut families = std::collections::BTreeMap::new();
    for (name, labels, v) in &samples {
        let fam = families.entry(name.clone()).or_insert_with(|| {
            let f = Family::<Vec<(String, String)>, PcGauge<f64, std::sync::atomic::AtomicU64>>::default();
            registry.register(name.clone(), "same series", f.clone());
            f
        });
        fam.get_or_create(labels).set(*v);
    }
    let registry = Arc::new(registry);
    println!("{} samples in {} families", samples.len(), families.len());

    let t0 = Instant::now();
    for _ in 0..SCRAPES {
        black_box(render(&w, &stats, &info));
    }
    let ours_t = t0.elapsed() / SCRAPES;
    let t0 = Instant::now();
    for _ in 0..SCRAPES {
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        black_box(out);
    }
    let theirs_t = t0.elapsed() / SCRAPES;
    println!("ringmesh render (sums the shards, then encodes)     {ours_t:>10.2?} per scrape");
    println!("prometheus-client encode (values already summed)    {theirs_t:>10.2?} per scrape");
}
