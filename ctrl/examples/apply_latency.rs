//! How long from a push until every follower has the version: N followers (the proxy's own
//! follower code, with an apply that only records the time) on one NATS server, one push at a
//! time. Prints p50/p99/max over the pushes; `perf/nats.sh` runs it and records the result.
//!
//! apply_latency SERVER_URL CA CERT KEY FOLLOWERS PUSHES SERVICES
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringmesh_ctrl::nats::connect::FileMaterial;
use ringmesh_ctrl::nats::follow::{self, FollowSetup, NatsState, Offer};
use ringmesh_ctrl::nats::layout::Scope;
use ringmesh_ctrl::nats::{CONFIG_BUCKET, STATUS_BUCKET, publish};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

fn doc(version: u64, services: usize) -> Map<String, Value> {
    let list: Vec<Value> = (0..services)
        .map(|i| {
            let port = if i == 0 { 10_000 + version } else { 8080 };
            json!({
                "name": format!("svc-{i}"),
                "addrs": [format!("10.{}.{}.{}:80", 96 + i / 65536, i / 256 % 256, i % 256)],
                "endpoints": (0..10).map(|e| json!({"addr": format!("10.{}.{}.{}:{port}", i / 256 % 256, i % 256, e + 1)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut m = Map::new();
    m.insert("services".into(), Value::Array(list));
    m
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (url, ca, cert, key) = (
        a[1].clone(),
        a[2].clone().into(),
        a[3].clone().into(),
        a[4].clone().into(),
    );
    let followers: usize = a[5].parse().unwrap();
    let pushes: u64 = a[6].parse().unwrap();
    let services: usize = a[7].parse().unwrap();
    let material = Arc::new(FileMaterial::load(&ca, &cert, &key).unwrap());
    let js = publish::connect(std::slice::from_ref(&url), material.clone())
        .await
        .unwrap();
    let (kv, _) = publish::ensure_buckets(&js, CONFIG_BUCKET, STATUS_BUCKET, 1)
        .await
        .unwrap();
    let base = publish::manifest(&kv, &Scope::Mesh)
        .await
        .unwrap()
        .map_or(0, |(m, _)| m.version);
    // Applied (follower, version, when).
    let seen: Arc<Mutex<Vec<(usize, u64, Instant)>>> = Arc::default();
    for f in 0..followers {
        let (tx, mut offers) = mpsc::channel::<Offer>(1);
        let setup = FollowSetup {
            servers: vec![url.clone()],
            material: material.clone(),
            bucket: CONFIG_BUCKET.into(),
            status_bucket: STATUS_BUCKET.into(),
            workload: format!("bench/follower-{f}"),
            node: None,
            status_interval: Duration::from_secs(30),
            running: None,
        };
        tokio::spawn(follow::follow(setup, Arc::new(NatsState::default()), tx));
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(o) = offers.recv().await {
                seen.lock()
                    .unwrap()
                    .push((f, o.versions.mesh, Instant::now()));
                let _ = o.reply.send(Ok(()));
            }
        });
    }
    let mut lat = Vec::new();
    for i in 1..=pushes + 1 {
        let v = base + i;
        let d = doc(v, services);
        let t0 = Instant::now();
        publish::push(&kv, &Scope::Mesh, d, Some(v)).await.unwrap();
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let done: Vec<Instant> = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, ver, _)| *ver == v)
                .map(|(_, _, t)| *t)
                .collect();
            if done.len() == followers {
                // The first push warms the followers up (connect, initial read): not counted.
                if i > 1 {
                    lat.extend(done.iter().map(|t| t.duration_since(t0)));
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "version {v}: {} of {followers} followers",
                done.len()
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    lat.sort();
    println!(
        "followers={followers} services={services} pushes={pushes}: push->applied p50 {:.2?} p99 {:.2?} max {:.2?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().unwrap()
    );
}
