//! Events across processes on NATS JetStream (feature `nats`), on the real server named by
//! `CQRS_NATS_URL`, with the database `CQRS_POSTGRES_URL` names (a schema per test). Each test
//! has its own stream, subject prefix and service name, and removes them. Two buses on one
//! database and one stream stand for two instances of a service here; `examples/tests/
//! shop_nats.rs` runs two real shop processes.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{DeadLetter, Nats, Redeliver, ReplayFrom};
use support::TestDb;
use uuid::Uuid;

const NEEDS: &str = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL";

/// A stream, subject prefix and service of one test; removed by `cleanup`.
struct Names {
    id: String,
}

impl Names {
    fn new() -> Names {
        Names {
            id: Uuid::now_v7().simple().to_string()[20..].to_owned(),
        }
    }
    fn stream(&self) -> String {
        format!("T{}", self.id)
    }
    fn prefix(&self) -> String {
        format!("t{}", self.id)
    }
}

async fn client(url: &str) -> cqrs_core::async_nats::Client {
    Nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("CQRS_NATS_URL is set but NATS does not answer: {e}"))
        .client()
}

fn nats_url() -> String {
    std::env::var("CQRS_NATS_URL")
        .expect("this test needs NATS: set CQRS_NATS_URL (e.g. nats://127.0.0.1:4222)")
}

/// Settings for tests: short waits, few partitions.
async fn nats(url: &str, names: &Names, service: &str) -> Nats {
    Nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("CQRS_NATS_URL is set but NATS does not answer: {e}"))
        .service(service)
        .stream(names.stream())
        .subject_prefix(names.prefix())
        .partitions(4)
        .ack_wait(Duration::from_secs(2))
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .pull_wait(Duration::from_millis(500))
}

async fn cleanup(url: &str, names: &Names) {
    let js = cqrs_core::async_nats::jetstream::new(client(url).await);
    let _ = js.delete_stream(names.stream()).await;
    let _ = js.delete_stream(format!("{}_DLQ", names.stream())).await;
}

// ---- the application -----------------------------------------------------------------------

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    key: String,
    n: u32,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[event(name = "test.recorded", partition_key = key)]
struct Recorded {
    key: String,
    n: u32,
}

#[command_handler(Record)]
#[transactional]
struct RecordHandler;

impl CommandHandler<Record> for RecordHandler {
    async fn handle(&self, cmd: Record, cx: &mut CommandContext) -> Result<(), Error> {
        cx.emit(Recorded {
            key: cmd.key,
            n: cmd.n,
        });
        Ok(())
    }
}

/// What the handlers saw: (handler, key) -> the `n`s in arrival order, and the event ids.
#[derive(Default)]
struct Seen {
    order: Mutex<BTreeMap<(&'static str, String), Vec<u32>>>,
    ids: Mutex<HashMap<&'static str, Vec<Uuid>>>,
    busy: Mutex<HashSet<String>>,
    overlaps: Mutex<u32>,
    /// While set, `Projection` fails.
    failing: Mutex<bool>,
}

impl Seen {
    fn saw(&self, who: &'static str, key: &str, n: u32, id: Uuid) {
        self.order
            .lock()
            .unwrap()
            .entry((who, key.to_owned()))
            .or_default()
            .push(n);
        self.ids.lock().unwrap().entry(who).or_default().push(id);
    }
    fn count(&self, who: &'static str) -> usize {
        self.ids.lock().unwrap().get(who).map_or(0, Vec::len)
    }
}

#[event_handler(Recorded)]
struct Projection {
    seen: Arc<Seen>,
}

impl EventHandler<Recorded> for Projection {
    async fn handle(&self, event: &Recorded, cx: &mut EventContext) -> Result<(), Error> {
        if *self.seen.failing.lock().unwrap() {
            return Err(Error::unavailable("the projection's database is away"));
        }
        // Two events of one key are never handled at the same time.
        if !self.seen.busy.lock().unwrap().insert(event.key.clone()) {
            *self.seen.overlaps.lock().unwrap() += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.seen.busy.lock().unwrap().remove(&event.key);
        self.seen
            .saw("projection", &event.key, event.n, cx.event_id());
        Ok(())
    }
}

#[event_handler(Recorded)]
struct Audit {
    seen: Arc<Seen>,
}

impl EventHandler<Recorded> for Audit {
    async fn handle(&self, event: &Recorded, cx: &mut EventContext) -> Result<(), Error> {
        self.seen.saw("audit", &event.key, event.n, cx.event_id());
        Ok(())
    }
}

async fn bus(db: &TestDb, nats: Nats, seen: &Arc<Seen>) -> Bus {
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<RecordHandler>()
        .register::<Projection>()
        .register::<Audit>()
        .provide(seen.clone())
        .outbox_relay_interval(Duration::from_millis(500))
        .outbox_lease(Duration::from_secs(2))
        .nats(nats)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.start().await.unwrap();
    bus
}

/// Polls `done` for up to `secs` seconds.
async fn eventually(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the tests -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn every_event_reaches_every_handler_once_across_two_instances_in_order_per_key() {
    let _ = NEEDS;
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let other_db = db.reopen().await;
    let seen = Arc::new(Seen::default());
    let a = bus(&db, nats(&url, &names, "svc").await, &seen).await;
    let b = bus(&other_db, nats(&url, &names, "svc").await, &seen).await;

    // 500 events over 25 keys, sent through both instances in turn.
    for n in 0..20u32 {
        for k in 0..25u32 {
            let via = if (n + k) % 2 == 0 { &a } else { &b };
            via.send(Record {
                key: format!("k{k}"),
                n,
            })
            .await
            .unwrap();
        }
    }
    eventually(60, "500 events to both handlers", || {
        seen.count("projection") >= 500 && seen.count("audit") >= 500
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for who in ["projection", "audit"] {
        let ids = seen.ids.lock().unwrap().get(who).cloned().unwrap();
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(ids.len(), 500, "{who} handled each event once");
        assert_eq!(unique.len(), 500, "{who} handled each event once");
    }
    for ((who, key), ns) in seen.order.lock().unwrap().iter() {
        assert_eq!(
            *ns,
            (0..20).collect::<Vec<_>>(),
            "{who} saw {key}'s events in order"
        );
    }
    assert_eq!(
        *seen.overlaps.lock().unwrap(),
        0,
        "one event of a key at a time"
    );
    assert_eq!(a.pending_events().await.unwrap(), 0);

    assert!(a.shutdown(Duration::from_secs(5)).await);
    assert!(b.shutdown(Duration::from_secs(5)).await);
    other_db.close().await;
    db.cleanup().await;
    cleanup(&url, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn a_key_s_events_leave_in_order_even_when_an_older_one_waits_in_another_instance() {
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let other_db = db.reopen().await;
    let seen = Arc::new(Seen::default());
    // A publishes nothing itself: its events wait in the outbox (as when its publish is slow
    // or it died right after commit).
    let a = db
        .attach(Bus::builder().discover(false))
        .register::<RecordHandler>()
        .outbox_relay(false)
        .nats(nats(&url, &names, "svc").await)
        .build()
        .unwrap();
    a.migrate().await.unwrap();
    a.start().await.unwrap();
    let b = bus(&other_db, nats(&url, &names, "svc").await, &seen).await;

    for n in 0..10u32 {
        // Even steps on A (held back), odd ones on B (published at once, were it not for A's).
        let via = if n % 2 == 0 { &a } else { &b };
        via.send(Record {
            key: "order-1".into(),
            n,
        })
        .await
        .unwrap();
    }
    eventually(30, "ten events", || seen.count("projection") >= 10).await;
    let order = seen.order.lock().unwrap().clone();
    assert_eq!(
        order[&("projection", "order-1".to_owned())],
        (0..10).collect::<Vec<_>>(),
        "the later events never overtook the one waiting in A's outbox"
    );
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    other_db.close().await;
    db.cleanup().await;
    cleanup(&url, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn a_failing_event_is_parked_after_max_deliver_and_redelivered_to_its_handler_only() {
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let seen = Arc::new(Seen::default());
    *seen.failing.lock().unwrap() = true;
    let bus = bus(
        &db,
        nats(&url, &names, "svc")
            .await
            .handler_max_deliver("Projection", 3),
        &seen,
    )
    .await;
    let name = "Projection".to_owned();

    bus.send(Record {
        key: "poison".into(),
        n: 1,
    })
    .await
    .unwrap();
    let mut parked: Vec<DeadLetter> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while parked.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(100)).await;
        parked = bus.dead_letters(Some(&name)).await.unwrap();
    }
    assert_eq!(parked.len(), 1);
    let letter = &parked[0];
    assert_eq!(letter.event, "test.recorded");
    assert_eq!(letter.handler, name);
    assert_eq!(letter.deliveries, 3, "parked on the last of max_deliver");
    assert!(
        letter.error.contains("database is away"),
        "{}",
        letter.error
    );
    assert_eq!(letter.data["key"], "poison");
    assert_eq!(seen.count("audit"), 1, "the other handler took it at once");
    assert!(bus.dead_letters(Some("Audit")).await.unwrap().is_empty());

    // The fix, then the redelivery: to the projection only.
    *seen.failing.lock().unwrap() = false;
    assert_eq!(
        bus.redeliver(Redeliver::AllOf(name.clone())).await.unwrap(),
        1
    );
    eventually(20, "the redelivered event", || {
        seen.count("projection") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.count("audit"), 1, "the audit did not see it again");
    assert!(bus.dead_letters(None).await.unwrap().is_empty());

    bus.shutdown(Duration::from_secs(5)).await;
    db.cleanup().await;
    cleanup(&url, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn an_event_that_no_longer_decodes_is_parked_at_once() {
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let seen = Arc::new(Seen::default());
    let bus = bus(&db, nats(&url, &names, "svc").await, &seen).await;

    // Another service publishes `test.recorded` with a schema that drifted (`n` is text).
    let js = cqrs_core::async_nats::jetstream::new(client(&url).await);
    let mut headers = cqrs_core::async_nats::HeaderMap::new();
    let id = Uuid::now_v7();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id.to_string().as_str());
    headers.insert("ce-type", "test.recorded");
    headers.insert("ce-source", "/elsewhere");
    let subject = format!("{}.ev.test-2Erecorded.0", names.prefix());
    js.publish_with_headers(subject, headers, r#"{"key":"x","n":"seven"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();

    let mut parked = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while parked.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not parked: {parked:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        parked = bus.dead_letters(None).await.unwrap();
    }
    for letter in &parked {
        assert_eq!(letter.event_id, id);
        assert_eq!(letter.deliveries, 1, "parked on the first delivery");
        assert!(letter.error.contains("does not decode"), "{}", letter.error);
    }
    assert_eq!(seen.count("projection") + seen.count("audit"), 0);
    bus.shutdown(Duration::from_secs(5)).await;
    db.cleanup().await;
    cleanup(&url, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn replay_delivers_the_past_again_to_one_handler() {
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let seen = Arc::new(Seen::default());
    let bus = bus(&db, nats(&url, &names, "svc").await, &seen).await;
    for n in 0..5 {
        bus.send(Record { key: "r".into(), n }).await.unwrap();
    }
    eventually(20, "five events", || {
        seen.count("projection") == 5 && seen.count("audit") == 5
    })
    .await;
    let name = "Projection".to_owned();
    bus.replay(&name, ReplayFrom::Start).await.unwrap();
    eventually(20, "the replay", || seen.count("projection") == 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seen.count("audit"),
        5,
        "only the replayed handler saw them again"
    );
    let order = seen.order.lock().unwrap().clone();
    assert_eq!(
        order[&("projection", "r".to_owned())],
        vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    );
    let unknown = bus.replay("NoSuchHandler", ReplayFrom::Start).await;
    assert_eq!(unknown.unwrap_err().status(), Status::NotFound);
    bus.shutdown(Duration::from_secs(5)).await;
    db.cleanup().await;
    cleanup(&url, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn start_reports_every_clash_with_what_exists() {
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let seen = Arc::new(Seen::default());
    let first = bus(&db, nats(&url, &names, "svc").await, &seen).await;
    first.shutdown(Duration::from_secs(5)).await;

    let clashing = db
        .attach(Bus::builder().discover(false))
        .register::<RecordHandler>()
        .register::<Projection>()
        .provide(seen.clone())
        .nats(
            nats(&url, &names, "svc")
                .await
                .partitions(2)
                .max_age(Duration::from_secs(3600))
                .max_deliver(9),
        )
        .build()
        .unwrap();
    let error = clashing.start().await.unwrap_err().to_string();
    assert!(error.contains("max_age"), "{error}");
    assert!(error.contains("partitions=4"), "{error}");
    assert!(error.contains("max_deliver 5, not 9"), "{error}");
    assert!(error.contains(&url), "names the server: {error}");
    db.cleanup().await;
    cleanup(&url, &names).await;
}

#[tokio::test]
async fn nats_without_a_database_is_a_build_error() {
    // A client that has not connected yet (nothing listens on port 1): `.nats(..)` is checked
    // at `build()`, before any network.
    let client = cqrs_core::async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap();
    let Err(error) = Bus::builder().discover(false).nats(client).build() else {
        panic!("a broker needs the outbox");
    };
    let text = error.to_string();
    assert!(text.contains("needs a database"), "{text}");
    assert!(text.contains(".sqlite(pool)"), "{text}");

    // Whichever comes first: a database after the broker is fine.
    let client = cqrs_core::async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap();
    let db = TestDb::sqlite().await;
    let built = db
        .attach(Bus::builder().discover(false).nats(client))
        .build();
    assert!(built.is_ok(), "{:?}", built.err());
    db.cleanup().await;
}

#[tokio::test]
async fn unreachable_nats_names_the_url() {
    let error = Nats::connect("nats://127.0.0.1:1").await.unwrap_err();
    assert_eq!(error.status(), Status::Unavailable);
    assert!(error.to_string().contains("nats://127.0.0.1:1"), "{error}");
}

/// A `nats-server -js` of this test's own, on a free port, with its store in a temporary
/// directory: stopped and started again by the test.
struct OwnServer {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnServer {
    fn start() -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("cqrs-nats-{}", Uuid::now_v7().simple()));
        let mut server = OwnServer {
            port,
            dir,
            child: None,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is on the PATH (CQRS_NATS_URL is set: NATS is installed)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server as an operator does (SIGTERM: it saves its consumers' state first).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn nats_stopped_mid_run_leaves_events_in_the_outbox_then_they_flow_none_lost() {
    let _ = nats_url();
    let mut server = OwnServer::start();
    let url = server.url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let seen = Arc::new(Seen::default());
    let bus = bus(&db, nats(&url, &names, "svc").await, &seen).await;
    for n in 0..20 {
        bus.send(Record {
            key: format!("k{}", n % 3),
            n,
        })
        .await
        .unwrap();
    }
    eventually(30, "the first 20", || seen.count("projection") == 20).await;

    server.stop();
    for n in 20..40 {
        // Commands go on: their events wait in the outbox.
        bus.send(Record {
            key: format!("k{}", n % 3),
            n,
        })
        .await
        .unwrap();
    }
    assert!(
        bus.pending_events().await.unwrap() > 0,
        "waiting in the outbox"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        seen.count("projection"),
        20,
        "nothing reached the handlers meanwhile"
    );

    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.count("projection") < 40 || seen.count("audit") < 40 {
        let pending = bus.pending_events().await.unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 20 that waited: projection {}, audit {}, still in the outbox {pending}",
            seen.count("projection"),
            seen.count("audit")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = seen.ids.lock().unwrap().get("projection").cloned().unwrap();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 40, "each once");
    for ((_, key), ns) in seen.order.lock().unwrap().iter() {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(
            *ns, sorted,
            "{key}'s events in order across the outage: {ns:?}"
        );
    }
    assert_eq!(bus.pending_events().await.unwrap(), 0);
    bus.shutdown(Duration::from_secs(5)).await;
    db.cleanup().await;
}

/// Never answers: its process stops (here: its bus shuts down at once) while it works.
#[event_handler(Recorded)]
struct Hang;

impl EventHandler<Recorded> for Hang {
    async fn handle(&self, _: &Recorded, _: &mut EventContext) -> Result<(), Error> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn an_event_whose_last_delivery_never_came_back_is_parked_from_the_advisory() {
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let hanging = || async {
        let bus = db
            .attach(Bus::builder().discover(false))
            .register::<RecordHandler>()
            .register::<Hang>()
            .nats(
                nats(&url, &names, "svc")
                    .await
                    .handler_max_deliver("Hang", 1),
            )
            .build()
            .unwrap();
        bus.migrate().await.unwrap();
        bus.start().await.unwrap();
        bus
    };
    let a = hanging().await;
    let b = hanging().await;
    a.send(Record {
        key: "stuck".into(),
        n: 1,
    })
    .await
    .unwrap();
    // Let one of them take it, then stop both at once, the handler still at work; start one
    // again (it watches the advisories).
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.shutdown(Duration::ZERO).await;
    b.shutdown(Duration::ZERO).await;
    let c = hanging().await;

    let mut parked = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while parked.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(200)).await;
        parked = c.dead_letters(Some("Hang")).await.unwrap();
    }
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].error.contains("without an answer"),
        "{}",
        parked[0].error
    );
    assert_eq!(parked[0].data["key"], "stuck");
    c.shutdown(Duration::from_secs(1)).await;
    db.cleanup().await;
    cleanup(&url, &names).await;
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RecordPlainly {
    key: String,
    n: u32,
}

/// No transaction: its event is written to the outbox in one of its own, after the handler.
#[command_handler(RecordPlainly)]
struct RecordPlainlyHandler;

impl CommandHandler<RecordPlainly> for RecordPlainlyHandler {
    async fn handle(&self, cmd: RecordPlainly, cx: &mut CommandContext) -> Result<(), Error> {
        cx.emit(Recorded {
            key: cmd.key,
            n: cmd.n,
        });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn plain_commands_and_bus_publish_go_through_the_outbox_too() {
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let seen = Arc::new(Seen::default());
    let bus = db
        .attach(Bus::builder().discover(false))
        .register::<RecordPlainlyHandler>()
        .register::<Audit>()
        .provide(seen.clone())
        .outbox_relay(false) // nothing leaves before we looked at the outbox
        .nats(nats(&url, &names, "svc").await)
        .build()
        .unwrap();
    bus.migrate().await.unwrap();
    bus.start().await.unwrap();

    bus.send(RecordPlainly {
        key: "p".into(),
        n: 0,
    })
    .await
    .unwrap();
    bus.publish(Recorded {
        key: "p".into(),
        n: 1,
    })
    .await
    .unwrap();
    assert_eq!(
        seen.count("audit"),
        0,
        "not delivered in the emitting process"
    );
    assert_eq!(bus.pending_events().await.unwrap(), 2, "both in the outbox");

    // Another instance's relay sends them, in order.
    let other_db = db.reopen().await;
    let relay = db_bus_for_relay(&other_db, nats(&url, &names, "svc").await).await;
    eventually(20, "both events", || seen.count("audit") == 2).await;
    let order = seen.order.lock().unwrap().clone();
    assert_eq!(order[&("audit", "p".to_owned())], vec![0, 1]);
    relay.shutdown(Duration::from_secs(5)).await;
    bus.shutdown(Duration::from_secs(5)).await;
    other_db.close().await;
    db.cleanup().await;
    cleanup(&url, &names).await;
}

/// An instance with no handlers of its own: only its outbox relay works.
async fn db_bus_for_relay(db: &TestDb, nats: Nats) -> Bus {
    let bus = db
        .attach(Bus::builder().discover(false))
        .outbox_relay_interval(Duration::from_millis(200))
        .nats(nats)
        .build()
        .unwrap();
    bus.start().await.unwrap();
    bus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set CQRS_NATS_URL and CQRS_POSTGRES_URL"]
async fn no_dead_letters_before_any_bus_started_on_the_stream() {
    let url = nats_url();
    let names = Names::new();
    let db = TestDb::postgres().await;
    let bus = db
        .attach(Bus::builder().discover(false))
        .nats(nats(&url, &names, "svc").await)
        .build()
        .unwrap();
    // An admin command on a fresh machine: the streams do not exist yet.
    assert!(bus.dead_letters(None).await.unwrap().is_empty());
    assert_eq!(
        bus.redeliver(Redeliver::AllOf("Projection".into()))
            .await
            .unwrap(),
        0
    );
    db.cleanup().await;
}
