//! Layer 3: the overall deadline, covering every retry.
//!
//! The deadline is the sooner of the handler's timeout (`#[command_handler(C, timeout = "15s")]`
//! or `#[timeout("2s")]`) and the envelope's deadline. When it passes, the future running the
//! inner layers is dropped (so is a transaction it had open, which rolls back) and the caller
//! gets `Error::Timeout`.

use std::future::Future;

use futures_util::FutureExt;
use futures_util::future::Either;
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;
use crate::envelope::Metadata;

/// Why a dispatch has a deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DeadlineCause {
    Handler(Duration),
    Caller,
}

/// The deadline of one dispatch, if it has one.
///
/// On tokio's clock, as `tokio::time::timeout` would be: under a paused clock
/// (`#[tokio::test(start_paused = true)]`) a handler's timeout then counts from the paused
/// "now", not from the wall clock that the paused one has already run ahead of.
pub(crate) fn deadline(
    timeout: Option<Duration>,
    metadata: &Metadata,
) -> Option<(Instant, DeadlineCause)> {
    match (timeout, metadata.deadline().map(Instant::from_std)) {
        (None, None) => None,
        (Some(t), None) => Some((Instant::now() + t, DeadlineCause::Handler(t))),
        (None, Some(d)) => Some((d, DeadlineCause::Caller)),
        (Some(t), Some(d)) => {
            let own = Instant::now() + t;
            if own <= d {
                Some((own, DeadlineCause::Handler(t)))
            } else {
                Some((d, DeadlineCause::Caller))
            }
        }
    }
}

/// Runs `inner` until the deadline, if any; without one, it is awaited as is (no timer).
/// Runs `inner` until `deadline`, or to completion when there is none.
///
/// A plain function over combinators rather than an `async fn`, which would store `inner` twice
/// in its state (once as its argument, once inside the timeout it awaits).
pub(crate) fn run<T, F>(
    deadline: Option<(Instant, DeadlineCause)>,
    message: &'static str,
    inner: F,
) -> impl Future<Output = Result<T, Error>> + use<T, F>
where
    F: Future<Output = Result<T, Error>>,
{
    let Some((at, cause)) = deadline else {
        return Either::Left(inner);
    };
    Either::Right(
        tokio::time::timeout_at(at, inner).map(move |result| match result {
            Ok(result) => result,
            Err(_) => Err(Error::timeout(match cause {
                DeadlineCause::Handler(t) => format!(
                    "`{message}` did not finish within its timeout of {}",
                    super::describe::duration(t)
                ),
                DeadlineCause::Caller => {
                    format!("`{message}` did not finish before the caller's deadline")
                }
            })),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    #[tokio::test(start_paused = true)]
    async fn timeout_drops_the_inner_future() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        /// Counts its drops.
        struct Guard(std::sync::Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = std::sync::Arc::new(AtomicUsize::new(0));
        let finished = std::sync::Arc::new(AtomicBool::new(false));
        let (guard, done) = (Guard(dropped.clone()), finished.clone());
        let d = deadline(Some(Duration::from_millis(50)), &Metadata::new());
        let timed = run(d, "Slow", async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(10)).await;
            done.store(true, Ordering::SeqCst);
            Ok(())
        });
        let err = timed.await.unwrap_err();
        assert_eq!(err.status(), Status::Timeout);
        assert!(err.to_string().contains("50ms"), "{err}");
        // The handler's future, and what it holds, is dropped with the answer: it does not
        // run on in the background once its time would be up.
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(20)).await;
        tokio::task::yield_now().await;
        assert!(!finished.load(Ordering::SeqCst));
    }

    #[test]
    fn caller_deadline_wins_when_sooner() {
        let mut m = Metadata::new();
        m.set_deadline(std::time::Instant::now() + Duration::from_millis(10));
        let (_, cause) = deadline(Some(Duration::from_secs(5)), &m).unwrap();
        assert!(matches!(cause, DeadlineCause::Caller));
        assert!(deadline(None, &Metadata::new()).is_none());
    }
}
