//! The synchronization primitives of the concurrency cores, so that loom can check them.
//!
//! Two pieces of the crate decide, under contention, who does the work: the single-flight cache
//! (`pipeline/cache/layer.rs`: concurrent misses for one key run the handler once; an epoch per
//! query keeps an answer computed before an invalidation out of the cache) and the in-memory
//! idempotency store (`pipeline/idempotency.rs`: concurrent sends with one key run the command
//! once). They take their primitives from here: std's and tokio's in a normal build, loom's
//! in this crate's own unit tests built with `--cfg loom`, where the models beside that code
//! (`cache/loom_model.rs`, `idempotency/loom_model.rs`) run the real layers under every
//! interleaving loom reaches. The switch is `all(loom, test)`, not `loom` alone: an application
//! that runs loom over its own code with `--cfg loom` still gets a cqrs that works outside a loom
//! model. In a normal build every item here is a re-export or an inlined one-line wrapper: the
//! code the bus runs is what it was before this module.
//!
//! What loom sees and what it does not:
//! - [`Mutex`] and [`AtomicU64`] are loom's own under `--cfg loom`: every lock and every epoch
//!   read or bump is a point where loom switches threads.
//! - [`once_channel`] is how a single-flight leader hands its answer to the callers waiting for
//!   it. In a normal build it is a tokio `watch` channel (a waiter awaits it); under loom, where
//!   there is no tokio, it is a loom `Mutex` and `Condvar` with the same contract (the value once
//!   published stays readable; a publisher dropped without publishing wakes every waiter with
//!   `None`). So the models check that the layer's protocol (join or lead under the in-flight
//!   lock, removal of the entry, taking over from a dropped leader) loses no wake-up *given*
//!   that contract; that tokio's `watch` keeps it is tokio's own (loom-checked) business. A
//!   waiter cancelled while it waits is not modelled (a loom waiter blocks its thread).
//! - [`sleep`] is the idempotency layer's pause before it asks again for a key that another
//!   send holds: a tokio timer in a normal build, `loom::thread::yield_now` under loom (loom's
//!   model of a wait for another thread's progress; it does not model time).
//! - `Arc` stays std's: its count is not part of any protocol checked here, and loom's `Arc`
//!   cannot hold the `dyn` values (answers, regions, stores) the layers share.

#[cfg(all(loom, test))]
pub(crate) use loom::sync::Mutex;
#[cfg(all(loom, test))]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(not(all(loom, test)))]
pub(crate) use std::sync::Mutex;
#[cfg(not(all(loom, test)))]
pub(crate) use std::sync::atomic::AtomicU64;

pub(crate) use self::imp::{Subscriber, once_channel, sleep};

#[cfg(not(all(loom, test)))]
mod imp {
    use std::time::Duration;

    use tokio::sync::watch;

    /// The sending half of a [`once_channel`]: publishes one value; dropping it without
    /// publishing tells every [`Subscriber`] that none will come.
    pub(crate) struct Publisher<T>(watch::Sender<Option<T>>);

    /// The receiving half of a [`once_channel`]: clone it for each waiter.
    #[derive(Clone)]
    pub(crate) struct Subscriber<T>(watch::Receiver<Option<T>>);

    /// A channel that carries at most one value to any number of waiters, and tells them when
    /// its publisher is gone without one.
    #[inline]
    pub(crate) fn once_channel<T>() -> (Publisher<T>, Subscriber<T>) {
        let (sender, receiver) = watch::channel(None);
        (Publisher(sender), Subscriber(receiver))
    }

    impl<T> Publisher<T> {
        /// Hands `value` to every present and future subscriber.
        #[inline]
        pub(crate) fn publish(&self, value: T) {
            self.0.send_replace(Some(value));
        }
    }

    impl<T: Clone> Subscriber<T> {
        /// The published value, once there is one; `None` when the publisher was dropped
        /// without publishing.
        pub(crate) async fn wait(&mut self) -> Option<T> {
            loop {
                if let Some(value) = self.0.borrow_and_update().clone() {
                    return Some(value);
                }
                if self.0.changed().await.is_err() {
                    // Published just before the publisher was dropped?
                    return self.0.borrow().clone();
                }
            }
        }
    }

    /// Waits `duration` before asking again.
    #[inline]
    pub(crate) fn sleep(duration: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(duration)
    }
}

#[cfg(all(loom, test))]
mod imp {
    use std::sync::Arc;
    use std::time::Duration;

    use loom::sync::{Condvar, Mutex};

    struct Shared<T> {
        /// The value, and whether the publisher is gone.
        state: Mutex<(Option<T>, bool)>,
        changed: Condvar,
    }

    /// The loom build of the [`once_channel`] publisher (see the module's documentation).
    pub(crate) struct Publisher<T>(Arc<Shared<T>>);

    /// The loom build of the [`once_channel`] subscriber.
    pub(crate) struct Subscriber<T>(Arc<Shared<T>>);

    impl<T> Clone for Subscriber<T> {
        fn clone(&self) -> Self {
            Subscriber(self.0.clone())
        }
    }

    /// The loom build of the channel that carries one value to any number of waiters.
    pub(crate) fn once_channel<T>() -> (Publisher<T>, Subscriber<T>) {
        let shared = Arc::new(Shared {
            state: Mutex::new((None, false)),
            changed: Condvar::new(),
        });
        (Publisher(shared.clone()), Subscriber(shared))
    }

    impl<T> Publisher<T> {
        pub(crate) fn publish(&self, value: T) {
            self.0.state.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(value);
            self.0.changed.notify_all();
        }
    }

    impl<T> Drop for Publisher<T> {
        fn drop(&mut self) {
            self.0.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
            self.0.changed.notify_all();
        }
    }

    impl<T: Clone> Subscriber<T> {
        /// Blocks the loom thread until a value is published or the publisher is dropped.
        pub(crate) async fn wait(&mut self) -> Option<T> {
            let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(value) = &state.0 {
                    return Some(value.clone());
                }
                if state.1 {
                    return None;
                }
                state = self
                    .0
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Lets the other loom threads run before asking again.
    pub(crate) async fn sleep(_duration: Duration) {
        loom::thread::yield_now();
    }
}
