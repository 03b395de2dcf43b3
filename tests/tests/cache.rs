//! `#[cached_query(..)]` (DESIGN §5, layer 7): a hit returns the stored answer without running
//! the handler; concurrent misses for one key run it once; the key is the `vary_by` fields (the
//! whole query without it); `None` is cached only with `cache_none = true`; errors never are.
//! Commands with `invalidates = [Q]` drop Q's answers once they succeed; `bus.invalidate::<Q>()`
//! does it by hand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{
    CacheFuture, CacheKey, CacheRegion, CacheSpec, CachedValue, Dispatch, MessageKind, Next,
    QueryCache, Representation,
};

/// The "database" the handlers read, and how often they read it.
#[derive(Default)]
struct Store {
    names: Mutex<std::collections::HashMap<u32, String>>,
    reads: AtomicUsize,
}

impl Store {
    fn read(&self) -> usize {
        self.reads.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
    fn name(&self, user: u32) -> String {
        self.names
            .lock()
            .unwrap()
            .get(&user)
            .cloned()
            .unwrap_or_else(|| format!("user-{user}"))
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct Profile {
    user_id: u32,
    locale: String,
}

#[query_handler(Profile)]
#[cached_query(ttl = "5m", vary_by = [user_id])]
struct ProfileHandler {
    store: Arc<Store>,
}

impl QueryHandler<Profile> for ProfileHandler {
    async fn handle(&self, q: Profile, _cx: &QueryContext) -> Result<String, Error> {
        let n = self.store.read();
        Ok(format!(
            "{} [{}] read #{n}",
            self.store.name(q.user_id),
            q.locale
        ))
    }
}

/// Keyed on the whole query; `None` for unknown keys, an error for `broken` the first time.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<usize>)]
struct Lookup {
    key: String,
}

#[query_handler(Lookup)]
#[cached_query(ttl = "5m")]
struct LookupHandler {
    store: Arc<Store>,
}

impl QueryHandler<Lookup> for LookupHandler {
    async fn handle(&self, q: Lookup, _cx: &QueryContext) -> Result<Option<usize>, Error> {
        let n = self.store.read();
        match q.key.as_str() {
            "missing" => Ok(None),
            "broken" if n == 1 => Err(Error::unavailable("replica down")),
            _ => Ok(Some(n)),
        }
    }
}

/// The same, with `None` cached too.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<usize>)]
struct LookupOrNone {
    key: String,
}

#[query_handler(LookupOrNone)]
#[cached_query(ttl = "5m", cache_none = true, max_entries = 100)]
struct LookupOrNoneHandler {
    store: Arc<Store>,
}

impl QueryHandler<LookupOrNone> for LookupOrNoneHandler {
    async fn handle(&self, q: LookupOrNone, _cx: &QueryContext) -> Result<Option<usize>, Error> {
        let n = self.store.read();
        Ok((q.key != "missing").then_some(n))
    }
}

/// Short-lived answers.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = usize)]
struct Ticker;

#[query_handler(Ticker)]
#[cached_query(ttl = "100ms")]
struct TickerHandler {
    store: Arc<Store>,
}

impl QueryHandler<Ticker> for TickerHandler {
    async fn handle(&self, _q: Ticker, _cx: &QueryContext) -> Result<usize, Error> {
        Ok(self.store.read())
    }
}

/// "My orders": the answer depends on who asks, which the macro cannot see.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct MyOrders;

#[query_handler(MyOrders)]
#[cached_query(ttl = "5m")]
struct MyOrdersHandler {
    store: Arc<Store>,
}

impl QueryHandler<MyOrders> for MyOrdersHandler {
    async fn handle(&self, _q: MyOrders, cx: &QueryContext) -> Result<String, Error> {
        let n = self.store.read();
        let who = cx.principal().map_or("nobody", |p| p.id());
        Ok(format!("orders of {who}, read #{n}"))
    }
}

/// The catalogue: the same for everyone, declared `public`.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = usize)]
struct Catalogue;

#[query_handler(Catalogue)]
#[cached_query(ttl = "5m", public)]
struct CatalogueHandler {
    store: Arc<Store>,
}

impl QueryHandler<Catalogue> for CatalogueHandler {
    async fn handle(&self, _q: Catalogue, _cx: &QueryContext) -> Result<usize, Error> {
        Ok(self.store.read())
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RenameUser {
    user_id: u32,
    name: String,
    fail: bool,
}

#[command_handler(RenameUser, invalidates = [Profile])]
struct RenameUserHandler {
    store: Arc<Store>,
}

impl CommandHandler<RenameUser> for RenameUserHandler {
    async fn handle(&self, cmd: RenameUser, _cx: &mut CommandContext) -> Result<(), Error> {
        if cmd.fail {
            return Err(Error::conflict("the name is taken"));
        }
        self.store
            .names
            .lock()
            .unwrap()
            .insert(cmd.user_id, cmd.name);
        Ok(())
    }
}

fn world() -> (Bus, Arc<Store>) {
    let store = Arc::new(Store::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<ProfileHandler>()
        .register::<LookupHandler>()
        .register::<LookupOrNoneHandler>()
        .register::<TickerHandler>()
        .register::<RenameUserHandler>()
        .register::<MyOrdersHandler>()
        .register::<CatalogueHandler>()
        .provide(store.clone())
        .build()
        .unwrap();
    (bus, store)
}

fn profile(user_id: u32, locale: &str) -> Profile {
    Profile {
        user_id,
        locale: locale.to_owned(),
    }
}

fn lookup(key: &str) -> Lookup {
    Lookup {
        key: key.to_owned(),
    }
}

#[tokio::test]
async fn a_second_identical_query_is_answered_from_the_cache() {
    let (bus, store) = world();
    let miss = bus.query_with_report(profile(1, "en")).await.unwrap();
    assert_eq!(miss.output, "user-1 [en] read #1");
    assert!(!miss.cache_hit);
    assert_eq!(miss.attempts, 1);

    let hit = bus.query_with_report(profile(1, "en")).await.unwrap();
    assert_eq!(hit.output, "user-1 [en] read #1");
    assert!(hit.cache_hit);
    assert_eq!(hit.attempts, 0, "the handler did not run");
    assert_eq!(store.reads(), 1);
    assert_eq!(
        bus.query(profile(1, "en")).await.unwrap(),
        "user-1 [en] read #1"
    );
}

#[tokio::test]
async fn answers_are_kept_per_caller_unless_the_query_is_public() {
    let (bus, store) = world();
    let as_who = |who: Option<&str>| match who {
        Some(id) => Envelope::new(MyOrders).principal(Principal::new(id)),
        None => Envelope::new(MyOrders),
    };
    assert_eq!(
        bus.query(as_who(Some("alice"))).await.unwrap(),
        "orders of alice, read #1"
    );
    // Bob asks the same query: his own answer, not alice's cached one.
    assert_eq!(
        bus.query(as_who(Some("bob"))).await.unwrap(),
        "orders of bob, read #2"
    );
    assert_eq!(
        bus.query(as_who(None)).await.unwrap(),
        "orders of nobody, read #3"
    );
    // Each caller's repeat is a hit on their own answer; anonymous callers share one.
    for (who, expected) in [
        (Some("alice"), "orders of alice, read #1"),
        (Some("bob"), "orders of bob, read #2"),
        (None, "orders of nobody, read #3"),
    ] {
        let hit = bus.query_with_report(as_who(who)).await.unwrap();
        assert!(hit.cache_hit);
        assert_eq!(hit.output, expected);
    }
    assert_eq!(store.reads(), 3);

    // `public`: one answer for every caller.
    let first = bus
        .query(Envelope::new(Catalogue).principal(Principal::new("alice")))
        .await
        .unwrap();
    let other = bus
        .query_with_report(Envelope::new(Catalogue).principal(Principal::new("bob")))
        .await
        .unwrap();
    assert!(other.cache_hit);
    assert_eq!(other.output, first);
    assert!(bus.query_with_report(Catalogue).await.unwrap().cache_hit);
    assert_eq!(store.reads(), 4);
}

#[tokio::test]
async fn the_key_is_made_of_the_vary_by_fields_only() {
    let (bus, store) = world();
    bus.query(profile(1, "en")).await.unwrap();
    let other_locale = bus.query_with_report(profile(1, "fr")).await.unwrap();
    assert!(other_locale.cache_hit, "locale is not in vary_by");
    assert_eq!(other_locale.output, "user-1 [en] read #1");

    let other_user = bus.query_with_report(profile(2, "en")).await.unwrap();
    assert!(!other_user.cache_hit);
    assert_eq!(other_user.output, "user-2 [en] read #2");
    assert_eq!(store.reads(), 2);
}

#[tokio::test]
async fn without_vary_by_the_whole_query_is_the_key() {
    let (bus, _) = world();
    assert_eq!(bus.query(lookup("a")).await.unwrap(), Some(1));
    assert_eq!(bus.query(lookup("b")).await.unwrap(), Some(2));
    assert_eq!(bus.query(lookup("a")).await.unwrap(), Some(1));
    assert_eq!(bus.query(lookup("b")).await.unwrap(), Some(2));
}

#[tokio::test]
async fn none_is_not_cached_by_default() {
    let (bus, store) = world();
    for _ in 0..3 {
        let r = bus.query_with_report(lookup("missing")).await.unwrap();
        assert_eq!(r.output, None);
        assert!(!r.cache_hit);
    }
    assert_eq!(store.reads(), 3);
}

#[tokio::test]
async fn none_is_cached_with_cache_none() {
    let (bus, store) = world();
    let q = LookupOrNone {
        key: "missing".into(),
    };
    let first = bus.query_with_report(q.clone()).await.unwrap();
    assert_eq!(first.output, None);
    assert!(!first.cache_hit);
    let second = bus.query_with_report(q).await.unwrap();
    assert_eq!(second.output, None);
    assert!(second.cache_hit);
    assert_eq!(store.reads(), 1);
}

#[tokio::test]
async fn an_error_is_never_cached() {
    let (bus, store) = world();
    let err = bus.query(lookup("broken")).await.unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
    let r = bus.query_with_report(lookup("broken")).await.unwrap();
    assert_eq!(r.output, Some(2));
    assert!(!r.cache_hit);
    assert_eq!(bus.query(lookup("broken")).await.unwrap(), Some(2));
    assert_eq!(store.reads(), 2);
}

#[tokio::test]
async fn a_command_that_invalidates_a_query_drops_its_answers_once_it_succeeds() {
    let (bus, store) = world();
    bus.query(profile(1, "en")).await.unwrap();
    bus.query(profile(2, "en")).await.unwrap();
    bus.query(lookup("a")).await.unwrap();

    let err = bus
        .send(RenameUser {
            user_id: 1,
            name: "ada".into(),
            fail: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Conflict);
    let still = bus.query_with_report(profile(1, "en")).await.unwrap();
    assert!(still.cache_hit, "a failed command invalidates nothing");

    bus.send(RenameUser {
        user_id: 1,
        name: "ada".into(),
        fail: false,
    })
    .await
    .unwrap();
    let fresh = bus.query_with_report(profile(1, "en")).await.unwrap();
    assert!(!fresh.cache_hit);
    assert_eq!(fresh.output, "ada [en] read #4");
    let other = bus.query_with_report(profile(2, "en")).await.unwrap();
    assert!(!other.cache_hit, "every answer of the query is dropped");
    let unrelated = bus.query_with_report(lookup("a")).await.unwrap();
    assert!(unrelated.cache_hit, "other queries keep theirs");
    assert_eq!(unrelated.output, Some(3));
    assert_eq!(store.reads(), 5);
}

#[tokio::test]
async fn invalidating_by_hand_drops_every_answer_of_that_query_only() {
    let (bus, _) = world();
    bus.query(profile(1, "en")).await.unwrap();
    bus.query(lookup("a")).await.unwrap();
    bus.invalidate::<Profile>().await.unwrap();
    assert!(
        !bus.query_with_report(profile(1, "en"))
            .await
            .unwrap()
            .cache_hit
    );
    assert!(bus.query_with_report(lookup("a")).await.unwrap().cache_hit);
    bus.invalidate::<Lookup>().await.unwrap();
    assert!(!bus.query_with_report(lookup("a")).await.unwrap().cache_hit);
}

#[tokio::test]
async fn invalidating_a_query_that_is_not_cached_or_not_handled_is_harmless() {
    #[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
    #[query(output = u8)]
    struct Unhandled;
    let (bus, _) = world();
    bus.invalidate::<Unhandled>().await.unwrap();
    let bus = Bus::builder()
        .discover(false)
        .register::<RenameUserHandler>()
        .provide(Arc::new(Store::default()))
        .build()
        .unwrap();
    bus.invalidate::<Profile>().await.unwrap();
    // And a command that invalidates a query this bus does not have still succeeds.
    bus.send(RenameUser {
        user_id: 1,
        name: "x".into(),
        fail: false,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_answer_expires_after_its_ttl() {
    let (bus, store) = world();
    assert_eq!(bus.query(Ticker).await.unwrap(), 1);
    // The cache keeps its own (wall) clock: wait well past the 100ms ttl for real.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = bus.query_with_report(Ticker).await.unwrap();
    assert!(!r.cache_hit);
    assert_eq!(r.output, 2);
    assert_eq!(store.reads(), 2);
}

/// Counts the queries that entered the pipeline (before the cache layer).
struct Entered(Arc<AtomicUsize>);

impl Middleware for Entered {
    fn applies_to(&self, kind: MessageKind) -> bool {
        kind == MessageKind::Query
    }
    async fn handle(&self, _d: &Dispatch<'_>, next: Next<'_>) -> Result<(), Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run().await
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct Expensive {
    key: u32,
}

/// Holds its answer until `expected` queries have entered the pipeline (or a second passed),
/// so that the others arrive while it runs.
#[query_handler(Expensive)]
#[cached_query(ttl = "5m")]
struct ExpensiveHandler {
    store: Arc<Store>,
    entered: Arc<AtomicUsize>,
    expected: Arc<usize>,
}

impl QueryHandler<Expensive> for ExpensiveHandler {
    async fn handle(&self, q: Expensive, _cx: &QueryContext) -> Result<String, Error> {
        let n = self.store.read();
        for _ in 0..1000 {
            if self.entered.load(Ordering::SeqCst) >= *self.expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(format!("answer {} from run {n}", q.key))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_key_run_the_handler_once() {
    let store = Arc::new(Store::default());
    let entered = Arc::new(AtomicUsize::new(0));
    let bus = Bus::builder()
        .discover(false)
        .register::<ExpensiveHandler>()
        .provide(store.clone())
        .provide(entered.clone())
        .provide(Arc::new(100usize))
        .middleware(Entered(entered.clone()))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.query_with_report(Expensive { key: 7 }).await })
        })
        .collect();
    let mut misses = 0;
    for t in tasks {
        let report = t.await.unwrap().unwrap();
        assert_eq!(report.output, "answer 7 from run 1");
        if !report.cache_hit {
            misses += 1;
        }
    }
    assert_eq!(store.reads(), 1, "one run for a hundred callers");
    assert_eq!(misses, 1, "only the caller that ran it reports a miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_different_keys_run_once_per_key() {
    let store = Arc::new(Store::default());
    let entered = Arc::new(AtomicUsize::new(0));
    let bus = Bus::builder()
        .discover(false)
        .register::<ExpensiveHandler>()
        .provide(store.clone())
        .provide(entered.clone())
        .provide(Arc::new(60usize))
        .middleware(Entered(entered.clone()))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..60u32)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move { (i % 3, bus.query(Expensive { key: i % 3 }).await) })
        })
        .collect();
    let mut answers = std::collections::BTreeMap::<u32, std::collections::BTreeSet<String>>::new();
    for t in tasks {
        let (key, answer) = t.await.unwrap();
        answers.entry(key).or_default().insert(answer.unwrap());
    }
    assert_eq!(store.reads(), 3, "one run per key");
    for (key, distinct) in answers {
        assert_eq!(
            distinct.len(),
            1,
            "every caller of key {key} got the same answer"
        );
    }
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UserRenamed {
    user_id: u32,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RenameAndTell {
    user_id: u32,
    name: String,
}

#[command_handler(RenameAndTell, invalidates = [Profile])]
struct RenameAndTellHandler {
    store: Arc<Store>,
}

impl CommandHandler<RenameAndTell> for RenameAndTellHandler {
    async fn handle(&self, cmd: RenameAndTell, cx: &mut CommandContext) -> Result<(), Error> {
        self.store
            .names
            .lock()
            .unwrap()
            .insert(cmd.user_id, cmd.name);
        cx.emit(UserRenamed {
            user_id: cmd.user_id,
        });
        Ok(())
    }
}

/// Reads the (cached) profile when a user is renamed, e.g. to notify them.
#[event_handler(UserRenamed)]
struct NotifyRenamed {
    queries: QueryBus,
    told: Arc<Mutex<Vec<String>>>,
}

impl EventHandler<UserRenamed> for NotifyRenamed {
    async fn handle(&self, e: &UserRenamed, _cx: &mut EventContext) -> Result<(), Error> {
        let profile = self.queries.query(profile(e.user_id, "en")).await?;
        self.told.lock().unwrap().push(profile);
        Ok(())
    }
}

#[tokio::test]
async fn event_handlers_of_an_invalidating_command_read_fresh_answers() {
    let store = Arc::new(Store::default());
    let told = Arc::new(Mutex::new(Vec::<String>::new()));
    let bus = Bus::builder()
        .discover(false)
        .register::<ProfileHandler>()
        .register::<RenameAndTellHandler>()
        .register::<NotifyRenamed>()
        .provide(store.clone())
        .provide(told.clone())
        .build()
        .unwrap();
    assert_eq!(
        bus.query(profile(1, "en")).await.unwrap(),
        "user-1 [en] read #1"
    );
    bus.send(RenameAndTell {
        user_id: 1,
        name: "grace".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        *told.lock().unwrap(),
        ["grace [en] read #2"],
        "the event handler ran after the command succeeded: it must not see the old answer"
    );
}

/// Reads the name, then takes a while to answer (the first time).
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct SlowProfile {
    user_id: u32,
}

#[query_handler(SlowProfile)]
#[cached_query(ttl = "1h")]
struct SlowProfileHandler {
    store: Arc<Store>,
}

impl QueryHandler<SlowProfile> for SlowProfileHandler {
    async fn handle(&self, q: SlowProfile, _cx: &QueryContext) -> Result<String, Error> {
        let name = self.store.name(q.user_id);
        if self.store.read() == 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(name)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RenameSlowly {
    user_id: u32,
    name: String,
}

#[command_handler(RenameSlowly, invalidates = [SlowProfile])]
struct RenameSlowlyHandler {
    store: Arc<Store>,
}

impl CommandHandler<RenameSlowly> for RenameSlowlyHandler {
    async fn handle(&self, cmd: RenameSlowly, _cx: &mut CommandContext) -> Result<(), Error> {
        self.store
            .names
            .lock()
            .unwrap()
            .insert(cmd.user_id, cmd.name);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_computed_before_an_invalidation_is_not_stored_after_it() {
    let store = Arc::new(Store::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<SlowProfileHandler>()
        .register::<RenameSlowlyHandler>()
        .provide(store.clone())
        .build()
        .unwrap();

    // A query reads the old name and is still computing...
    let reader = bus.clone();
    let stale = tokio::spawn(async move { reader.query(SlowProfile { user_id: 1 }).await });
    while store.reads() == 0 {
        tokio::task::yield_now().await;
    }
    // ...when the rename commits and invalidates the query's answers.
    bus.send(RenameSlowly {
        user_id: 1,
        name: "linus".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        stale.await.unwrap().unwrap(),
        "user-1",
        "it answered what it read"
    );

    // Whoever asks after the rename returned must not get the pre-rename answer.
    let report = bus
        .query_with_report(SlowProfile { user_id: 1 })
        .await
        .unwrap();
    assert_eq!(report.output, "linus");
    assert!(!report.cache_hit);
}

#[tokio::test(start_paused = true)]
async fn a_caller_after_an_invalidation_does_not_wait_for_a_computation_started_before_it() {
    let store = Arc::new(Store::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<SlowProfileHandler>()
        .register::<RenameSlowlyHandler>()
        .provide(store.clone())
        .build()
        .unwrap();
    let reader = bus.clone();
    let stale = tokio::spawn(async move { reader.query(SlowProfile { user_id: 2 }).await });
    while store.reads() == 0 {
        tokio::task::yield_now().await;
    }
    bus.send(RenameSlowly {
        user_id: 2,
        name: "barbara".into(),
    })
    .await
    .unwrap();

    // Asked while the pre-rename computation still runs: not its answer.
    let fresh = bus
        .query_with_report(SlowProfile { user_id: 2 })
        .await
        .unwrap();
    assert_eq!(fresh.output, "barbara");
    assert!(!fresh.cache_hit);

    assert_eq!(stale.await.unwrap().unwrap(), "user-2");
    let later = bus
        .query_with_report(SlowProfile { user_id: 2 })
        .await
        .unwrap();
    assert_eq!(
        later.output, "barbara",
        "the late stale answer replaced nothing"
    );
    assert!(later.cache_hit);
    assert_eq!(store.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn when_the_caller_computing_an_answer_gives_up_a_waiting_caller_takes_over() {
    let store = Arc::new(Store::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<SlowProfileHandler>()
        .provide(store.clone())
        .build()
        .unwrap();
    // The first caller gives up after 100ms, while its (first, slow) run takes a second.
    let leader = bus.clone();
    let impatient = tokio::spawn(async move {
        leader
            .query(Envelope::new(SlowProfile { user_id: 3 }).timeout(Duration::from_millis(100)))
            .await
    });
    while store.reads() == 0 {
        tokio::task::yield_now().await;
    }
    let waiting = bus
        .query_with_report(SlowProfile { user_id: 3 })
        .await
        .unwrap();
    assert_eq!(
        impatient.await.unwrap().unwrap_err().status(),
        Status::Timeout
    );
    assert_eq!(waiting.output, "user-3");
    assert!(!waiting.cache_hit, "it ran the handler itself");
    assert_eq!(store.reads(), 2);
    assert!(
        bus.query_with_report(SlowProfile { user_id: 3 })
            .await
            .unwrap()
            .cache_hit
    );
}

/// Per cached query: its TTL and entry limit, as the bus handed them over.
type Regions = Arc<Mutex<Vec<(&'static str, Duration, u64)>>>;

/// Answers as JSON, by query name and key.
type JsonEntries = Arc<Mutex<std::collections::HashMap<(&'static str, u128), Vec<u8>>>>;

/// A `QueryCache` that keeps answers as JSON and answers asynchronously, as a backend shared
/// between processes (Redis) does. It records what `build()` configured for each query.
#[derive(Default, Clone)]
struct JsonBackend {
    regions: Regions,
    entries: JsonEntries,
    /// The target each entry was stored with.
    targets: Arc<Mutex<std::collections::HashMap<(&'static str, u128), u128>>>,
    invalidations: Arc<Mutex<Vec<&'static str>>>,
}

struct JsonRegion {
    query: &'static str,
    backend: JsonBackend,
}

impl QueryCache for JsonBackend {
    fn region(&self, query: &'static str, spec: &CacheSpec) -> Arc<dyn CacheRegion> {
        self.regions
            .lock()
            .unwrap()
            .push((query, spec.ttl(), spec.max_entries_limit()));
        Arc::new(JsonRegion {
            query,
            backend: self.clone(),
        })
    }
}

impl CacheRegion for JsonRegion {
    fn representation(&self) -> Representation {
        Representation::Json
    }
    fn get(&self, key: u128) -> CacheFuture<'_, Option<CachedValue>> {
        CacheFuture::Pending(Box::pin(async move {
            tokio::task::yield_now().await;
            let entries = self.backend.entries.lock().unwrap();
            Ok(entries
                .get(&(self.query, key))
                .cloned()
                .map(CachedValue::Json))
        }))
    }
    fn insert(&self, key: CacheKey, value: CachedValue) -> CacheFuture<'_, ()> {
        CacheFuture::Pending(Box::pin(async move {
            tokio::task::yield_now().await;
            match value {
                CachedValue::Json(bytes) => {
                    let mut entries = self.backend.entries.lock().unwrap();
                    entries.insert((self.query, key.answer), bytes);
                    let mut targets = self.backend.targets.lock().unwrap();
                    targets.insert((self.query, key.answer), key.target);
                    Ok(())
                }
                _ => Err(Error::internal("a JSON backend was given a value")),
            }
        }))
    }
    fn invalidate_all(&self) -> CacheFuture<'_, ()> {
        let mut entries = self.backend.entries.lock().unwrap();
        entries.retain(|(query, _), _| *query != self.query);
        self.backend.invalidations.lock().unwrap().push(self.query);
        CacheFuture::ready(Ok(()))
    }
    fn invalidate(&self, target: u128) -> CacheFuture<'_, ()> {
        let targets = self.backend.targets.lock().unwrap();
        let mut entries = self.backend.entries.lock().unwrap();
        entries.retain(|id, _| id.0 != self.query || targets.get(id) != Some(&target));
        self.backend.invalidations.lock().unwrap().push(self.query);
        CacheFuture::ready(Ok(()))
    }
    fn drop_local(&self, _target: Option<u128>) {
        // Shared between processes (as Redis would be): nothing kept in this one.
    }
}

impl JsonBackend {
    fn stored(&self, query: &str) -> Vec<serde_json::Value> {
        let entries = self.entries.lock().unwrap();
        entries
            .iter()
            .filter(|((q, _), _)| *q == query)
            .map(|(_, bytes)| serde_json::from_slice(bytes).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_custom_backend_gets_each_querys_options_and_stores_answers_as_json() {
    let store = Arc::new(Store::default());
    let backend = JsonBackend::default();
    let bus = Bus::builder()
        .discover(false)
        .register::<ProfileHandler>()
        .register::<LookupOrNoneHandler>()
        .register::<RenameUserHandler>()
        .provide(store.clone())
        .query_cache(backend.clone())
        .build()
        .unwrap();

    let mut regions = backend.regions.lock().unwrap().clone();
    regions.sort();
    assert_eq!(
        regions,
        [
            ("LookupOrNone", Duration::from_secs(300), 100),
            ("Profile", Duration::from_secs(300), 10_000),
        ],
        "one region per cached query, with its `ttl` and `max_entries`"
    );

    let miss = bus.query_with_report(profile(1, "en")).await.unwrap();
    assert!(!miss.cache_hit);
    assert_eq!(backend.stored("Profile"), [serde_json::json!(miss.output)]);
    let hit = bus.query_with_report(profile(1, "fr")).await.unwrap();
    assert!(hit.cache_hit, "decoded from the stored JSON");
    assert_eq!(hit.output, miss.output);
    assert_eq!(store.reads(), 1);

    // `None` goes through JSON too when `cache_none = true`.
    let none = LookupOrNone {
        key: "missing".into(),
    };
    assert_eq!(bus.query(none.clone()).await.unwrap(), None);
    let again = bus.query_with_report(none).await.unwrap();
    assert_eq!((again.output, again.cache_hit), (None, true));
    assert_eq!(backend.stored("LookupOrNone"), [serde_json::Value::Null]);
    assert_eq!(store.reads(), 2);

    // A stored answer that no longer decodes (an older version of the type) is a miss.
    for bytes in backend.entries.lock().unwrap().values_mut() {
        *bytes = b"{\"not\": \"a string\"}".to_vec();
    }
    let fresh = bus.query_with_report(profile(1, "en")).await.unwrap();
    assert!(!fresh.cache_hit);
    assert_eq!(fresh.output, "user-1 [en] read #3");

    // Invalidation reaches the backend: by a command, and by hand.
    bus.send(RenameUser {
        user_id: 1,
        name: "ada".into(),
        fail: false,
    })
    .await
    .unwrap();
    bus.invalidate::<LookupOrNone>().await.unwrap();
    assert_eq!(
        *backend.invalidations.lock().unwrap(),
        ["Profile", "LookupOrNone"]
    );
    assert!(backend.stored("Profile").is_empty());
    assert!(backend.stored("LookupOrNone").is_empty());
    let renamed = bus.query_with_report(profile(1, "en")).await.unwrap();
    assert!(!renamed.cache_hit);
    assert_eq!(renamed.output, "ada [en] read #4");
}
