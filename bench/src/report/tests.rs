use super::*;
use crate::stats::Latency;

fn run(scenario: &str, round: u32, contender: &str, rate: f64, p99: f64, cpu: f64) -> Record {
    Record::Run {
        scenario: scenario.into(),
        round,
        contender: contender.into(),
        result: Box::new(RunResult {
            throughput: rate,
            requests: (rate * 5.0) as u64,
            bits_per_second: rate * 1e6,
            latency: Latency {
                p50: p99 / 2.0,
                p99,
                distribution: vec![(0.0, p99 / 4.0), (50.0, p99 / 2.0), (99.0, p99)],
                ..Default::default()
            },
            watched_cpu_seconds: Some(cpu),
            watched_rss_peak_kb: Some(4096),
            ..Default::default()
        }),
    }
}

fn sample() -> Vec<Record> {
    let mut v = Vec::new();
    for round in 1..=3 {
        let jitter = f64::from(round);
        v.push(run(
            "http-keepalive",
            round,
            "direct",
            100_000.0 + jitter,
            50.0,
            1.0,
        ));
        v.push(run(
            "http-keepalive",
            round,
            "uring-proxy",
            70_000.0 + jitter,
            80.0,
            2.0,
        ));
        v.push(run(
            "http-keepalive",
            round,
            "nginx",
            50_000.0 + jitter,
            120.0,
            3.5,
        ));
        v.push(run(
            "http-keepalive",
            round,
            "haproxy",
            52_000.0 + jitter,
            110.0,
            3.0,
        ));
        v.push(run("http-rate", round, "direct", 5_000.0, 100.0, 0.1));
        v.push(run("http-rate", round, "uring-proxy", 5_000.0, 130.0, 0.1));
        v.push(run("http-rate", round, "nginx", 5_000.0, 220.0, 0.1));
        v.push(run("http-rate", round, "haproxy", 5_000.0, 200.0, 0.1));
    }
    v.push(Record::Memory {
        contender: "uring-proxy".into(),
        rss_idle_kb: 4000,
        rss_conns_kb: 4000 + 9000,
        conns: 9000,
    });
    v.push(Record::Memory {
        contender: "haproxy".into(),
        rss_idle_kb: 8000,
        rss_conns_kb: 8000 + 27000,
        conns: 9000,
    });
    v
}

#[test]
fn spread_is_median_min_max() {
    assert_eq!(
        Spread::of(&[3.0, 1.0, 2.0]),
        Some(Spread {
            median: 2.0,
            min: 1.0,
            max: 3.0
        })
    );
    assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    assert_eq!(Spread::of(&[]), None);
    assert_eq!(Spread::of(&[f64::NAN]), None);
}

#[test]
fn reduce_and_best_baseline() {
    let recs = sample();
    let t = reduce(&recs);
    let ka = &t["http-keepalive"];
    assert_eq!(ka["uring-proxy"]["rate"].median, 70_002.0);
    assert_eq!(ka["uring-proxy"]["rate"].min, 70_001.0);
    // CPU per request: 2 s / (70002*5) requests.
    let cpu = ka["uring-proxy"]["CPU/req"].median;
    assert!((cpu - 2.0e6 / (70_002.0 * 5.0)).abs() < 0.1, "{cpu}");
    let figs = figures("http-keepalive");
    assert_eq!(
        best_baseline(&t, "http-keepalive", &figs[0]),
        Some(52_002.0)
    );
    let lat = figures("http-rate");
    assert_eq!(best_baseline(&t, "http-rate", &lat[1]), Some(200.0));
}

#[test]
fn markdown_has_ratios_and_added_latency() {
    let md = markdown_tables(&sample());
    assert!(md.contains("### http-keepalive"), "{md}");
    // 70002 / 100002 = 0.70 of direct; / 52002 = 1.35 of the better baseline.
    assert!(
        md.contains("| uring-proxy | 70002 [70001–70003] | 0.70 | 1.35 |"),
        "{md}"
    );
    // p99 130 vs direct 100: 30 added.
    let rate_row = md
        .lines()
        .find(|l| l.starts_with("| uring-proxy | 65"))
        .unwrap_or_default();
    let _ = rate_row;
    assert!(md.contains("| 30.0 |"), "{md}");
}

#[test]
fn goals_are_checked() {
    let g = goals(&sample(), "uring-proxy", "");
    let by = |name: &str| g.iter().find(|c| c.goal.starts_with(name)).unwrap().clone();
    let ka = by("keep-alive");
    assert!((ka.value.unwrap() - 70_002.0 / 52_002.0).abs() < 1e-9);
    assert_eq!(ka.met, Some(true));
    // Added p99: ours 30 µs, best baseline 100 µs: 0.3 ≤ 0.5.
    assert_eq!(by("added p99").met, Some(true));
    assert!((by("added p99").value.unwrap() - 0.3).abs() < 1e-9);
    // No conn or stream runs in the sample: unknown, not failed.
    assert_eq!(by("one-request").met, None);
    assert_eq!(by("RSS idle").met, Some(true));
    // 1 KiB per idle connection vs haproxy's 3 KiB.
    assert!((by("bytes per idle").value.unwrap() - 1.0 / 3.0).abs() < 1e-9);
    let table = goals_table(&g);
    assert!(
        table.contains("| keep-alive rate ÷ better of nginx/haproxy | 1.35 | ≥ 1.3 | yes |"),
        "{table}"
    );
}

#[test]
fn memory_and_plot_render() {
    let recs = sample();
    let mem = memory_table(&recs);
    assert!(
        mem.contains("| uring-proxy | 3.9 | 4.0 | 12.7 | 9000 | 1024 |"),
        "{mem}"
    );
    let svg = latency_svg(&recs, "http-rate");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        4,
        "one line per contender"
    );
    assert!(svg.contains(">haproxy</text>"));
}

#[test]
fn results_file_round_trips() {
    let recs = sample();
    let text: String = recs
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let back = parse(&text).unwrap();
    assert_eq!(back.len(), recs.len());
    assert!(parse("{\"kind\":\"nope\"}").is_err());
}

#[test]
fn goals_are_checked_per_layout() {
    // The same runs under the fair layout's scenario names: the same verdicts there, and
    // nothing known for the loopback layout.
    let fair: Vec<Record> = sample()
        .into_iter()
        .map(|r| match r {
            Record::Run {
                scenario,
                round,
                contender,
                result,
            } => Record::Run {
                scenario: format!("fair-{scenario}"),
                round,
                contender,
                result,
            },
            other => other,
        })
        .collect();
    let loopback = goals(&sample(), "uring-proxy", "");
    let in_fair = goals(&fair, "uring-proxy", "fair-");
    let rate = |g: &[GoalCheck]| {
        g.iter()
            .find(|c| c.goal.starts_with("keep-alive"))
            .unwrap()
            .value
    };
    assert_eq!(rate(&loopback), rate(&in_fair));
    assert!(rate(&loopback).is_some());
    assert_eq!(rate(&goals(&fair, "uring-proxy", "")), None);
}
