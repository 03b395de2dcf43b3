//! An event-sourced command: load the aggregate, decide, save its new event, next to the same
//! domain on `cqrs-es`, the Rust framework users would otherwise pick, on two stores each:
//!
//! - **in memory**: ours (`MemoryEventStore`) against cqrs-es over [`es_peer::QuietStore`], an
//!   in-memory store written for the bench (cqrs-es's own `MemStore` prints two lines per
//!   command and is not meant for production: see `es_peer`);
//! - **PostgreSQL** (when `CQRS_POSTGRES_URL` is set): ours (`.postgres(pool)`, its `cqrs_events`
//!   table) against cqrs-es over `postgres-es`, its production store (its `events` table), each
//!   in a schema of its own on the same server, each with a pool of [`POOL`] connections.
//!
//! Run with `cargo bench -p cqrs-tests --bench event_sourced`. Each operation deposits into a
//! new account (`acct-{i}`), in both frameworks: the load finds no history, so the row measures
//! what each framework adds around one decision and one stored event, not a replay whose length
//! would grow with the number of operations criterion chooses to run.

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::MemoryEventStore;
use cqrs_core::prelude::*;
use criterion::Criterion;

use support::Suite;
use support::alloc::Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---- the domain on cqrs ---------------------------------------------------------------------

mod account;
use account::{Deposit, DepositHandler};

// ---- the same domain on cqrs-es ---------------------------------------------------------------

mod es_peer;
use es_peer as es;
mod es_postgres;

/// Connections in each framework's pool on PostgreSQL.
const POOL: u32 = 4;

/// cqrs-es over store `S`, shared by the rounds of [`paired`].
type Peer<S> = Arc<cqrs_es::CqrsFramework<es::Account, S>>;

/// Each framework with an empty in-memory store.
fn frameworks() -> (
    Bus,
    cqrs_es::CqrsFramework<es::Account, es::QuietStore<es::Account>>,
) {
    let bus = Bus::builder()
        .discover(false)
        .register::<DepositHandler>()
        .event_store(MemoryEventStore::new())
        .build()
        .expect("bus");
    let peer = cqrs_es::CqrsFramework::new(es::QuietStore::<es::Account>::default(), vec![], ());
    (bus, peer)
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let suite = Suite::new(100);

    let (bus, peer) = frameworks();
    suite.runtime().block_on(async {
        let deposit = Deposit {
            id: "check".into(),
            amount: 5,
        };
        assert_eq!(bus.send(deposit.clone()).await.unwrap(), 5);
        assert_eq!(bus.send(deposit).await.unwrap(), 10);
        peer.execute("check", es::Deposit { amount: 5 })
            .await
            .unwrap();
    });

    const PEER: &str = "cqrs-es: CqrsFramework::execute, QuietStore (in memory)";
    let mut g = suite.group(&mut c, "event-sourced command", &["vs cqrs-es"]);
    let (bus, peer) = (&bus, &peer);
    g.row(PEER, &[PEER], |i| async move {
        let id = format!("acct-{i}");
        let _ = black_box(peer.execute(&id, es::Deposit { amount: 5 }).await);
    });
    g.row(
        "cqrs: bus.send(Deposit), cx.load + cx.save, MemoryEventStore",
        &[PEER],
        |i| async move {
            let cmd = Deposit {
                id: format!("acct-{i}"),
                amount: 5,
            };
            let _ = black_box(bus.send(cmd).await);
        },
    );
    g.finish();
    suite
        .runtime()
        .block_on(paired("in memory (QuietStore)", 101, 2_000, || {
            let (bus, peer) = frameworks();
            (bus, Arc::new(peer))
        }));
    match std::env::var("CQRS_POSTGRES_URL") {
        Ok(url) => es_postgres::compare(&suite, &mut c, &url),
        Err(_) => eprintln!("PostgreSQL rows skipped: set CQRS_POSTGRES_URL to run them"),
    }
    c.final_summary();
    println!(
        "\n## Results (time: criterion slope; allocations: counted over 20 000 operations)\n{}",
        suite.table()
    );
}

/// Both frameworks in rounds: each round takes the frameworks `frameworks` gives (fresh in-memory
/// stores, or the same PostgreSQL pools), runs a batch of commands on each (which goes first
/// alternates) on accounts no earlier round used, and takes the ratio of their times. The
/// in-memory criterion rows above run millions of commands into stores that keep every account,
/// so their time per command follows the stores' growth (hash-map resizes, first touches of
/// fresh memory) as much as the frameworks, and moved from 0.28× to 1.23× between runs; the
/// median of the per-round ratio does not.
async fn paired<S>(title: &str, rounds: usize, batch: u64, frameworks: impl Fn() -> (Bus, Peer<S>))
where
    S: cqrs_es::EventStore<es::Account>,
{
    let mut ours_ns = Vec::with_capacity(rounds);
    let mut peer_ns = Vec::with_capacity(rounds);
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (bus, peer) = frameworks();
        let run_ours = async || {
            let started = std::time::Instant::now();
            for i in 0..batch {
                let cmd = Deposit {
                    id: format!("acct-{round}-{i}"),
                    amount: 5,
                };
                black_box(bus.send(cmd).await).expect("deposit");
            }
            started.elapsed().as_nanos() as f64 / batch as f64
        };
        let run_peer = async || {
            let started = std::time::Instant::now();
            for i in 0..batch {
                let id = format!("acct-{round}-{i}");
                black_box(peer.execute(&id, es::Deposit { amount: 5 }).await).expect("deposit");
            }
            started.elapsed().as_nanos() as f64 / batch as f64
        };
        let (ours, theirs) = if round % 2 == 0 {
            let ours = run_ours().await;
            (ours, run_peer().await)
        } else {
            let theirs = run_peer().await;
            (run_ours().await, theirs)
        };
        ours_ns.push(ours);
        peer_ns.push(theirs);
        ratios.push(ours / theirs);
    }
    let (_, peer_median, _) = support::quartiles(&mut peer_ns);
    let (_, ours_median, _) = support::quartiles(&mut ours_ns);
    let (q1, ratio, q3) = support::quartiles(&mut ratios);
    println!(
        "\n### event-sourced command, {title}, paired ({rounds} rounds of {batch} commands each)\n\
         | cqrs-es (median) | cqrs (median) | cqrs / cqrs-es (median) | quartiles |\n|---:|---:|---:|---:|\n\
         | {peer_median:.1} ns | {ours_median:.1} ns | **{ratio:.2}×** | {q1:.2}× to {q3:.2}× |"
    );
}
