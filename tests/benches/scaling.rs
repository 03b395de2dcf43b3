//! Throughput on every core: N tasks sending concurrently, against N × the rate of one task.
//!
//! Run with `cargo bench -p cqrs-tests --bench scaling`. A multi-thread tokio runtime with one
//! worker per core; each task sends `OPS` commands through one shared `Bus` (cloned per task).
//! Each configuration is run `RUNS` times and the median rate is kept. The same is done for a
//! direct call of the handler: its scaling is what this machine allows, the ceiling for the
//! bus's. A scaling near N means the bus takes no lock and shares no written cache line.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cqrs_core::prelude::*;

mod bare;
use bare::{Add, AddHandler};

/// Operations per task per run.
const OPS: u64 = 400_000;
/// Runs per configuration (the median is reported).
const RUNS: usize = 9;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Bus,
}

/// Operations per second with `tasks` tasks, median of `RUNS`.
fn rate(runtime: &tokio::runtime::Runtime, bus: &Bus, path: Path, tasks: usize) -> f64 {
    let mut rates: Vec<f64> = (0..RUNS)
        .map(|_| {
            runtime.block_on(async {
                let started = Instant::now();
                let handles: Vec<_> = (0..tasks)
                    .map(|t| {
                        let bus = bus.clone();
                        tokio::spawn(async move {
                            let mut sum = 0u64;
                            for i in 0..OPS {
                                let cmd = black_box(Add { a: i, b: t as u64 });
                                let out = match path {
                                    Path::Direct => AddHandler.apply(cmd).await,
                                    Path::Bus => bus.send(cmd).await,
                                };
                                sum = sum.wrapping_add(out.unwrap_or(0));
                            }
                            black_box(sum)
                        })
                    })
                    .collect();
                for handle in handles {
                    handle.await.expect("task");
                }
                (tasks as u64 * OPS) as f64 / started.elapsed().as_secs_f64()
            })
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !filter.is_empty() && !filter.iter().any(|f| "scaling".contains(f.as_str())) {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .build()
        .expect("runtime");
    let bus = Bus::builder()
        .discover(false)
        .register::<AddHandler>()
        .build()
        .expect("bus");
    // Warm up the workers and the bus.
    let _ = rate(&runtime, &bus, Path::Bus, cores);
    std::thread::sleep(Duration::from_millis(100));

    println!("\n## Results\n\n### scaling ({cores} cores, {OPS} operations per task)\n");
    println!("| path | 1 task | {cores} tasks | scaling (ideal {cores}.00×) |");
    println!("|---|---:|---:|---:|");
    for (name, path) in [("direct call", Path::Direct), ("bus.send(cmd)", Path::Bus)] {
        let one = rate(&runtime, &bus, path, 1);
        let all = rate(&runtime, &bus, path, cores);
        println!(
            "| {name} | {:.1} M ops/s | {:.1} M ops/s | {:.2}× |",
            one / 1e6,
            all / 1e6,
            all / one
        );
    }
}
