//! tract and onnxruntime on the MLP over 1,000 rows, paired: blocks of calls of each, one after
//! the other in one run, so that both meet the same moments of a shared machine. This guest
//! runs in slower and faster spells of seconds; measured apart (criterion's `models` bench,
//! then `gen_models.py --bench`), the two land in different spells and their ratio swings
//! between 1.2x and 2.7x. Paired, each block of tract is compared with the onnxruntime block
//! next to it.
//!
//! onnxruntime runs in `python3 tests/fixtures/gen_models.py --serve-bench` (one thread), which
//! times a block of calls when asked; tract runs here, on the plan specialised to 1,000 rows
//! exactly as `gateway run` serves it. [`BLOCKS`] pairs of [`CALLS`] calls each, the order
//! alternating, bounded by [`LIMIT`]. Prints each side's median and p10 per call over the blocks,
//! and the per-pair ratio's median, p10 and p90 and how many pairs were within 2x. Without
//! python3 and onnxruntime it says so and measures nothing. Figures: docs/BENCHMARKS.md.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tract_onnx::prelude::{IntoTValue, TValue, TVec, Tensor};

mod common {
    pub mod mlp;
}

use common::mlp::{registry_with, rows, ROWS};

/// As in `gateway run`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pairs of blocks.
const BLOCKS: usize = 150;
/// Calls per block.
const CALLS: usize = 200;
/// The whole comparison stops here, whatever is left.
const LIMIT: Duration = Duration::from_secs(60);

fn main() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/gen_models.py"
    );
    let child = Command::new("python3")
        .args([script, "--serve-bench"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let Ok(mut child) = child else {
        println!("models_paired: python3 is not here; nothing measured");
        return;
    };
    let (Some(mut to_ort), Some(from_ort)) = (child.stdin.take(), child.stdout.take()) else {
        println!("models_paired: no pipe to python3; nothing measured");
        return;
    };
    let mut from_ort = BufReader::new(from_ort).lines();
    let ready = match from_ort.next() {
        Some(Ok(line)) if line.starts_with("ready") => line,
        _ => {
            println!("models_paired: onnxruntime did not start (pip install onnxruntime onnx); nothing measured");
            let _ = child.wait();
            return;
        }
    };
    // The specialised plan's build says which kernel its trials kept.
    tracing_subscriber::fmt()
        .with_env_filter("gateway::models=debug")
        .with_writer(std::io::stderr)
        .init();
    let registry = registry_with("\"N\"");
    let model = registry.get("mlp").expect("mlp").clone();
    let tensor = Tensor::from_shape(&[ROWS, 8], &rows()).expect("tensor");
    let inputs = || -> TVec<TValue> { std::iter::once(tensor.clone().into_tvalue()).collect() };
    for _ in 0..2 {
        model.run(inputs(), None).expect("runs");
    }
    assert!(
        model.wait_specialised(&inputs(), Duration::from_secs(120)),
        "the plan for 1,000 rows is built"
    );
    for _ in 0..200 {
        model.run(inputs(), None).expect("runs");
    }
    let mut ort_block = || -> f64 {
        writeln!(to_ort, "{CALLS}").expect("ask onnxruntime");
        let line = from_ort.next().expect("onnxruntime answers").expect("line");
        line.trim().parse::<f64>().expect("seconds") / CALLS as f64 * 1e6
    };
    let tract_block = || -> f64 {
        let started = Instant::now();
        for _ in 0..CALLS {
            model.run(inputs(), None).expect("runs");
        }
        started.elapsed().as_secs_f64() / CALLS as f64 * 1e6
    };
    let began = Instant::now();
    let (mut ort, mut tract, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for block in 0..BLOCKS {
        if began.elapsed() > LIMIT {
            break;
        }
        let (o, t) = if block % 2 == 0 {
            let o = ort_block();
            (o, tract_block())
        } else {
            let t = tract_block();
            (ort_block(), t)
        };
        ort.push(o);
        tract.push(t);
        ratio.push(t / o);
    }
    drop(to_ort);
    let _ = child.wait();
    let within = ratio.iter().filter(|r| **r <= 2.0).count();
    println!(
        "models_paired: {ready}; tract as served; {} pairs of {CALLS} calls, {:.1} s",
        ratio.len(),
        began.elapsed().as_secs_f64()
    );
    println!(
        "  onnxruntime µs per call: median {:.1}, p10 {:.1}",
        quantile(&mut ort, 0.5),
        quantile(&mut ort, 0.1)
    );
    println!(
        "  tract       µs per call: median {:.1}, p10 {:.1}",
        quantile(&mut tract, 0.5),
        quantile(&mut tract, 0.1)
    );
    println!(
        "  tract / onnxruntime per pair: median {:.2}, p10 {:.2}, p90 {:.2}; within 2x in {within} of {} pairs",
        quantile(&mut ratio, 0.5),
        quantile(&mut ratio, 0.1),
        quantile(&mut ratio, 0.9),
        ratio.len()
    );
}

/// The `q` quantile of `values` (sorted in place).
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get(((values.len() as f64 * q) as usize).min(values.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}
