//! What node mode's upstream socket costs over a sidecar's: `setns` into a workload's
//! network namespace, `socket(2)`, `setns` back, against `socket(2)` alone, on one thread.
//! Root only; pass a namespace: `cargo run --release --example setns_cost -- /run/netns/X`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: a failure ends it

use std::fs::File;
use std::time::Instant;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};

fn main() {
    let target = std::env::args()
        .nth(1)
        .expect("usage: setns_cost /run/netns/NAME");
    let target = File::open(target).expect("open the namespace");
    let home = File::open("/proc/thread-self/ns/net").unwrap();
    let n = 20_000;
    let socket = || {
        Socket::new(
            Domain::IPV4,
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )
        .unwrap()
    };
    for _ in 0..1000 {
        drop(socket());
    }
    let start = Instant::now();
    for _ in 0..n {
        drop(socket());
    }
    let plain = start.elapsed().as_nanos() as f64 / f64::from(n);
    let start = Instant::now();
    for _ in 0..n {
        setns(&target, CloneFlags::CLONE_NEWNET).unwrap();
        let s = socket();
        setns(&home, CloneFlags::CLONE_NEWNET).unwrap();
        drop(s);
    }
    let entered = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "socket(2) alone: {plain:.0} ns; setns + socket(2) + setns back: {entered:.0} ns; added: {:.0} ns per upstream socket",
        entered - plain
    );
}
