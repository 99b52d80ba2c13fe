//! Side-by-side reports: many runs of many contenders in interleaved rounds, reduced to
//! medians with min and max, ratios to the direct path and to the better of nginx and
//! haproxy, the goals the numbers are held to, a Markdown page and an SVG latency plot.
//!
//! Input is the JSON-lines file `perf/compare.sh` writes: one `run` record per run and one
//! `memory` record per contender. Nothing here measures anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::RunResult;

/// One line of the results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Run {
        /// The scenario, e.g. `http-keepalive`.
        scenario: String,
        round: u32,
        contender: String,
        /// The run, with the contender's CPU time and peak RSS when it was watched.
        result: Box<RunResult>,
    },
    Memory {
        contender: String,
        rss_idle_kb: u64,
        rss_conns_kb: u64,
        conns: u64,
    },
}

/// Median, min and max of one figure over the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Whether more of a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// A figure taken from each run of a scenario.
#[derive(Debug)]
pub struct Figure {
    pub name: &'static str,
    pub unit: &'static str,
    pub better: Better,
    pub get: fn(&RunResult, Option<f64>) -> Option<f64>,
}

/// The figures reported per scenario kind.
pub fn figures(scenario: &str) -> Vec<Figure> {
    let lat = |name, get: fn(&RunResult, Option<f64>) -> Option<f64>| Figure {
        name,
        unit: "µs",
        better: Better::Lower,
        get,
    };
    match scenario {
        s if s.ends_with("-rate") => vec![
            lat("p50", |r, _| Some(r.latency.p50)),
            lat("p99", |r, _| Some(r.latency.p99)),
            lat("p99.9", |r, _| Some(r.latency.p999)),
            lat("max", |r, _| Some(r.latency.max)),
        ],
        s if s.contains("stream") => vec![Figure {
            name: "throughput",
            unit: "Gbit/s",
            better: Better::Higher,
            get: |r, _| Some(r.bits_per_second / 1e9),
        }],
        _ => vec![
            Figure {
                name: "rate",
                unit: "req/s",
                better: Better::Higher,
                get: |r, _| Some(r.throughput),
            },
            Figure {
                name: "CPU/req",
                unit: "µs",
                better: Better::Lower,
                get: |r, cpu| {
                    cpu.filter(|_| r.requests > 0)
                        .map(|c| c * 1e6 / r.requests as f64)
                },
            },
            lat("p99", |r, _| Some(r.latency.p99)),
        ],
    }
}

const BASELINES: [&str; 2] = ["nginx", "haproxy"];

/// The reduced results: scenario -> contender -> figure -> spread.
pub type Table = BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, Spread>>>;

/// Contenders in the order they first appear.
pub fn contenders(records: &[Record]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        let c = match r {
            Record::Run { contender, .. } | Record::Memory { contender, .. } => contender,
        };
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    out
}

/// Scenarios in the order they first appear.
pub fn scenarios(records: &[Record]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        if let Record::Run { scenario, .. } = r
            && !out.contains(scenario)
        {
            out.push(scenario.clone());
        }
    }
    out
}

pub fn reduce(records: &[Record]) -> Table {
    let mut raw: BTreeMap<(String, String, &'static str), Vec<f64>> = BTreeMap::new();
    for r in records {
        if let Record::Run {
            scenario,
            contender,
            result,
            ..
        } = r
        {
            for f in figures(scenario) {
                if let Some(v) = (f.get)(result, result.watched_cpu_seconds) {
                    raw.entry((scenario.clone(), contender.clone(), f.name))
                        .or_default()
                        .push(v);
                }
            }
        }
    }
    let mut t = Table::new();
    for ((s, c, f), v) in raw {
        if let Some(spread) = Spread::of(&v) {
            t.entry(s)
                .or_default()
                .entry(c)
                .or_default()
                .insert(f, spread);
        }
    }
    t
}

/// The better of the baselines' medians for a figure.
pub fn best_baseline(t: &Table, scenario: &str, figure: &Figure) -> Option<f64> {
    let row = t.get(scenario)?;
    let vals = BASELINES
        .iter()
        .filter_map(|b| row.get(*b)?.get(figure.name).map(|s| s.median));
    match figure.better {
        Better::Higher => vals.reduce(f64::max),
        Better::Lower => vals.reduce(f64::min),
    }
}

fn fmt_num(v: f64) -> String {
    match v.abs() {
        x if x >= 1e5 => format!("{v:.0}"),
        x if x >= 100.0 => format!("{v:.0}"),
        x if x >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b != 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// One Markdown table per scenario: median [min–max], ratio to direct, ratio to the better
/// baseline. For latency, the "added" column is the contender minus direct.
pub fn markdown_tables(records: &[Record]) -> String {
    let t = reduce(records);
    let order = contenders(records);
    let mut o = String::new();
    for scenario in scenarios(records) {
        let Some(row) = t.get(&scenario) else {
            continue;
        };
        let _ = writeln!(o, "### {scenario}\n");
        let figs = figures(&scenario);
        let latency = scenario.ends_with("-rate");
        let mut header = String::from("| contender |");
        let mut rule = String::from("| --- |");
        for f in &figs {
            let extra = if latency { " added vs direct |" } else { "" };
            let _ = write!(
                header,
                " {} ({}) | ÷ direct | ÷ best of nginx/haproxy |{extra}",
                f.name, f.unit
            );
            rule.push_str(" ---: | ---: | ---: |");
            if latency {
                rule.push_str(" ---: |");
            }
        }
        let _ = writeln!(o, "{header}\n{rule}");
        for c in order.iter().filter(|c| row.contains_key(*c)) {
            let _ = write!(o, "| {c} |");
            for f in &figs {
                match row[c].get(f.name) {
                    Some(s) => {
                        let direct = row
                            .get("direct")
                            .and_then(|d| d.get(f.name))
                            .map(|d| d.median);
                        let best = best_baseline(&t, &scenario, f);
                        let _ = write!(
                            o,
                            " {} [{}–{}] | {} | {} |",
                            fmt_num(s.median),
                            fmt_num(s.min),
                            fmt_num(s.max),
                            ratio(s.median, direct),
                            ratio(s.median, best)
                        );
                        if latency {
                            let added = direct
                                .map(|d| fmt_num(s.median - d))
                                .unwrap_or_else(|| "–".into());
                            let _ = write!(o, " {added} |");
                        }
                    }
                    None => {
                        let _ = write!(o, " – | – | – |{}", if latency { " – |" } else { "" });
                    }
                }
            }
            o.push('\n');
        }
        o.push('\n');
    }
    o
}

/// The memory table: RSS idle, peak under load, and per idle connection.
pub fn memory_table(records: &[Record]) -> String {
    let mut peak: BTreeMap<&str, u64> = BTreeMap::new();
    for r in records {
        if let Record::Run {
            contender, result, ..
        } = r
            && let Some(kb) = result.watched_rss_peak_kb
        {
            let e = peak.entry(contender.as_str()).or_default();
            *e = (*e).max(kb);
        }
    }
    let mut o = String::from(
        "| contender | RSS idle (MiB) | RSS peak under load (MiB) | RSS with N idle connections (MiB) | N | bytes per idle connection |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in records {
        if let Record::Memory {
            contender,
            rss_idle_kb,
            rss_conns_kb,
            conns,
        } = r
        {
            let per = if *conns > 0 {
                format!(
                    "{:.0}",
                    (*rss_conns_kb as f64 - *rss_idle_kb as f64) * 1024.0 / *conns as f64
                )
            } else {
                "–".into()
            };
            let load = peak
                .get(contender.as_str())
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                o,
                "| {contender} | {:.1} | {load} | {:.1} | {conns} | {per} |",
                *rss_idle_kb as f64 / 1024.0,
                *rss_conns_kb as f64 / 1024.0
            );
        }
    }
    o
}

/// A goal and where a contender stands against it.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalCheck {
    pub goal: String,
    pub value: Option<f64>,
    pub target: f64,
    pub met: Option<bool>,
}

/// The goals of the benchmark issue, checked for `ours` (a contender name) in the scenarios
/// named `{layout}http-keepalive` and so on (`""` for the loopback layout, `"fair-"`).
pub fn goals(records: &[Record], ours: &str, layout: &str) -> Vec<GoalCheck> {
    let t = reduce(records);
    let med = |s: &str, c: &str, f: &str| {
        t.get(&format!("{layout}{s}"))?
            .get(c)?
            .get(f)
            .map(|x| x.median)
    };
    let best = |s: &str, f: &str, better: Better| {
        let v = BASELINES.iter().filter_map(|b| med(s, b, f));
        match better {
            Better::Higher => v.reduce(f64::max),
            Better::Lower => v.reduce(f64::min),
        }
    };
    let check = |goal: &str, value: Option<f64>, target: f64, higher: bool| GoalCheck {
        goal: goal.into(),
        value,
        target,
        met: value.map(|v| if higher { v >= target } else { v <= target }),
    };
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let added = |c: &str, q: &str| Some(med("http-rate", c, q)? - med("http-rate", "direct", q)?);
    let best_added = |q: &str| {
        BASELINES
            .iter()
            .filter_map(|b| added(b, q))
            .reduce(f64::min)
    };
    let mut mem_ours = None;
    let mut mem_haproxy = None;
    let mut idle_ours = None;
    for r in records {
        if let Record::Memory {
            contender,
            rss_idle_kb,
            rss_conns_kb,
            conns,
        } = r
        {
            let per =
                (*rss_conns_kb as f64 - *rss_idle_kb as f64) * 1024.0 / (*conns).max(1) as f64;
            if contender == ours {
                mem_ours = Some(per);
                idle_ours = Some(*rss_idle_kb as f64 / 1024.0);
            }
            if contender == "haproxy" {
                mem_haproxy = Some(per);
            }
        }
    }
    vec![
        check(
            "keep-alive rate ÷ better of nginx/haproxy",
            div(
                med("http-keepalive", ours, "rate"),
                best("http-keepalive", "rate", Better::Higher),
            ),
            1.3,
            true,
        ),
        check(
            "added p99 at fixed rate ÷ better of nginx/haproxy",
            div(added(ours, "p99"), best_added("p99")),
            0.5,
            false,
        ),
        check(
            "added p99.9 at fixed rate ÷ better of nginx/haproxy",
            div(added(ours, "p99.9"), best_added("p99.9")),
            0.5,
            false,
        ),
        check(
            "one-request-per-connection rate ÷ better of nginx/haproxy",
            div(
                med("tcp-conn", ours, "rate"),
                best("tcp-conn", "rate", Better::Higher),
            ),
            1.3,
            true,
        ),
        check(
            "single-stream bulk ÷ direct",
            div(
                med("stream-1", ours, "throughput"),
                med("stream-1", "direct", "throughput"),
            ),
            0.8,
            true,
        ),
        check(
            "CPU per request ÷ better of nginx/haproxy",
            div(
                med("http-keepalive", ours, "CPU/req"),
                best("http-keepalive", "CPU/req", Better::Lower),
            ),
            0.7,
            false,
        ),
        check("RSS idle (MiB)", idle_ours, 10.0, false),
        check(
            "bytes per idle connection ÷ haproxy's",
            div(mem_ours, mem_haproxy),
            0.5,
            false,
        ),
    ]
}

pub fn goals_table(checks: &[GoalCheck]) -> String {
    let mut o = String::from("| goal | ours | target | met |\n| --- | ---: | ---: | :---: |\n");
    for g in checks {
        let v = g.value.map(fmt_num).unwrap_or_else(|| "–".into());
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let cmp = if g.goal.starts_with("RSS")
            || g.goal.contains("added")
            || g.goal.contains("CPU")
            || g.goal.contains("bytes")
        {
            "≤"
        } else {
            "≥"
        };
        let _ = writeln!(o, "| {} | {v} | {cmp} {} | {met} |", g.goal, g.target);
    }
    o
}

/// An SVG plot of the latency distributions of one scenario: latency (µs, log scale) against
/// percentile on the usual HdrHistogram axis, 1/(1-p), log scale, from p0 to p99.99.
pub fn latency_svg(records: &[Record], scenario: &str) -> String {
    // For each contender, the run whose p99 is its median p99 (a representative round).
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for c in contenders(records) {
        let mut runs: Vec<&RunResult> = records
            .iter()
            .filter_map(|r| match r {
                Record::Run {
                    scenario: s,
                    contender,
                    result,
                    ..
                } if s == scenario && *contender == c => Some(&**result),
                _ => None,
            })
            .collect();
        if runs.is_empty() {
            continue;
        }
        runs.sort_by(|a, b| a.latency.p99.total_cmp(&b.latency.p99));
        let pts = runs[runs.len() / 2].latency.distribution.clone();
        if !pts.is_empty() {
            series.push((c, pts));
        }
    }
    let (w, h, ml, mr, mt, mb) = (900.0, 520.0, 70.0, 190.0, 40.0, 60.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let x_of = |p: f64| {
        let v = (1.0 / (1.0 - (p / 100.0).min(0.99999))).log10(); // 0 .. 5
        ml + pw * (v / 4.0).clamp(0.0, 1.0)
    };
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().filter(|(q, _)| *q <= 99.99).map(|(_, v)| *v))
        .fold(1.0_f64, f64::max);
    let ymin = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(ymax, f64::min)
        .max(1.0);
    let (lmin, lmax) = (
        ymin.log10().floor(),
        ymax.log10().ceil().max(ymin.log10().floor() + 1.0),
    );
    let y_of =
        |v: f64| mt + ph * (1.0 - ((v.max(1e-3).log10() - lmin) / (lmax - lmin)).clamp(0.0, 1.0));
    let colors = [
        "#000000", "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b", "#e377c2",
    ];
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{ml}\" y=\"22\" font-size=\"15\">Latency by percentile: {scenario} (µs, log scale)</text>\n"
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%"].iter().enumerate() {
        let x = ml + pw * i as f64 / 4.0;
        let _ = writeln!(
            o,
            "<line x1=\"{x}\" y1=\"{mt}\" x2=\"{x}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            mt + ph,
            mt + ph + 18.0
        );
    }
    let mut e = lmin;
    while e <= lmax {
        let v = 10f64.powf(e);
        let y = y_of(v);
        let _ = writeln!(
            o,
            "<line x1=\"{ml}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            ml + pw,
            ml - 6.0,
            y + 4.0,
            fmt_num(v)
        );
        e += 1.0;
    }
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>",
        ml + pw / 2.0,
        h - 15.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .filter(|(p, _)| *p <= 99.99)
            .map(|(p, v)| format!("{:.1},{:.1}", x_of(*p), y_of(*v)))
            .collect();
        let _ = writeln!(
            o,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>",
            path.join(" ")
        );
        let ly = mt + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            o,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{name}</text>",
            ml + pw + 15.0,
            ml + pw + 40.0,
            ml + pw + 46.0,
            ly + 4.0
        );
    }
    o.push_str("</svg>\n");
    o
}

/// Parses a results file (JSON lines).
pub fn parse(text: &str) -> anyhow::Result<Vec<Record>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests;
