//! Criterion benchmarks of the analytics ops' `run` at 10^3, 10^5 and 10^6 points, prepared
//! through `ops::prepare` exactly as intake does. Figures and the command are in
//! docs/BENCHMARKS.md ("Analytics ops").

use std::f64::consts::PI;

use ciborium::Value;
use criterion::{BenchmarkId, Criterion, Throughput};
use gateway::analytics::ops::{self, result_map, uint, Series};

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

/// A noisy 3 Hz sine at 100 Hz on a drifting baseline, every 1000th point a spike: the shape of
/// real telemetry, deterministic (xorshift noise) so runs compare.
fn series(n: usize) -> Series {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let values = (0..n)
        .map(|i| {
            let t = i as f64 / 100.0;
            let spike = if i % 1000 == 999 { 25.0 } else { 0.0 };
            20.0 + 0.01 * t + (2.0 * PI * 3.0 * t).sin() + noise() + spike
        })
        .collect();
    let ts = (0..n as u64).map(|i| 1_717_000_000_000 + 10 * i).collect();
    Series {
        values,
        ts: Some(ts),
    }
}

/// Each op with its arguments; the series is supplied as telemetry would be.
fn calls() -> Vec<(&'static str, Value)> {
    let telemetry = || {
        vec![
            ("metric", Value::Text("v".into())),
            ("window_s", uint(3600)),
        ]
    };
    let with = |extra: Vec<(&'static str, Value)>| {
        let mut args = telemetry();
        args.extend(extra);
        result_map(args)
    };
    vec![
        ("stats", with(vec![])),
        ("histogram", with(vec![("bins", uint(50))])),
        ("anomaly", with(vec![])),
        (
            "anomaly_zscore",
            with(vec![("method", Value::Text("zscore".into()))]),
        ),
        ("trend", with(vec![("horizon_s", uint(60))])),
        (
            "spectrum",
            with(vec![("sample_rate_hz", Value::Float(100.0))]),
        ),
    ]
}

fn bench_ops(c: &mut Criterion) {
    let inputs: Vec<(usize, Series)> = SIZES.iter().map(|&n| (n, series(n))).collect();
    for (name, args) in calls() {
        let op = name.split('_').next().expect("op name");
        let call = ops::prepare(op, &args, 1_000_000).expect("valid bench arguments");
        let mut group = c.benchmark_group(name);
        for (n, input) in &inputs {
            group.throughput(Throughput::Elements(*n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), input, |b, input| {
                b.iter(|| call.prepared.run(input).expect("op runs"))
            });
        }
        group.finish();
    }
}

// What criterion_main! expands to, minus the undocumented items it generates.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_ops(&mut criterion);
    criterion.final_summary();
}
