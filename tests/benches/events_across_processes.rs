//! Events from `send` to a handler in another process, over NATS JetStream, next to the same
//! events delivered in-process: events per second and the latency from the command's commit to
//! the handler, p50 and p99.
//!
//! ```sh
//! CQRS_NATS_URL=nats://127.0.0.1:4222 cargo bench -p cqrs-tests --bench events_across_processes
//! ```
//!
//! Both runs: a `#[transactional]` command on SQLite (a file per process, WAL) emitting one
//! event, sent by 16 tasks at once, `EVENTS` in all. In-process, the event handler runs in the
//! dispatch right after commit. Across processes, this binary starts itself again as the
//! consumer (`--consumer`): the sender's outbox relay publishes to JetStream, the consumer's
//! durable pull consumers (8 partitions) run the handler. Latency is measured on one clock
//! (both processes on this machine): the event carries the time its command started.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cqrs_core::prelude::*;
use cqrs_core::{Nats, sqlite_pool};

const EVENTS: usize = 4000;
const SENDERS: usize = 16;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Ping {
    n: u64,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[event(name = "bench.pinged", partition_key = n)]
struct Pinged {
    n: u64,
    sent_at_ns: u128,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[command_handler(Ping)]
#[transactional]
struct PingHandler;

impl CommandHandler<Ping> for PingHandler {
    async fn handle(&self, cmd: Ping, cx: &mut CommandContext) -> Result<(), Error> {
        cx.emit(Pinged {
            n: cmd.n,
            sent_at_ns: now_ns(),
        });
        Ok(())
    }
}

/// Latencies in nanoseconds, and when the last event arrived.
#[derive(Default)]
struct Arrivals {
    latencies: Mutex<Vec<u128>>,
}

#[event_handler(Pinged)]
struct Pong {
    arrivals: Arc<Arrivals>,
}

impl EventHandler<Pinged> for Pong {
    async fn handle(&self, event: &Pinged, _: &mut EventContext) -> Result<(), Error> {
        let latency = now_ns().saturating_sub(event.sent_at_ns);
        self.arrivals.latencies.lock().unwrap().push(latency);
        Ok(())
    }
}

fn percentile(sorted: &[u128], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_nanos(sorted[i] as u64)
}

async fn temp_pool(what: &str) -> (cqrs_core::sqlx::SqlitePool, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("cqrs-bench-{what}-{}.db", uuid::Uuid::now_v7()));
    (sqlite_pool(path.to_str().unwrap()).await.unwrap(), path)
}

fn remove(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

async fn send_all(bus: &Bus, events: usize, senders: usize) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            for n in (s..events).step_by(senders) {
                bus.send(Ping { n: n as u64 }).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

fn nats(url: &str, stream: &str) -> impl std::future::Future<Output = Nats> {
    let url = url.to_owned();
    let stream = stream.to_owned();
    async move {
        Nats::connect(&url)
            .await
            .unwrap()
            .service("bench")
            .stream(stream.clone())
            .subject_prefix(stream.to_lowercase())
    }
}

async fn consumer(url: String, stream: String, events: usize) {
    let (pool, path) = temp_pool("consumer").await;
    let arrivals = Arc::new(Arrivals::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<Pong>()
        .provide(arrivals.clone())
        .sqlite(pool.clone())
        .nats(nats(&url, &stream).await)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.start().await.unwrap();
    println!("ready");
    let mut first = None;
    loop {
        let n = arrivals.latencies.lock().unwrap().len();
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let span = first.unwrap().elapsed();
    let mut latencies = arrivals.latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    println!(
        "done {} {} {}",
        span.as_nanos(),
        percentile(&latencies, 0.5).as_nanos(),
        percentile(&latencies, 0.99).as_nanos()
    );
    bus.shutdown(Duration::from_secs(5)).await;
    pool.close().await;
    remove(&path);
}

async fn across_processes_one_by_one(url: &str) -> (f64, Duration, Duration) {
    across(url, 300, 0).await
}

/// `events` sent by `senders` tasks (0: one task, one event every 5 ms), to a handler in
/// another process: events per second from the first send to the last arrival, p50 and p99
/// from the command to the handler.
async fn across(url: &str, events: usize, senders: usize) -> (f64, Duration, Duration) {
    let stream = format!("BENCH{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--consumer", url, &stream, &events.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    let (pool, path) = temp_pool("sender").await;
    let bus = Bus::builder()
        .discover(false)
        .register::<PingHandler>()
        .sqlite(pool.clone())
        .nats(nats(url, &stream).await)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.start().await.unwrap();
    let started = Instant::now();
    if senders == 0 {
        for n in 0..events {
            bus.send(Ping { n: n as u64 }).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    } else {
        send_all(&bus, events, senders).await;
    }
    let done = lines.next_line().await.unwrap().unwrap();
    let total = started.elapsed();
    let parts: Vec<u128> = done
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    child.wait().await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await;
    pool.close().await;
    remove(&path);
    let js = cqrs_core::async_nats::jetstream::new(Nats::connect(url).await.unwrap().client());
    let _ = js.delete_stream(&stream).await;
    let _ = js.delete_stream(format!("{stream}_DLQ")).await;
    (
        events as f64 / total.as_secs_f64(),
        Duration::from_nanos(parts[1] as u64),
        Duration::from_nanos(parts[2] as u64),
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--consumer") {
        let events = args[i + 3].parse().unwrap();
        consumer(args[i + 1].clone(), args[i + 2].clone(), events).await;
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list their cases
    }
    let Ok(url) = std::env::var("CQRS_NATS_URL") else {
        eprintln!(
            "events_across_processes: set CQRS_NATS_URL (e.g. nats://127.0.0.1:4222) to run it"
        );
        return;
    };

    // In-process: the handler runs in the dispatch after commit.
    let (pool, path) = temp_pool("inprocess").await;
    let arrivals = Arc::new(Arrivals::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<PingHandler>()
        .register::<Pong>()
        .provide(arrivals.clone())
        .sqlite(pool.clone())
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    let elapsed = send_all(&bus, EVENTS, SENDERS).await;
    let mut latencies = arrivals.latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    assert_eq!(latencies.len(), EVENTS);
    let in_process = (
        EVENTS as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
    drop(bus);
    pool.close().await;
    remove(&path);

    // Across processes: at full speed, then one sender at a time (latency without a queue).
    let across = across(&url, EVENTS, SENDERS).await;
    let unloaded = across_processes_one_by_one(&url).await;

    println!("{EVENTS} events, {SENDERS} senders, SQLite (WAL), nats-server on loopback");
    println!("| delivery | events/s | p50 commit->handler | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| in-process (after commit, in the dispatch) | {:.0} | {:?} | {:?} |",
        in_process.0, in_process.1, in_process.2
    );
    println!(
        "| another process, through NATS JetStream | {:.0} | {:?} | {:?} |",
        across.0, across.1, across.2
    );
    println!(
        "| another process, one event every 5 ms (no queue) | {:.0} | {:?} | {:?} |",
        unloaded.0, unloaded.1, unloaded.2
    );
}
