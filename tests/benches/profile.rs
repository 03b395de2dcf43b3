//! Instructions per dispatch, for profiling under callgrind (a count, not a time: the same on a
//! busy machine as on an idle one).
//!
//! ```text
//! cargo bench -p cqrs-tests --bench profile --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/deps/profile-<hash> bus 100000
//! callgrind_annotate /tmp/cg.out | head -40
//! ```
//!
//! The first argument picks the row (`direct`, `floor`: the same handler behind the least a
//! type-erased dispatch can do without allocating (`floor/mod.rs`), `bus`, `es`: the event-sourced command of
//! `benches/event_sourced.rs`, a deposit into a new account, `query`: a query with no decorator,
//! `hit`: the same through authorize, validate and a cache hit, `publish`: an event published to
//! one handler), the second how many operations to run.
//! `tests/benches/instructions.sh` runs every row twice (N and 2N operations) and prints the
//! difference divided by N: the instructions of one operation, without the process's setup.

use std::hint::black_box;

use cqrs_core::MemoryEventStore;
use cqrs_core::prelude::*;

mod account;
mod bare;
mod floor;
use account::{Deposit, DepositHandler};
use bare::{Add, AddHandler};
use floor::StackFloor;

/// The `query` row: the same query with no decorator, its baseline.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u64)]
struct Bare {
    user_id: u64,
    nonce: u64,
}

#[query_handler(Bare)]
struct BareHandler;

impl QueryHandler<Bare> for BareHandler {
    async fn handle(&self, q: Bare, _cx: &QueryContext) -> Result<u64, Error> {
        Ok(q.user_id ^ q.nonce)
    }
}

/// The `hit` row: a query through authorize + validate + a cache hit (as in `benches/dispatch.rs`).
#[derive(Query, validator::Validate, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u64)]
struct Hit {
    #[validate(range(min = 1, max = 1_000_000))]
    user_id: u64,
    nonce: u64,
}

#[query_handler(Hit)]
#[authorize(permissions = ["user:read"])]
#[cached_query(ttl = "5m", vary_by = [user_id])]
struct HitHandler;

impl QueryHandler<Hit> for HitHandler {
    async fn handle(&self, q: Hit, _cx: &QueryContext) -> Result<u64, Error> {
        Ok(q.user_id ^ q.nonce)
    }
}

/// The `publish` row: an event with one handler, which does nothing.
#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pinged {
    n: u64,
}

#[event_handler(Pinged)]
struct PingedHandler;

impl EventHandler<Pinged> for PingedHandler {
    async fn handle(&self, e: &Pinged, _cx: &mut EventContext) -> Result<(), Error> {
        black_box(e.n);
        Ok(())
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let row = args.next().unwrap_or_else(|| "bus".into());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let bus = Bus::builder()
        .discover(false)
        .register::<AddHandler>()
        .register::<DepositHandler>()
        .register::<HitHandler>()
        .register::<BareHandler>()
        .register::<PingedHandler>()
        .event_store(MemoryEventStore::new())
        .build()
        .expect("bus");
    // The `floor` row: the least a type-erased dispatch can do without allocating (see
    // `floor/mod.rs`), on the same handler.
    let floor = StackFloor::new(|cmd: Add| AddHandler.apply(cmd));
    let principal = std::sync::Arc::new(Principal::new("reader").with_permissions(["user:read"]));
    runtime.block_on(async {
        let mut sum = 0u64;
        for i in 0..n {
            if row == "hit" {
                let q = black_box(Hit {
                    user_id: 42,
                    nonce: i,
                });
                let env = Envelope::new(q).principal(principal.clone());
                sum = sum.wrapping_add(bus.query(env).await.unwrap_or(0));
                continue;
            }
            if row == "query" {
                let q = black_box(Bare {
                    user_id: 42,
                    nonce: i,
                });
                let env = Envelope::new(q).principal(principal.clone());
                sum = sum.wrapping_add(bus.query(env).await.unwrap_or(0));
                continue;
            }
            if row == "publish" {
                let published = bus.publish(black_box(Pinged { n: i })).await;
                sum = sum.wrapping_add(u64::from(published.is_ok()));
                continue;
            }
            if row == "es" {
                let cmd = Deposit {
                    id: format!("acct-{i}"),
                    amount: 5,
                };
                sum = sum.wrapping_add(bus.send(cmd).await.unwrap_or(0));
                continue;
            }
            let cmd = black_box(Add { a: i, b: 7 });
            sum = sum.wrapping_add(match row.as_str() {
                "direct" => AddHandler.apply(cmd).await.unwrap_or(0),
                "floor" => floor.send(cmd).await.unwrap_or(0),
                _ => bus.send(cmd).await.unwrap_or(0),
            });
        }
        black_box(sum);
    });
}
