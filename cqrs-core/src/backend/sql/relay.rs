//! The outbox relay: a task per bus that delivers what inline delivery left in the outbox
//! (after a crash, a failed delivery, or with inline delivery off) and purges expired
//! idempotency keys. It waits for the tables (`bus.migrate()`), holds the bus only weakly, and
//! stops when the bus is dropped.

use std::sync::Arc;

use super::store::SqlStore;
use super::{idempotency, outbox, schema};
use crate::bus::{Bus, BusRef};

/// Starts the outbox relay, when the bus has a database and a tokio runtime is running.
pub(crate) fn start(bus: &Bus, store: SqlStore) {
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "cqrs::outbox", "no tokio runtime at build(): the outbox relay is not running; call `bus.relay_outbox()` yourself");
            return;
        };
        let weak = match &bus.inner {
            BusRef::Strong(arc) => Arc::downgrade(arc),
            BusRef::Weak(weak) => weak.clone(),
        };
        let interval = store.outbox.interval;
        let wake = store.wake.clone();
        runtime.spawn(async move {
            let mut ticks: u64 = 0;
            let mut schema_ready = false;
            let mut waiting_for_start = 0u32;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if !schema_ready {
                    match schema::is_current(&store.db).await {
                        Ok(true) => schema_ready = true,
                        Ok(false) => tracing::debug!(target: "cqrs::outbox", "the relay waits for the tables: call `bus.migrate()`"),
                        Err(error) => tracing::warn!(target: "cqrs::outbox", error = %format_args!("{error:#}"), "the outbox relay cannot reach the database; retrying"),
                    }
                }
                // With a broker, nothing is sent before `bus.start()` set it up.
                let ready = inner.stores.transport.as_ref().is_none_or(|t| t.is_ready());
                if !ready {
                    waiting_for_start += 1;
                    if waiting_for_start == 10 {
                        tracing::warn!(target: "cqrs::outbox", "events wait in the outbox for the broker: call `bus.start().await` after `build()`");
                    }
                }
                let mut full = false;
                if schema_ready && ready {
                    match outbox::relay_once(&inner, &store.db, &store.outbox).await {
                        Ok(0) => {}
                        Ok(n) => {
                            full = n as i64 >= store.outbox.batch;
                            tracing::debug!(target: "cqrs::outbox", delivered = n, "relay delivered pending events");
                        }
                        Err(error) => tracing::warn!(target: "cqrs::outbox", error = %format_args!("{error:#}"), "outbox relay failed; retrying"),
                    }
                    if ticks.is_multiple_of(300)
                        && let Err(error) = idempotency::purge(&store.db).await
                    {
                        tracing::debug!(target: "cqrs", %error, "could not purge expired idempotency keys");
                    }
                }
                drop(inner);
                ticks += 1;
                if full {
                    // A full batch: more are likely waiting.
                    continue;
                }
                let sleep = std::pin::pin!(tokio::time::sleep(interval));
                let woken = std::pin::pin!(wake.notified());
                futures_util::future::select(sleep, woken).await;
            }
        });
    }
}
