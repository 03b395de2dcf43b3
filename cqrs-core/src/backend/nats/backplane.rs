//! Cache invalidations between processes over NATS (core publish/subscribe, not JetStream: an
//! invalidation missed while disconnected is made up for by dropping the first level on
//! reconnection, so nothing needs storing), on subject `<prefix>.invalidate`. When a bus has
//! NATS, this channel wins over Redis's and PostgreSQL's (`pipeline/cache/backplane.rs`).
//!
//! The client resubscribes by itself after a reconnection; the loop watches the connection's
//! state and reports each return to `Connected` to the sink, which drops the first level.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, Either, select};

use crate::Error;
use crate::pipeline::cache::{InvalidationChannel, InvalidationSink};

/// NATS publish/subscribe as an [`InvalidationChannel`].
pub(crate) struct NatsInvalidationChannel {
    client: async_nats::Client,
    subject: String,
}

impl NatsInvalidationChannel {
    pub(crate) fn new(client: async_nats::Client, prefix: &str) -> Self {
        NatsInvalidationChannel {
            client,
            subject: format!("{prefix}.invalidate"),
        }
    }
}

fn connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

impl InvalidationChannel for NatsInvalidationChannel {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn publish<'a>(&'a self, payload: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.client
                .publish(self.subject.clone(), payload.to_owned().into())
                .await
                .map_err(|e| {
                    Error::unavailable(format!("publishing a cache invalidation on NATS: {e}"))
                })
        })
    }

    fn listen(&self, sink: InvalidationSink) -> BoxFuture<'static, ()> {
        let client = self.client.clone();
        let subject = self.subject.clone();
        Box::pin(async move {
            let mut backoff = Duration::from_millis(100);
            while !sink.is_closed() {
                match client.subscribe(subject.clone()).await {
                    Ok(mut subscription) => {
                        backoff = Duration::from_millis(100);
                        sink.connected();
                        let mut was_connected = connected(&client);
                        loop {
                            let tick = Box::pin(tokio::time::sleep(Duration::from_millis(100)));
                            let next = select(subscription.next(), tick);
                            match select(next, Box::pin(sink.closed())).await {
                                Either::Right(_) => return,
                                Either::Left((Either::Left((Some(message), _)), _)) => {
                                    sink.received(&message.payload);
                                }
                                Either::Left((Either::Left((None, _)), _)) => break,
                                Either::Left((Either::Right(_), _)) => {
                                    let now = connected(&client);
                                    if now && !was_connected {
                                        // Back after a loss: what was sent meanwhile is lost.
                                        sink.connected();
                                    }
                                    was_connected = now;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(target: "cqrs::cache", %error, "cannot subscribe to cache invalidations on NATS; retrying");
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
