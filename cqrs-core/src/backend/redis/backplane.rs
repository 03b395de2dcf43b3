//! Cache invalidations between processes over Redis pub/sub, on channel `<prefix>invalidate`.
//!
//! Publishing goes through the bus's shared connection. Listening takes a connection of its own
//! (a subscribed connection can do nothing else); when its stream ends the connection was lost:
//! the loop reconnects with a back-off and reports each subscription to the sink, which drops
//! the first level (messages sent meanwhile were lost).

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, Either, select};

use super::{Redis, redis_error};
use crate::Error;
use crate::pipeline::cache::{InvalidationChannel, InvalidationSink};

/// Redis pub/sub as an [`InvalidationChannel`].
pub(crate) struct RedisInvalidationChannel {
    redis: Redis,
    channel: String,
}

impl RedisInvalidationChannel {
    pub(crate) fn new(redis: Redis) -> Self {
        let channel = redis.key("invalidate");
        RedisInvalidationChannel { redis, channel }
    }
}

impl InvalidationChannel for RedisInvalidationChannel {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn publish<'a>(&'a self, payload: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut connection = self.redis.connection().await?;
            let publish = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(payload)
                .clone();
            match publish.query_async::<()>(&mut connection).await {
                Ok(()) => Ok(()),
                // The shared connection was lost (Redis restarted) and is remade on this error:
                // one more try, so that the first invalidation after an outage is not lost.
                Err(error) if error.is_connection_dropped() || error.is_io_error() => publish
                    .query_async::<()>(&mut connection)
                    .await
                    .map_err(redis_error),
                Err(error) => Err(redis_error(error)),
            }
        })
    }

    fn listen(&self, sink: InvalidationSink) -> BoxFuture<'static, ()> {
        let client = self.redis.client().clone();
        let channel = self.channel.clone();
        Box::pin(async move {
            let mut backoff = Duration::from_millis(100);
            while !sink.is_closed() {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match subscribed.await {
                    Ok(pubsub) => {
                        backoff = Duration::from_millis(100);
                        sink.connected();
                        let mut messages = pubsub.into_on_message();
                        loop {
                            match select(messages.next(), Box::pin(sink.closed())).await {
                                Either::Right(_) => return,
                                Either::Left((Some(message), _)) => {
                                    sink.received(message.get_payload_bytes());
                                }
                                Either::Left((None, _)) => {
                                    tracing::warn!(target: "cqrs::cache", "lost the Redis invalidation channel; reconnecting (cached answers are dropped then)");
                                    break;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(target: "cqrs::cache", %error, "cannot subscribe to cache invalidations on Redis; retrying")
                    }
                }
                let pause = Box::pin(tokio::time::sleep(backoff));
                if let Either::Right(_) = select(pause, Box::pin(sink.closed())).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        })
    }
}
