//! What dispatching through the bus costs, next to calling the same handler directly.
//!
//! Run with `cargo bench -p cqrs-tests --bench dispatch`; criterion prints each row as it goes,
//! and the table at the end (time per operation, ratio to the baseline measured in the same run,
//! allocations and bytes per operation) is the one in BENCHMARKS.md.
//!
//! Baselines. `CommandContext`, `QueryContext` and `EventContext` have no public constructor, so
//! a test cannot call `CommandHandler::handle` itself. Every handler here therefore keeps its
//! body in an inherent `async fn` that its `handle` awaits and nothing else; the "direct call"
//! rows await that inherent function, which is what calling the handler without a bus costs.
//!
//! Every row runs on one current-thread tokio runtime, inside one `block_on` per criterion
//! sample (see `support`), with inputs and outputs passed through `black_box`.

mod support;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::prelude::*;
use criterion::Criterion;
use serde::{Deserialize, Serialize};
use validator::Validate;

mod bare;
mod floor;
use bare::{Add, AddHandler};
use floor::StackFloor;

use support::Suite;
use support::alloc::Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Criterion samples per row (each a `block_on` around a loop of operations).
const SAMPLE_SIZE: usize = 100;

// ---- 1. a bare command ------------------------------------------------------------------

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The textbook type-erased dispatcher: a `TypeId`-keyed map of functions from a boxed message
/// to a boxed future of a boxed answer. Three allocations per dispatch (message, future,
/// answer), nothing else.
#[derive(Default)]
struct AnyFloor {
    handlers: HashMap<TypeId, AnyHandler>,
}

/// One entry of [`AnyFloor`]: boxed message in, boxed future of a boxed answer out.
type AnyHandler =
    Box<dyn Fn(Box<dyn Any + Send>) -> BoxFuture<'static, Box<dyn Any + Send>> + Send + Sync>;

impl AnyFloor {
    fn register<C, F, Fut>(&mut self, handle: F)
    where
        C: Command,
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Output, Error>> + Send + 'static,
    {
        self.handlers.insert(
            TypeId::of::<C>(),
            Box::new(move |message| {
                let message = *message.downcast::<C>().expect("the map is keyed by type");
                let answer = handle(message);
                Box::pin(async move { Box::new(answer.await) as Box<dyn Any + Send> })
            }),
        );
    }

    async fn send<C: Command>(&self, message: C) -> Result<C::Output, Error> {
        let handler = self
            .handlers
            .get(&TypeId::of::<C>())
            .ok_or_else(|| Error::internal("no handler"))?;
        *handler(Box::new(message))
            .await
            .downcast::<Result<C::Output, Error>>()
            .map_err(|_| Error::internal("wrong answer type"))?
    }
}

type TypedHandler<C> =
    Box<dyn Fn(C) -> BoxFuture<'static, Result<<C as Command>::Output, Error>> + Send + Sync>;

/// The least a type-erased dispatcher can do: a `TypeId`-keyed map to a typed function
/// (downcast once), returning a boxed future. One allocation per dispatch: the future.
#[derive(Default)]
struct TypedFloor {
    handlers: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl TypedFloor {
    fn register<C, F, Fut>(&mut self, handle: F)
    where
        C: Command,
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Output, Error>> + Send + 'static,
    {
        let handler: TypedHandler<C> = Box::new(move |message| Box::pin(handle(message)));
        self.handlers.insert(TypeId::of::<C>(), Box::new(handler));
    }

    async fn send<C: Command>(&self, message: C) -> Result<C::Output, Error> {
        let handler = self
            .handlers
            .get(&TypeId::of::<C>())
            .and_then(|h| h.downcast_ref::<TypedHandler<C>>())
            .ok_or_else(|| Error::internal("no handler"))?;
        handler(message).await
    }
}

impl mediator::Request<Result<u64, Error>> for Add {}

/// One command through the `mediator` crate's async mediator.
#[allow(clippy::await_holding_refcell_ref)] // one operation at a time, on one thread
async fn peer_send(
    peer: &std::cell::RefCell<mediator::DefaultAsyncMediator>,
    cmd: Add,
) -> Result<u64, Error> {
    use mediator::AsyncMediator;
    let mut peer = peer.borrow_mut();
    peer.send::<Add, Result<u64, Error>>(cmd)
        .await
        .map_err(|e| Error::internal(e.to_string()))?
}

/// The handler's body as the floors and the peer call it.
fn add_handler(cmd: Add) -> impl Future<Output = Result<u64, Error>> + Send + 'static {
    AddHandler.apply(cmd)
}

fn add(i: u64) -> Add {
    black_box(Add { a: i, b: 7 })
}

fn commands(suite: &Suite, c: &mut Criterion) {
    let bus = Bus::builder()
        .discover(false)
        .register::<AddHandler>()
        .build()
        .expect("bus");
    let mut any_floor = AnyFloor::default();
    any_floor.register(add_handler);
    let mut typed_floor = TypedFloor::default();
    typed_floor.register(add_handler);
    let stack_floor = StackFloor::new(add_handler);
    // The peer: `mediator`'s async mediator, the same handler body behind `add_handler_fn`.
    // Its builder blocks in place, which only a multi-threaded runtime allows; its `send` takes
    // `&mut self`: one mediator, borrowed by each operation in turn.
    let peer = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime for the peer's builder")
        .block_on(async {
            mediator::DefaultAsyncMediator::builder()
                .add_handler_fn(|cmd: Add| add_handler(cmd))
                .build()
        });
    let peer = std::cell::RefCell::new(peer);

    let expected = 3u64.wrapping_mul(31) + 7;
    suite.runtime().block_on(async {
        assert_eq!(AddHandler.apply(add(3)).await.unwrap(), expected);
        assert_eq!(any_floor.send(add(3)).await.unwrap(), expected);
        assert_eq!(typed_floor.send(add(3)).await.unwrap(), expected);
        assert_eq!(stack_floor.send(add(3)).await.unwrap(), expected);
        assert_eq!(bus.send(add(3)).await.unwrap(), expected);
        assert_eq!(peer_send(&peer, add(3)).await.unwrap(), expected);
    });

    const DIRECT: &str = "direct call";
    const FLOOR: &str = "floor: TypeId map, boxed future";
    let mut g = suite.group(c, "command", &["vs direct call", "vs typed floor"]);
    let (bus, any_floor, typed_floor, stack_floor) = (&bus, &any_floor, &typed_floor, &stack_floor);
    g.row(DIRECT, &[DIRECT, FLOOR], |i| async move {
        let _ = black_box(AddHandler.apply(add(i)).await);
    });
    g.row(FLOOR, &[DIRECT, FLOOR], |i| async move {
        let _ = black_box(typed_floor.send(add(i)).await);
    });
    g.row(
        "floor: one TypeId compare, future inline (StackFuture), no allocation",
        &[DIRECT, FLOOR],
        |i| async move {
            let _ = black_box(stack_floor.send(add(i)).await);
        },
    );
    g.row(
        "floor: TypeId map, Box<dyn Any> in and out",
        &[DIRECT, FLOOR],
        |i| async move {
            let _ = black_box(any_floor.send(add(i)).await);
        },
    );
    let peer = &peer;
    g.row(
        "peer: mediator 0.2 (DefaultAsyncMediator::send)",
        &[DIRECT, FLOOR],
        |i| async move {
            let _ = black_box(peer_send(peer, add(i)).await);
        },
    );
    g.row("bus.send(cmd)", &[DIRECT, FLOOR], |i| async move {
        let _ = black_box(bus.send(add(i)).await);
    });
    g.finish();
}

// ---- 2. queries through decorators ------------------------------------------------------

/// The answer every query handler computes.
#[inline]
fn lookup(user_id: u64, nonce: u64) -> Result<u64, Error> {
    Ok(user_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nonce)
}

/// Declares a query type (`validated`: with a field rule) and the `QueryHandler` impl of
/// `$handler`, whose body is `lookup` (in an inherent `answer`). The handler structs and their
/// attributes are written out below, where each row's decorators can be read at a glance.
macro_rules! query_for {
    ($query:ident, $handler:ident, validated) => {
        #[derive(Query, Validate, Debug, Clone, Hash, PartialEq, Eq)]
        #[query(output = u64)]
        struct $query {
            #[validate(range(min = 1, max = 1_000_000))]
            user_id: u64,
            nonce: u64,
        }
        query_for!(@handler $query, $handler);
    };
    ($query:ident, $handler:ident, plain) => {
        #[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
        #[query(output = u64)]
        struct $query {
            user_id: u64,
            nonce: u64,
        }
        query_for!(@handler $query, $handler);
    };
    (@handler $query:ident, $handler:ident) => {
        impl $handler {
            #[inline]
            async fn answer(&self, q: $query) -> Result<u64, Error> {
                lookup(q.user_id, q.nonce)
            }
        }

        impl QueryHandler<$query> for $handler {
            async fn handle(&self, q: $query, _cx: &QueryContext) -> Result<u64, Error> {
                self.answer(q).await
            }
        }
    };
}

query_for!(Bare, BareHandler, plain);
#[query_handler(Bare)]
struct BareHandler;

query_for!(Authorized, AuthorizedHandler, plain);
#[query_handler(Authorized)]
#[authorize(permissions = ["user:read"])]
struct AuthorizedHandler;

query_for!(Validated, ValidatedHandler, validated);
#[query_handler(Validated)]
struct ValidatedHandler;

query_for!(Cached, CachedHandler, plain);
#[query_handler(Cached)]
#[cached_query(ttl = "5m", vary_by = [user_id])]
struct CachedHandler;

query_for!(Hit, HitHandler, validated);
#[query_handler(Hit)]
#[authorize(permissions = ["user:read"])]
#[cached_query(ttl = "5m", vary_by = [user_id])]
struct HitHandler;

query_for!(Timed, TimedHandler, plain);
#[query_handler(Timed)]
#[timeout("1s")]
struct TimedHandler;

query_for!(Retried, RetriedHandler, plain);
#[query_handler(Retried)]
#[retry(max_attempts = 3, on = [Unavailable])]
struct RetriedHandler;

query_for!(CachedMiss, CachedMissHandler, plain);
#[query_handler(CachedMiss)]
#[cached_query(ttl = "5m", vary_by = [nonce])]
struct CachedMissHandler;

query_for!(Miss, MissHandler, validated);
#[query_handler(Miss)]
#[authorize(permissions = ["user:read"])]
#[cached_query(ttl = "5m", vary_by = [nonce])]
#[retry(max_attempts = 3, on = [Unavailable])]
#[timeout("1s")]
struct MissHandler;

/// The user every query asks about (a hit asks about the same one every time).
const USER: u64 = 42;

fn queries(suite: &Suite, c: &mut Criterion) {
    let bus = Bus::builder()
        .discover(false)
        .register::<BareHandler>()
        .register::<AuthorizedHandler>()
        .register::<ValidatedHandler>()
        .register::<CachedHandler>()
        .register::<HitHandler>()
        .register::<TimedHandler>()
        .register::<RetriedHandler>()
        .register::<CachedMissHandler>()
        .register::<MissHandler>()
        .build()
        .expect("bus");
    let principal = Arc::new(Principal::new("reader").with_permissions(["user:read"]));
    let bus = &bus;
    let principal = &principal;
    // Every bus row sends an envelope with the same `Arc<Principal>` (a reference-count
    // increment), so that the rows differ only by their decorators.
    fn envelope<Q>(q: Q, principal: &Arc<Principal>) -> Envelope<Q> {
        Envelope::new(black_box(q)).principal(Arc::clone(principal))
    }

    suite.runtime().block_on(async {
        let expected = lookup(USER, 0).unwrap();
        let bare = Bare {
            user_id: USER,
            nonce: 0,
        };
        assert_eq!(BareHandler.answer(bare.clone()).await.unwrap(), expected);
        assert_eq!(
            bus.query(envelope(bare, principal)).await.unwrap(),
            expected
        );
        let hit = Hit {
            user_id: USER,
            nonce: 0,
        };
        assert_eq!(
            bus.query(envelope(hit.clone(), principal)).await.unwrap(),
            expected
        );
        let report = bus
            .query_with_report(envelope(hit, principal))
            .await
            .unwrap();
        assert!(report.cache_hit, "the hit row must hit");
        let denied = bus
            .query(Hit {
                user_id: USER,
                nonce: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(denied.status(), Status::Unauthenticated);
        let invalid = bus
            .query(envelope(
                Hit {
                    user_id: 0,
                    nonce: 0,
                },
                principal,
            ))
            .await
            .unwrap_err();
        assert_eq!(invalid.status(), Status::Validation);
        for nonce in [1, 2] {
            let miss = Miss {
                user_id: USER,
                nonce,
            };
            let report = bus
                .query_with_report(envelope(miss, principal))
                .await
                .unwrap();
            assert!(
                !report.cache_hit && report.attempts == 1,
                "the miss row must miss"
            );
            assert_eq!(report.output, lookup(USER, nonce).unwrap());
        }
    });

    const DIRECT: &str = "direct call";
    const BARE: &str = "bus.query, no decorators";
    let cols = &[DIRECT, BARE];
    let mut g = suite.group(c, "query", &["vs direct call", "vs bare bus.query"]);
    g.row(DIRECT, cols, |i| async move {
        let _ = black_box(
            BareHandler
                .answer(black_box(Bare {
                    user_id: USER,
                    nonce: i,
                }))
                .await,
        );
    });
    g.row(BARE, cols, |i| async move {
        let _ = black_box(
            bus.query(envelope(
                Bare {
                    user_id: USER,
                    nonce: i,
                },
                principal,
            ))
            .await,
        );
    });
    g.row("authorize", cols, |i| async move {
        let q = Authorized {
            user_id: USER,
            nonce: i,
        };
        let _ = black_box(bus.query(envelope(q, principal)).await);
    });
    g.row("validate", cols, |i| async move {
        let q = Validated {
            user_id: USER,
            nonce: i,
        };
        let _ = black_box(bus.query(envelope(q, principal)).await);
    });
    g.row("cache hit", cols, |_| async move {
        let q = Cached {
            user_id: USER,
            nonce: 0,
        };
        let _ = black_box(bus.query(envelope(q, principal)).await);
    });
    g.row("authorize + validate + cache hit", cols, |_| async move {
        let q = Hit {
            user_id: USER,
            nonce: 0,
        };
        let _ = black_box(bus.query(envelope(q, principal)).await);
    });
    g.row("timeout", cols, |i| async move {
        let q = Timed {
            user_id: USER,
            nonce: i,
        };
        let _ = black_box(bus.query(envelope(q, principal)).await);
    });
    g.row("retry", cols, |i| async move {
        let q = Retried {
            user_id: USER,
            nonce: i,
        };
        let _ = black_box(bus.query(envelope(q, principal)).await);
    });
    // Misses: `vary_by = [nonce]` and a fresh nonce per operation. Past 10 000 entries (the
    // default `max_entries`), every insert also evicts one.
    g.row("cache miss", cols, |i| async move {
        let q = CachedMiss {
            user_id: USER,
            nonce: i + 1_000,
        };
        let _ = black_box(bus.query(envelope(q, principal)).await);
    });
    g.row(
        "authorize + validate + cache miss + retry + timeout",
        cols,
        |i| async move {
            let q = Miss {
                user_id: USER,
                nonce: i + 1_000,
            };
            let _ = black_box(bus.query(envelope(q, principal)).await);
        },
    );
    g.finish();
    suite
        .runtime()
        .block_on(paired_decorator_cost(bus, principal));
}

/// What authorize + validate + a cache hit add to the bare `bus.query`, measured paired: rounds
/// of a batch of bare queries and a batch of decorated ones back to back (which goes first
/// alternates), the difference taken within each round. The criterion rows are measured seconds
/// apart, and on a shared machine their difference moves by tens of nanoseconds between runs;
/// the median of many paired differences does not follow the machine's load as much.
async fn paired_decorator_cost(bus: &Bus, principal: &Arc<Principal>) {
    const ROUNDS: usize = 301;
    const BATCH: u64 = 2_000;
    async fn batch<Q>(bus: &Bus, principal: &Arc<Principal>, make: impl Fn(u64) -> Q) -> f64
    where
        Q: Query<Output = u64>,
    {
        let started = std::time::Instant::now();
        for i in 0..BATCH {
            let _ = black_box(
                bus.query(Envelope::new(black_box(make(i))).principal(Arc::clone(principal)))
                    .await,
            );
        }
        started.elapsed().as_nanos() as f64 / BATCH as f64
    }
    let bare = |nonce| Bare {
        user_id: USER,
        nonce,
    };
    let hit = |_| Hit {
        user_id: USER,
        nonce: 0,
    };
    let (mut added, mut bare_ns) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for round in 0..ROUNDS {
        let (b, h) = if round % 2 == 0 {
            let b = batch(bus, principal, bare).await;
            (b, batch(bus, principal, hit).await)
        } else {
            let h = batch(bus, principal, hit).await;
            (batch(bus, principal, bare).await, h)
        };
        added.push(h - b);
        bare_ns.push(b);
    }
    let (q1, median, q3) = support::quartiles(&mut added);
    let (_, bare_median, _) = support::quartiles(&mut bare_ns);
    println!(
        "\n### authorize + validate + cache hit over the bare bus.query, paired \
         ({ROUNDS} rounds of {BATCH} each)\n\
         | bare bus.query (median) | added (median) | added (quartiles) |\n|---:|---:|---:|\n\
         | {bare_median:.1} ns | **+{median:.1} ns** | +{q1:.1} to +{q3:.1} ns |"
    );
}

// ---- 3. publishing an event -------------------------------------------------------------

/// Declares an event, its handlers (each with its body in an inherent `react`), a function
/// that calls every body in turn (the baseline), and one that registers every handler.
macro_rules! event_with_handlers {
    ($event:ident, $direct:ident, $register:ident: $($handler:ident),+ $(,)?) => {
        #[derive(Event, Debug, Clone, Serialize, Deserialize)]
        struct $event {
            n: u64,
        }
        $(
            #[event_handler($event)]
            struct $handler;

            impl $handler {
                #[inline]
                async fn react(&self, e: &$event) -> Result<(), Error> {
                    black_box(e.n);
                    Ok(())
                }
            }

            impl EventHandler<$event> for $handler {
                async fn handle(&self, e: &$event, _cx: &mut EventContext) -> Result<(), Error> {
                    self.react(e).await
                }
            }
        )+

        async fn $direct(e: &$event) {
            $( let _ = black_box($handler.react(e).await); )+
        }

        fn $register(builder: BusBuilder) -> BusBuilder {
            builder $( .register::<$handler>() )+
        }
    };
}

event_with_handlers!(OneHandler, direct_1, register_1: One01);
event_with_handlers!(FiveHandlers, direct_5, register_5: Five01, Five02, Five03, Five04, Five05);
event_with_handlers!(
    TwentyHandlers, direct_20, register_20:
    Twenty01, Twenty02, Twenty03, Twenty04, Twenty05, Twenty06, Twenty07, Twenty08, Twenty09,
    Twenty10, Twenty11, Twenty12, Twenty13, Twenty14, Twenty15, Twenty16, Twenty17, Twenty18,
    Twenty19, Twenty20,
);

fn publish(suite: &Suite, c: &mut Criterion) {
    let bus = register_20(register_5(register_1(Bus::builder().discover(false))))
        .build()
        .expect("bus");
    let bus = &bus;
    suite.runtime().block_on(async {
        bus.publish(OneHandler { n: 1 }).await.unwrap();
        bus.publish(FiveHandlers { n: 1 }).await.unwrap();
        bus.publish(TwentyHandlers { n: 1 }).await.unwrap();
    });

    let mut g = suite.group(c, "publish", &["vs direct calls of the same handlers"]);
    const D1: &str = "direct: 1 handler";
    const D5: &str = "direct: 5 handlers";
    const D20: &str = "direct: 20 handlers";
    g.row(D1, &[D1], |i| async move {
        direct_1(&black_box(OneHandler { n: i })).await;
    });
    g.row("bus.publish → 1 handler", &[D1], |i| async move {
        let _ = black_box(bus.publish(black_box(OneHandler { n: i })).await);
    });
    g.row(D5, &[D5], |i| async move {
        direct_5(&black_box(FiveHandlers { n: i })).await;
    });
    g.row("bus.publish → 5 handlers", &[D5], |i| async move {
        let _ = black_box(bus.publish(black_box(FiveHandlers { n: i })).await);
    });
    g.row(D20, &[D20], |i| async move {
        direct_20(&black_box(TwentyHandlers { n: i })).await;
    });
    g.row("bus.publish → 20 handlers", &[D20], |i| async move {
        let _ = black_box(bus.publish(black_box(TwentyHandlers { n: i })).await);
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let suite = Suite::new(SAMPLE_SIZE);
    commands(&suite, &mut c);
    queries(&suite, &mut c);
    publish(&suite, &mut c);
    c.final_summary();
    println!(
        "\n## Results (time: criterion slope; allocations: counted over 20 000 operations)\n{}",
        suite.table()
    );
}
