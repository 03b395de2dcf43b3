//! An event-sourced command: load the aggregate, decide, save its new event, on the in-memory
//! store, next to the same domain on `cqrs-es` (`CqrsFramework::execute` over its `MemStore`),
//! the Rust framework users would otherwise pick.
//!
//! Run with `cargo bench -p cqrs-tests --bench event_sourced`. Each operation deposits into a
//! new account (`acct-{i}`), in both frameworks: the load finds no history, so the row measures
//! what each framework adds around one decision and one stored event, not a replay whose length
//! would grow with the number of operations criterion chooses to run.

mod support;

use std::fmt;
use std::hint::black_box;
use std::time::Duration;

use cqrs_core::MemoryEventStore;
use cqrs_core::prelude::*;
use criterion::Criterion;
use serde::{Deserialize, Serialize};

use support::Suite;
use support::alloc::Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---- the domain on cqrs ---------------------------------------------------------------------

mod account;
use account::{Deposit, DepositHandler};

// ---- the same domain on cqrs-es ---------------------------------------------------------------

mod es {
    use super::*;
    use cqrs_es::event_sink::EventSink;
    use cqrs_es::{Aggregate, DomainEvent};

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct Account {
        pub balance: u64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum AccountEvent {
        Deposited { amount: u64 },
    }

    impl DomainEvent for AccountEvent {
        fn event_type(&self) -> String {
            "bench.deposited".to_owned()
        }
        fn event_version(&self) -> String {
            "1".to_owned()
        }
    }

    #[derive(Debug)]
    pub struct AccountError(&'static str);

    impl fmt::Display for AccountError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for AccountError {}

    pub struct Deposit {
        pub amount: u64,
    }

    impl Aggregate for Account {
        const TYPE: &'static str = "account";
        type Command = Deposit;
        type Event = AccountEvent;
        type Error = AccountError;
        type Services = ();

        async fn handle(
            &mut self,
            command: Deposit,
            _services: &(),
            sink: &EventSink<Self>,
        ) -> Result<(), AccountError> {
            if command.amount == 0 {
                return Err(AccountError("a deposit is more than zero"));
            }
            sink.write(
                AccountEvent::Deposited {
                    amount: command.amount,
                },
                self,
            )
            .await;
            Ok(())
        }

        fn apply(&mut self, event: AccountEvent) {
            match event {
                AccountEvent::Deposited { amount } => self.balance += amount,
            }
        }
    }
}

/// Each framework with an empty in-memory store.
fn frameworks() -> (
    Bus,
    cqrs_es::CqrsFramework<es::Account, cqrs_es::mem_store::MemStore<es::Account>>,
) {
    let bus = Bus::builder()
        .discover(false)
        .register::<DepositHandler>()
        .event_store(MemoryEventStore::new())
        .build()
        .expect("bus");
    let peer = cqrs_es::CqrsFramework::new(
        cqrs_es::mem_store::MemStore::<es::Account>::default(),
        vec![],
        (),
    );
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

    const PEER: &str = "cqrs-es: CqrsFramework::execute, MemStore";
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
    suite.runtime().block_on(paired());
    c.final_summary();
    println!(
        "\n## Results (time: criterion slope; allocations: counted over 20 000 operations)\n{}",
        suite.table()
    );
}

/// Both frameworks in rounds on fresh stores: each round builds a new bus and a new cqrs-es,
/// runs a batch of commands on each (which goes first alternates) and takes the ratio of their
/// times. The criterion rows above run millions of commands into stores that keep every
/// account, so their time per command follows the stores' growth (hash-map resizes, first
/// touches of fresh memory) as much as the frameworks, and moved from 0.28× to 1.23× between
/// runs; here every round starts from empty stores, and the median ratio is reported.
async fn paired() {
    const ROUNDS: usize = 101;
    const BATCH: u64 = 2_000;
    let mut ours_ns = Vec::with_capacity(ROUNDS);
    let mut peer_ns = Vec::with_capacity(ROUNDS);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (bus, peer) = frameworks();
        let run_ours = async || {
            let started = std::time::Instant::now();
            for i in 0..BATCH {
                let cmd = Deposit {
                    id: format!("acct-{i}"),
                    amount: 5,
                };
                black_box(bus.send(cmd).await).expect("deposit");
            }
            started.elapsed().as_nanos() as f64 / BATCH as f64
        };
        let run_peer = async || {
            let started = std::time::Instant::now();
            for i in 0..BATCH {
                let id = format!("acct-{i}");
                black_box(peer.execute(&id, es::Deposit { amount: 5 }).await).expect("deposit");
            }
            started.elapsed().as_nanos() as f64 / BATCH as f64
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
        "\n### event-sourced command, paired on fresh stores ({ROUNDS} rounds of {BATCH} commands each)\n\
         | cqrs-es (median) | cqrs (median) | cqrs / cqrs-es (median) | quartiles |\n|---:|---:|---:|---:|\n\
         | {peer_median:.1} ns | {ours_median:.1} ns | **{ratio:.2}×** | {q1:.2}× to {q3:.2}× |"
    );
}
