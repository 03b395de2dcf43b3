//! The event-sourcing comparison on PostgreSQL: ours (`.postgres(pool)`, its `cqrs_events`
//! table) against cqrs-es over `postgres-es` (its `events` table, as its `db/init.sql` creates
//! it), each in a schema of its own on the same server, each through a pool of [`POOL`]
//! connections. The same domain: a deposit into a new account (load: no history; decide; save
//! one event).
//!
//! What each framework sends per command, read from their code: cqrs-es selects the
//! aggregate's events, then in a transaction inserts the new one. Ours selects the snapshot and
//! the events, then in a transaction reads the stream's version, inserts the event (its table
//! also has a unique event id) and its outbox row, and commits. Both commit synchronously
//! (`synchronous_commit` on, the server's default), so each waits for one WAL flush.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::sqlx;
use cqrs_core::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use criterion::Criterion;

use super::account::{Deposit, DepositHandler};
use super::{POOL, Peer, black_box, es, paired};
use crate::support::Suite;

/// postgres-es's tables, from its `db/init.sql` (0.5.0).
const PEER_TABLES: &str = r#"
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
"#;

type PgPeer =
    Peer<cqrs_es::persist::PersistedEventStore<postgres_es::PostgresEventRepository, es::Account>>;

/// Both frameworks on PostgreSQL: criterion rows, then paired rounds; the schemas are dropped
/// at the end.
pub fn compare(suite: &Suite, c: &mut Criterion, url: &str) {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let (ours_schema, peer_schema) = (format!("cqrs_es_ours_{tag}"), format!("cqrs_es_peer_{tag}"));
    let base = PgConnectOptions::from_str(url).expect("CQRS_POSTGRES_URL is not a valid URL");
    let (admin, pool, bus, peer) = suite.runtime().block_on(async {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("CQRS_POSTGRES_URL is set but PostgreSQL does not answer: {e}")
            });
        for schema in [&ours_schema, &peer_schema] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&admin)
                .await
                .expect("schema");
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .connect_with(base.options([("search_path", ours_schema.as_str())]))
            .await
            .expect("pool");
        cqrs_core::migrate_postgres(&pool).await.expect("migrate");
        let bus = Bus::builder()
            .discover(false)
            .register::<DepositHandler>()
            .postgres(pool.clone())
            .build()
            .expect("bus");
        let peer_pool = sqlx08::postgres::PgPoolOptions::new()
            .max_connections(POOL)
            .connect_with(
                sqlx08::postgres::PgConnectOptions::from_str(url)
                    .expect("CQRS_POSTGRES_URL")
                    .options([("search_path", peer_schema.as_str())]),
            )
            .await
            .expect("postgres-es pool");
        sqlx08::raw_sql(PEER_TABLES)
            .execute(&peer_pool)
            .await
            .expect("postgres-es tables");
        let peer: PgPeer = Arc::new(postgres_es::postgres_cqrs(peer_pool, vec![], ()));
        // Both work, and agree.
        let check = Deposit {
            id: "check".into(),
            amount: 5,
        };
        assert_eq!(bus.send(check.clone()).await.expect("ours"), 5);
        assert_eq!(bus.send(check).await.expect("ours"), 10);
        peer.execute("check", es::Deposit { amount: 5 })
            .await
            .expect("postgres-es");
        (admin, pool, bus, peer)
    });

    const PEER: &str = "cqrs-es + postgres-es: CqrsFramework::execute (PostgreSQL)";
    let mut g = suite.group(c, "event-sourced command, PostgreSQL", &["vs cqrs-es"]);
    {
        let (bus, peer) = (&bus, &peer);
        g.row(PEER, &[PEER], |i| async move {
            let id = format!("pg-{i}");
            black_box(peer.execute(&id, es::Deposit { amount: 5 }).await).expect("deposit");
        });
        g.row(
            "cqrs: bus.send(Deposit), cx.load + cx.save (PostgreSQL)",
            &[PEER],
            |i| async move {
                let cmd = Deposit {
                    id: format!("pg-{i}"),
                    amount: 5,
                };
                black_box(bus.send(cmd).await).expect("deposit");
            },
        );
    }
    g.finish();
    suite.runtime().block_on(paired("PostgreSQL", 21, 200, || {
        (bus.clone(), peer.clone())
    }));
    drop((bus, peer));
    suite.runtime().block_on(async {
        pool.close().await;
        // Give postgres-es's pool (dropped with its framework) time to hang up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for schema in [&ours_schema, &peer_schema] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await
                .expect("drop schema");
        }
    });
}
