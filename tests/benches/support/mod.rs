//! The harness shared by every row: one current-thread runtime, criterion for the time, a
//! counting allocator for the allocations, and a table of ratios printed at the end of the run.
//!
//! Every row is an async operation `op(i)` (where `i` counts every operation the row ever ran,
//! so a row can make each operation different, e.g. to miss a cache). A row is measured twice:
//!
//! - **time**: criterion's `iter_custom`; one sample is one `Runtime::block_on` around a loop of
//!   `iters` operations, so the cost of entering the runtime is spread over the whole sample.
//!   The time per operation is the least-squares slope through the origin over criterion's
//!   measurement samples (criterion's own `slope` estimate), computed here from the same samples
//!   so the table can put every row next to its baseline.
//! - **allocations**: after criterion is done with the row, `ALLOC_OPS` more operations inside
//!   one `block_on`, with the counting allocator read before and after the loop (never while
//!   criterion is timing).

pub mod alloc;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use tokio::runtime::Runtime;

use self::alloc::Snapshot;

/// Operations run, untimed, before the allocation count starts (caches warm, lazy statics set).
const ALLOC_WARMUP_OPS: u64 = 1_000;
/// Operations over which allocations are counted and averaged.
const ALLOC_OPS: u64 = 20_000;

/// One row of the table.
struct Row {
    group: usize,
    name: String,
    /// Per comparison column of the group: the row of the same group this one is compared with.
    baselines: Vec<String>,
    /// `(iters, elapsed)` of every call criterion made, warm-up first.
    samples: Vec<(u64, Duration)>,
    /// Allocations and bytes per operation, if the row ran.
    allocations: Option<(f64, f64)>,
}

impl Row {
    /// Nanoseconds per operation: the slope through the origin over the measurement samples.
    fn nanos(&self, sample_size: usize) -> Option<f64> {
        if self.samples.len() < sample_size {
            return None;
        }
        let measured = &self.samples[self.samples.len() - sample_size..];
        let (xy, xx) = measured
            .iter()
            .fold((0.0, 0.0), |(xy, xx), (iters, elapsed)| {
                let x = *iters as f64;
                (xy + x * elapsed.as_nanos() as f64, xx + x * x)
            });
        Some(xy / xx)
    }
}

/// The first quartile, the median and the third quartile of paired measurements (sorts them).
#[allow(dead_code)] // only the benches with a paired measurement use it
pub fn quartiles(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (values[n / 4], values[n / 2], values[3 * n / 4])
}

/// The runtime, the rows measured so far, and criterion's settings.
pub struct Suite {
    runtime: Runtime,
    /// Each group's name and the headers of its comparison columns.
    groups: RefCell<Vec<(String, Vec<String>)>>,
    rows: RefCell<Vec<Row>>,
    sample_size: usize,
    /// Operations over which allocations are counted (`ALLOC_OPS` unless set).
    alloc_ops: u64,
}

impl Suite {
    pub fn new(sample_size: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        Suite {
            runtime,
            groups: RefCell::new(Vec::new()),
            rows: RefCell::new(Vec::new()),
            sample_size,
            alloc_ops: ALLOC_OPS,
        }
    }

    /// Counts allocations over `ops` operations instead of `ALLOC_OPS` (for rows that do I/O,
    /// where 20 000 operations would take minutes).
    #[allow(dead_code)] // not every bench has such rows
    pub fn with_alloc_ops(mut self, ops: u64) -> Self {
        self.alloc_ops = ops;
        self
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// A criterion group whose rows are also collected for the table; `columns` are the headers
    /// of its comparison columns (each row names its baseline for each column).
    pub fn group<'a>(&'a self, c: &'a mut Criterion, name: &str, columns: &[&str]) -> Group<'a> {
        let mut group = c.benchmark_group(name);
        group
            .sample_size(self.sample_size)
            .sampling_mode(SamplingMode::Linear);
        let mut groups = self.groups.borrow_mut();
        groups.push((
            name.to_owned(),
            columns.iter().map(|c| (*c).to_owned()).collect(),
        ));
        Group {
            suite: self,
            index: groups.len() - 1,
            group,
        }
    }

    /// The table of every group, in Markdown.
    pub fn table(&self) -> String {
        let groups = self.groups.borrow();
        let rows = self.rows.borrow();
        let mut out = String::new();
        for (index, (name, columns)) in groups.iter().enumerate() {
            // Rows criterion did not run (filtered out on the command line) are left out.
            let group: Vec<&Row> = rows
                .iter()
                .filter(|r| r.group == index && !r.samples.is_empty())
                .collect();
            if group.is_empty() {
                continue;
            }
            let _ = write!(out, "\n### {name}\n\n| row | time/op |");
            for column in columns {
                let _ = write!(out, " {column} |");
            }
            let _ = write!(out, " allocs/op | bytes/op |\n|---|---:|");
            for _ in columns {
                out.push_str("---:|");
            }
            out.push_str("---:|---:|\n");
            for row in &group {
                let nanos = row.nanos(self.sample_size);
                let time = nanos.map_or_else(|| "-".to_owned(), |t| format!("{t:.1} ns"));
                let _ = write!(out, "| {} | {time} |", row.name);
                for baseline in &row.baselines {
                    let base = group
                        .iter()
                        .find(|r| &r.name == baseline)
                        .and_then(|r| r.nanos(self.sample_size));
                    let cell = match (nanos, base) {
                        _ if baseline.is_empty() => String::new(),
                        _ if *baseline == row.name => "baseline".to_owned(),
                        (Some(t), Some(base)) => {
                            format!("{:.2}× ({:+.1} ns)", t / base, t - base)
                        }
                        _ => "-".to_owned(),
                    };
                    let _ = write!(out, " {cell} |");
                }
                let (allocs, bytes) = row.allocations.map_or_else(
                    || ("-".to_owned(), "-".to_owned()),
                    |(a, b)| (trim(a), trim(b)),
                );
                let _ = writeln!(out, " {allocs} | {bytes} |");
            }
        }
        out
    }
}

/// Per-op averages: whole numbers as such, the rest with two decimals.
fn trim(value: f64) -> String {
    if (value - value.round()).abs() < 0.005 {
        format!("{}", value.round())
    } else {
        format!("{value:.2}")
    }
}

/// A criterion group that records its rows for the table.
pub struct Group<'a> {
    suite: &'a Suite,
    index: usize,
    group: BenchmarkGroup<'a, WallTime>,
}

impl Group<'_> {
    /// A row compared, in each comparison column of the group, with the row named in
    /// `baselines` (its own name marks it as that column's baseline; `""` leaves the cell empty).
    pub fn row<F, Fut>(&mut self, name: &str, baselines: &[&str], mut op: F)
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = ()>,
    {
        let runtime = self.suite.runtime();
        let mut next: u64 = 0;
        let mut samples = Vec::new();
        self.group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let elapsed = runtime.block_on(async {
                    let started = Instant::now();
                    for i in next..next + iters {
                        op(i).await;
                    }
                    started.elapsed()
                });
                next += iters;
                samples.push((iters, elapsed));
                elapsed
            })
        });
        // Criterion did not run the row (filtered out on the command line): do not count it.
        let allocations = (!samples.is_empty()).then(|| {
            runtime.block_on(async {
                let ops = self.suite.alloc_ops;
                let warmup = ALLOC_WARMUP_OPS.min(ops);
                for i in next..next + warmup {
                    op(i).await;
                }
                next += warmup;
                let before = Snapshot::now();
                for i in next..next + ops {
                    op(i).await;
                }
                let after = Snapshot::now();
                before.per_op_since(after, ops)
            })
        });
        self.suite.rows.borrow_mut().push(Row {
            group: self.index,
            name: name.to_owned(),
            baselines: baselines.iter().map(|b| (*b).to_owned()).collect(),
            samples,
            allocations,
        });
    }

    pub fn finish(self) {
        self.group.finish();
    }
}
