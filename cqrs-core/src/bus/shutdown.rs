//! Letting go of a bus at shutdown: [`Bus::close`].

use std::sync::Arc;
use std::time::Duration;

use super::BusRef;
use crate::Bus;

impl Bus {
    /// Lets go of the bus once the work it is doing has finished, waiting up to `within`: until
    /// this is the last handle to it (every other clone dropped: a server's, a task's) and its
    /// outbox relay is between two batches. Then the bus is dropped, and with it the relay,
    /// which starts no new batch; close the database pool after this. Returns `true` if the
    /// bus was let go of that way, `false` if `within` ran out first (this handle is dropped
    /// anyway; a relay still in a batch leaves the rest of it to the next start, as after a
    /// crash: delivery is at least once).
    ///
    /// A service's shutdown: stop accepting requests, let the in-flight ones finish, then
    /// `bus.close(grace_left).await`, then close the pool.
    pub async fn close(self, within: Duration) -> bool {
        // A handler's handle (weak) never kept the bus alive: nothing to wait for.
        let BusRef::Strong(mut inner) = self.inner else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Atomic: once it succeeds, no other handle exists and the relay's weak handle can
            // no longer be upgraded, so no batch starts after this.
            match Arc::try_unwrap(inner) {
                Ok(last) => {
                    drop(last);
                    return true;
                }
                Err(shared) if tokio::time::Instant::now() >= deadline => {
                    drop(shared);
                    return false;
                }
                Err(shared) => {
                    inner = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_waits_for_the_other_handles() {
        let bus = Bus::builder().discover(false).build().unwrap();
        let other = bus.clone();
        assert!(
            !bus.close(Duration::from_millis(30)).await,
            "a clone was alive"
        );

        let bus = other.clone();
        let dropped_later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(other);
        });
        assert!(bus.close(Duration::from_secs(10)).await);
        dropped_later.await.unwrap();
    }
}
