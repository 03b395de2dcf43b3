//! Cache invalidations between processes over PostgreSQL `LISTEN`/`NOTIFY`: the channel a bus
//! on PostgreSQL uses when no broker (Redis, NATS) is configured, so that two instances on one
//! database keep their caches coherent with nothing else running.
//!
//! The channel is named after the connection's schema (`cqrs_invalidate:<schema>`, at most 63
//! bytes), so that the processes sharing the bus's tables share it, and applications in other
//! schemas of the database do not hear it. `pg_notify` is sent on the pool outside any
//! transaction (the command has committed by then); the listener is a connection of its own,
//! reconnected after a loss with a back-off, each reconnection reported to the sink (which drops
//! the first level: messages sent meanwhile are lost).

use std::time::Duration;

use futures_util::future::{BoxFuture, Either, select};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::OnceCell;

use super::db_error;
use crate::Error;
use crate::pipeline::cache::{InvalidationChannel, InvalidationSink};

/// `LISTEN`/`NOTIFY` on the bus's PostgreSQL database.
pub(crate) struct PgInvalidationChannel {
    pool: PgPool,
    channel: OnceCell<String>,
}

impl PgInvalidationChannel {
    pub(crate) fn new(pool: PgPool) -> Self {
        PgInvalidationChannel {
            pool,
            channel: OnceCell::new(),
        }
    }

    /// The channel's name, from the connection's schema (asked once).
    async fn channel(&self) -> Result<&str, Error> {
        let name = self
            .channel
            .get_or_try_init(|| async {
                let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error)?;
                Ok::<_, Error>(channel_name(&schema))
            })
            .await?;
        Ok(name)
    }
}

/// `cqrs_invalidate:<schema>`, cut to the 63 bytes PostgreSQL keeps of a name.
fn channel_name(schema: &str) -> String {
    let mut name = format!("cqrs_invalidate:{schema}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

impl InvalidationChannel for PgInvalidationChannel {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn publish<'a>(&'a self, payload: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let channel = self.channel().await?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    fn listen(&self, sink: InvalidationSink) -> BoxFuture<'static, ()> {
        let pool = self.pool.clone();
        let channel = self.channel.clone();
        Box::pin(async move {
            let this = PgInvalidationChannel { pool, channel };
            let mut backoff = Duration::from_millis(100);
            while !sink.is_closed() {
                match this.subscribe().await {
                    Ok(mut listener) => {
                        backoff = Duration::from_millis(100);
                        sink.connected();
                        loop {
                            let next =
                                select(Box::pin(listener.try_recv()), Box::pin(sink.closed()));
                            match next.await {
                                Either::Right(_) => return,
                                Either::Left((Ok(Some(notification)), _)) => {
                                    sink.received(notification.payload().as_bytes());
                                }
                                Either::Left((Ok(None), _)) => {
                                    tracing::warn!(target: "cqrs::cache", "lost the PostgreSQL invalidation channel; reconnecting (cached answers are dropped then)");
                                    break;
                                }
                                Either::Left((Err(error), _)) => {
                                    tracing::warn!(target: "cqrs::cache", %error, "the PostgreSQL invalidation channel failed; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(target: "cqrs::cache", %error, "cannot listen for cache invalidations on PostgreSQL; retrying")
                    }
                }
                let pause = tokio::time::sleep(backoff);
                if let Either::Right(_) = select(Box::pin(pause), Box::pin(sink.closed())).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        })
    }
}

impl PgInvalidationChannel {
    async fn subscribe(&self) -> Result<PgListener, Error> {
        let channel = self.channel().await?;
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db_error)?;
        listener.listen(channel).await.map_err(db_error)?;
        Ok(listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_fit_postgres() {
        assert_eq!(channel_name("public"), "cqrs_invalidate:public");
        assert_eq!(channel_name(&"s".repeat(100)).len(), 63);
    }
}
