//! Dependency injection (DESIGN §3): handler fields resolved by type from what the builder was
//! given, `#[inject(default)]` falling back to `Default`, `QueryBus` handed to query handlers
//! (and to command handlers that document why), handlers built once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cqrs_core::BuildProblem;
use cqrs_core::prelude::*;

trait Prices: Send + Sync {
    fn price(&self, sku: &str) -> Option<u64>;
}

struct FixedPrices(HashMap<&'static str, u64>);

impl Prices for FixedPrices {
    fn price(&self, sku: &str) -> Option<u64> {
        self.0.get(sku).copied()
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Currency(&'static str);

impl Default for Currency {
    fn default() -> Self {
        Currency("EUR")
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<u64>)]
struct PriceOf {
    sku: String,
}

#[query_handler(PriceOf)]
struct PriceOfHandler {
    prices: Arc<dyn Prices>,
}

impl QueryHandler<PriceOf> for PriceOfHandler {
    async fn handle(&self, q: PriceOf, _cx: &QueryContext) -> Result<Option<u64>, Error> {
        Ok(self.prices.price(&q.sku))
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct Quote {
    skus: Vec<String>,
}

/// Asks another query through the injected `QueryBus`.
#[query_handler(Quote)]
struct QuoteHandler {
    queries: QueryBus,
    #[inject(default)]
    currency: Currency,
}

impl QueryHandler<Quote> for QuoteHandler {
    async fn handle(&self, q: Quote, _cx: &QueryContext) -> Result<String, Error> {
        let mut total = 0;
        for sku in q.skus {
            total += self
                .queries
                .query(PriceOf { sku: sku.clone() })
                .await?
                .ok_or_else(|| Error::not_found(format!("no price for `{sku}`")))?;
        }
        Ok(format!("{total} {}", self.currency.0))
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<u64>)]
struct CheapestOf {
    skus: Vec<String>,
}

/// Asks another query through its context instead.
#[query_handler(CheapestOf)]
struct CheapestOfHandler;

impl QueryHandler<CheapestOf> for CheapestOfHandler {
    async fn handle(&self, q: CheapestOf, cx: &QueryContext) -> Result<Option<u64>, Error> {
        let mut best = None;
        for sku in q.skus {
            if let Some(p) = cx.query(PriceOf { sku }).await? {
                best = Some(best.map_or(p, |b: u64| b.min(p)));
            }
        }
        Ok(best)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
struct AddToCart {
    sku: String,
}

/// A command handler that reads the query side, and says why.
#[command_handler(
    AddToCart,
    reads_queries = "the cart line keeps the price shown to the user"
)]
struct AddToCartHandler {
    queries: QueryBus,
    added: Arc<AtomicUsize>,
}

impl CommandHandler<AddToCart> for AddToCartHandler {
    async fn handle(&self, cmd: AddToCart, _cx: &mut CommandContext) -> Result<u64, Error> {
        let price = self
            .queries
            .query(PriceOf { sku: cmd.sku })
            .await?
            .ok_or_else(|| Error::not_found("unknown sku"))?;
        self.added.fetch_add(1, Ordering::SeqCst);
        Ok(price)
    }
}

static BUILT: AtomicUsize = AtomicUsize::new(0);

/// Counts how many times a handler holding it is built.
#[derive(Clone)]
struct BuildCounter;

impl Default for BuildCounter {
    fn default() -> Self {
        BUILT.fetch_add(1, Ordering::SeqCst);
        BuildCounter
    }
}

/// Only `a_handler_is_built_once_at_startup_not_per_dispatch` builds its handler.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = usize)]
struct Ping;

#[command_handler(Ping)]
struct PingHandler {
    #[inject(default)]
    _counter: BuildCounter,
    #[inject(default)]
    pings: Arc<AtomicUsize>,
}

impl CommandHandler<Ping> for PingHandler {
    async fn handle(&self, _cmd: Ping, _cx: &mut CommandContext) -> Result<usize, Error> {
        Ok(self.pings.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = String)]
struct Describe;

#[command_handler(Describe)]
struct DescribeHandler {
    #[inject(default)]
    currency: Currency,
    #[inject(default)]
    hits: Arc<AtomicUsize>,
}

impl CommandHandler<Describe> for DescribeHandler {
    async fn handle(&self, _cmd: Describe, _cx: &mut CommandContext) -> Result<String, Error> {
        let n = self.hits.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("{} #{n}", self.currency.0))
    }
}

fn prices() -> Arc<dyn Prices> {
    Arc::new(FixedPrices(HashMap::from([("apple", 30), ("pear", 45)])))
}

#[tokio::test]
async fn a_trait_object_dependency_is_injected_by_its_type() {
    let bus = Bus::builder()
        .discover(false)
        .register::<PriceOfHandler>()
        .provide(prices())
        .build()
        .unwrap();
    assert_eq!(
        bus.query(PriceOf { sku: "pear".into() }).await.unwrap(),
        Some(45)
    );
    assert_eq!(
        bus.query(PriceOf { sku: "kiwi".into() }).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn the_last_value_provided_for_a_type_wins() {
    let bus = Bus::builder()
        .discover(false)
        .register::<PriceOfHandler>()
        .provide(prices())
        .provide(Arc::new(FixedPrices(HashMap::from([("pear", 1)]))) as Arc<dyn Prices>)
        .build()
        .unwrap();
    assert_eq!(
        bus.query(PriceOf { sku: "pear".into() }).await.unwrap(),
        Some(1)
    );
}

#[tokio::test]
async fn a_query_handler_asks_another_query_through_an_injected_query_bus() {
    let bus = Bus::builder()
        .discover(false)
        .register::<PriceOfHandler>()
        .register::<QuoteHandler>()
        .provide(prices())
        .build()
        .unwrap();
    let quote = Quote {
        skus: vec!["apple".into(), "pear".into(), "apple".into()],
    };
    assert_eq!(bus.query(quote).await.unwrap(), "105 EUR");

    let err = bus
        .query(Quote {
            skus: vec!["kiwi".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::NotFound);
    assert_eq!(err.message(), "no price for `kiwi`");
}

#[tokio::test]
async fn a_query_handler_asks_another_query_through_its_context() {
    let bus = Bus::builder()
        .discover(false)
        .register::<PriceOfHandler>()
        .register::<CheapestOfHandler>()
        .provide(prices())
        .build()
        .unwrap();
    let q = CheapestOf {
        skus: vec!["pear".into(), "kiwi".into(), "apple".into()],
    };
    assert_eq!(bus.query(q).await.unwrap(), Some(30));
}

#[tokio::test]
async fn a_command_handler_with_a_documented_reason_reads_queries() {
    let added = Arc::new(AtomicUsize::new(0));
    let bus = Bus::builder()
        .discover(false)
        .register::<PriceOfHandler>()
        .register::<AddToCartHandler>()
        .provide(prices())
        .provide(added.clone())
        .build()
        .unwrap();
    assert_eq!(
        bus.send(AddToCart {
            sku: "apple".into()
        })
        .await
        .unwrap(),
        30
    );
    let err = bus
        .send(AddToCart { sku: "kiwi".into() })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::NotFound);
    assert_eq!(
        added.load(Ordering::SeqCst),
        1,
        "the handler shares the provided counter"
    );
}

#[tokio::test]
async fn inject_default_falls_back_to_default_and_takes_a_provided_value_when_there_is_one() {
    let bus = Bus::builder()
        .discover(false)
        .register::<DescribeHandler>()
        .build()
        .unwrap();
    assert_eq!(bus.send(Describe).await.unwrap(), "EUR #1");
    assert_eq!(bus.send(Describe).await.unwrap(), "EUR #2");

    let hits = Arc::new(AtomicUsize::new(40));
    let bus = Bus::builder()
        .discover(false)
        .register::<DescribeHandler>()
        .provide(Currency("CHF"))
        .provide(hits.clone())
        .build()
        .unwrap();
    assert_eq!(bus.send(Describe).await.unwrap(), "CHF #41");
    assert_eq!(hits.load(Ordering::SeqCst), 41);
}

#[tokio::test]
async fn a_handler_is_built_once_at_startup_not_per_dispatch() {
    let bus = Bus::builder()
        .discover(false)
        .register::<PingHandler>()
        .register::<PingHandler>()
        .build()
        .unwrap();
    assert_eq!(
        BUILT.load(Ordering::SeqCst),
        1,
        "registered twice, built once"
    );
    for expected in 1..=10 {
        assert_eq!(bus.send(Ping).await.unwrap(), expected);
    }
    assert_eq!(bus.clone().send(Ping).await.unwrap(), 11);
    assert_eq!(
        BUILT.load(Ordering::SeqCst),
        1,
        "no handler was built while dispatching"
    );
}

#[tokio::test]
async fn a_missing_dependency_fails_the_build_naming_handler_field_and_type() {
    let err = Bus::builder()
        .discover(false)
        .register::<QuoteHandler>()
        .register::<PriceOfHandler>()
        .register::<AddToCartHandler>()
        .build()
        .unwrap_err();
    let mut missing: Vec<(&str, &str, &str)> = err
        .problems()
        .iter()
        .map(|p| match p {
            BuildProblem::MissingDependency {
                handler,
                field,
                type_name,
                location,
            } => {
                assert!(location.file.ends_with("injection.rs"), "{location}");
                (*handler, *field, *type_name)
            }
            other => panic!("unexpected problem: {other}"),
        })
        .collect();
    missing.sort();
    assert_eq!(
        missing,
        [
            ("AddToCartHandler", "added", "Arc<AtomicUsize>"),
            ("PriceOfHandler", "prices", "Arc<dyn Prices>"),
        ],
        "QueryBus is the bus's own and defaults are not missing"
    );
    let text = err.to_string();
    assert!(text.contains("`PriceOfHandler`"), "{text}");
    assert!(text.contains("`prices: Arc<dyn Prices>`"), "{text}");
    assert!(text.contains("#[inject(default)]"), "{text}");
}

/// Keeps the `QueryBus` a handler was given, to see what it does once the bus is gone.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u32)]
struct Leak;

#[query_handler(Leak)]
struct LeakHandler {
    queries: QueryBus,
    stash: Arc<Mutex<Option<QueryBus>>>,
}

impl QueryHandler<Leak> for LeakHandler {
    async fn handle(&self, _q: Leak, _cx: &QueryContext) -> Result<u32, Error> {
        *self.stash.lock().unwrap() = Some(self.queries.clone());
        Ok(1)
    }
}

#[tokio::test]
async fn an_injected_query_bus_does_not_keep_the_bus_alive() {
    let stash: Arc<Mutex<Option<QueryBus>>> = Arc::default();
    let bus = Bus::builder()
        .discover(false)
        .register::<LeakHandler>()
        .provide(stash.clone())
        .build()
        .unwrap();
    assert_eq!(bus.query(Leak).await.unwrap(), 1);
    let queries = stash.lock().unwrap().take().unwrap();
    assert_eq!(
        queries.query(Leak).await.unwrap(),
        1,
        "works while the bus lives"
    );
    let kept = stash.lock().unwrap().take().unwrap();
    drop(queries);
    drop(bus);
    let err = kept.query(Leak).await.unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
}
