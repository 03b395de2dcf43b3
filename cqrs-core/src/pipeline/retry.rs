//! Layer 8: running the inner layers again when they fail with a transient status.
//!
//! Each attempt runs everything inside this layer again: a fresh context, a fresh transaction,
//! a fresh load of any aggregate. The delay before attempt `n + 1` is
//! `delay * backoff^(n - 1)`, capped at `max_delay`, with `jitter` of it randomised.

use std::fmt;
use std::time::Duration;

use crate::{Error, Status};

/// The configuration of `#[retry(..)]`.
///
/// ```
/// use std::time::Duration;
/// use cqrs_core::{RetryLayer, Status};
///
/// let retry = RetryLayer::new(3)
///     .delay(Duration::from_millis(50))
///     .backoff(2.0)
///     .on(&[Status::Conflict]);
/// assert_eq!(retry.delay_before(2), Duration::from_millis(50));
/// assert_eq!(retry.delay_before(3), Duration::from_millis(100));
/// assert!(retry.retries(Status::Conflict));
/// assert!(!retry.retries(Status::Unavailable));
/// ```
#[derive(Clone, Copy, PartialEq)]
pub struct RetryLayer {
    max_attempts: u32,
    delay: Duration,
    backoff: f64,
    max_delay: Option<Duration>,
    jitter: f64,
    on: &'static [Status],
}

impl RetryLayer {
    /// The statuses retried when `on` is not given.
    pub const DEFAULT_ON: &'static [Status] = &[Status::Unavailable, Status::Conflict];

    /// The most attempts, the first included, when `max_attempts` is not given.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

    /// The random fraction of each delay, when `jitter` is not given (and what `jitter = true`
    /// stands for): half of each pause is random, so that callers that failed together do not
    /// retry together and clash again (`jitter = false` for exact pauses).
    pub const DEFAULT_JITTER: f64 = 0.5;

    /// The pause before the second attempt, when `delay` is not given.
    pub const DEFAULT_DELAY: Duration = Duration::from_millis(10);

    /// The factor each pause grows by, when `backoff` is not given.
    pub const DEFAULT_BACKOFF: f64 = 2.0;

    /// The longest pause, when `max_delay` is not given.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(1);

    /// `#[retry]` with no options: [`RetryLayer::DEFAULT_MAX_ATTEMPTS`] attempts, on
    /// [`RetryLayer::DEFAULT_ON`], with jittered exponential backoff (10 ms, then 20 ms, 40 ms,
    /// .. up to 1 s, half of each pause random).
    pub const DEFAULT: RetryLayer = RetryLayer::new(Self::DEFAULT_MAX_ATTEMPTS);

    /// Up to `max_attempts` attempts in all (at least 1), on the default statuses, with the
    /// default jittered exponential backoff.
    pub const fn new(max_attempts: u32) -> Self {
        RetryLayer {
            max_attempts: if max_attempts == 0 { 1 } else { max_attempts },
            delay: Self::DEFAULT_DELAY,
            backoff: Self::DEFAULT_BACKOFF,
            max_delay: Some(Self::DEFAULT_MAX_DELAY),
            jitter: Self::DEFAULT_JITTER,
            on: Self::DEFAULT_ON,
        }
    }

    /// The delay before the second attempt.
    pub const fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The factor the delay grows by after each attempt (at least 1.0).
    pub const fn backoff(mut self, factor: f64) -> Self {
        self.backoff = if factor < 1.0 { 1.0 } else { factor };
        self
    }

    /// The longest delay.
    pub const fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = Some(max);
        self
    }

    /// The fraction of each delay that is random (0.0 to 1.0; `true` in the attribute is
    /// [`RetryLayer::DEFAULT_JITTER`]).
    pub const fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction < 0.0 {
            0.0
        } else if fraction > 1.0 {
            1.0
        } else {
            fraction
        };
        self
    }

    /// The statuses that are retried.
    pub const fn on(mut self, statuses: &'static [Status]) -> Self {
        self.on = statuses;
        self
    }

    /// The most attempts, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether an error of this status is retried.
    pub fn retries(&self, status: Status) -> bool {
        self.on.contains(&status)
    }

    /// The delay before attempt `attempt` (2 for the first retry), without jitter.
    pub fn delay_before(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(2).min(64) as i32;
        let raw = self.delay.as_secs_f64() * self.backoff.powi(exponent);
        let capped = match self.max_delay {
            Some(max) => raw.min(max.as_secs_f64()),
            None => raw,
        };
        Duration::try_from_secs_f64(capped).unwrap_or(Duration::MAX)
    }

    fn jittered(&self, delay: Duration) -> Duration {
        if self.jitter == 0.0 || delay.is_zero() {
            return delay;
        }
        let random_part = delay.mul_f64(self.jitter);
        delay - random_part + random_part.mul_f64(fastrand::f64())
    }

    /// After attempt number `attempt` failed with `error`: the pause before the next attempt, or
    /// `None` when the error is not retried or the attempts are used up.
    pub fn next_delay(&self, attempt: u32, error: &Error) -> Option<Duration> {
        if attempt >= self.max_attempts || !self.retries(error.status()) {
            return None;
        }
        let delay = self.jittered(self.delay_before(attempt + 1));
        tracing::debug!(
            target: "cqrs",
            attempt,
            status = %error.status(),
            delay_ms = delay.as_millis() as u64,
            "retrying after: {error}"
        );
        Some(delay)
    }
}

/// Waits before the next attempt.
pub(crate) async fn pause(delay: Duration) {
    if !delay.is_zero() {
        // Boxed: only a failed attempt sleeps, and the timer (112 bytes) must not grow the
        // future of every dispatch.
        Box::pin(tokio::time::sleep(delay)).await;
    }
}

/// Layer 8's loop, as each pipeline runs it: the counting, the last-attempt decision, the
/// pause and the give-up are here once; the pipelines only say what one attempt is.
///
/// ```text
/// let mut tries = Attempts::new(retry, &mut stats.attempts);
/// loop {
///     let last = tries.start();
///     match attempt(last).await {
///         Ok(value) => return Ok(value),
///         Err(error) => tries.failed(error, last).await?,
///     }
/// }
/// ```
///
/// Not a function taking the attempt as an async closure: the attempts borrow the dispatch's
/// context mutably, and such a closure's future is not provably `Send` for every borrow
/// (rustc's higher-ranked `Send` limitation), which every dispatch future must be.
pub(crate) struct Attempts<'a> {
    retry: Option<&'a RetryLayer>,
    count: &'a mut u32,
}

impl<'a> Attempts<'a> {
    /// Counting into `count`; without `#[retry]`, one attempt.
    pub(crate) fn new(retry: Option<&'a RetryLayer>, count: &'a mut u32) -> Self {
        Attempts { retry, count }
    }

    /// Starts an attempt; returns whether it is the last one.
    #[inline]
    pub(crate) fn start(&mut self) -> bool {
        *self.count += 1;
        self.retry.is_none_or(|r| *self.count >= r.max_attempts())
    }

    /// After a failed attempt: pauses and returns `Ok` to try again, or gives the error back
    /// (not retried, or the attempts are used up).
    pub(crate) async fn failed(&mut self, error: Error, last: bool) -> Result<(), Error> {
        match self.retry.and_then(|r| r.next_delay(*self.count, &error)) {
            Some(delay) if !last => {
                pause(delay).await;
                Ok(())
            }
            _ => Err(error),
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::DEFAULT
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry(max_attempts={}", self.max_attempts)?;
        if !self.delay.is_zero() {
            write!(f, ", delay={}", super::describe::duration(self.delay))?;
        }
        if self.backoff != 1.0 {
            write!(f, ", backoff={}", self.backoff)?;
        }
        if let Some(max) = self.max_delay {
            write!(f, ", max_delay={}", super::describe::duration(max))?;
        }
        if self.jitter != 0.0 {
            write!(f, ", jitter={}", self.jitter)?;
        }
        let on: Vec<_> = self.on.iter().map(|s| format!("{s:?}")).collect();
        write!(f, ", on={})", super::describe::list(&on))
    }
}

impl fmt::Display for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_only_listed_statuses_within_the_limit() {
        let policy = RetryLayer::new(3)
            .delay(Duration::from_millis(10))
            .backoff(2.0)
            .jitter(0.0);
        let down = Error::unavailable("down");
        assert_eq!(policy.next_delay(1, &down), Some(Duration::from_millis(10)));
        assert_eq!(policy.next_delay(2, &down), Some(Duration::from_millis(20)));
        assert_eq!(policy.next_delay(3, &down), None, "three attempts in all");
        assert_eq!(policy.next_delay(1, &Error::not_found("x")), None);
        let conflicts_only = policy.on(&[Status::Conflict]);
        assert_eq!(conflicts_only.next_delay(1, &down), None);
        assert!(
            conflicts_only
                .next_delay(1, &Error::conflict("v"))
                .is_some()
        );
    }

    #[test]
    fn the_default_is_jittered_exponential_backoff() {
        let d = RetryLayer::DEFAULT;
        assert_eq!(d.max_attempts(), 3);
        assert_eq!(d.delay_before(2), Duration::from_millis(10));
        assert_eq!(d.delay_before(3), Duration::from_millis(20));
        assert_eq!(RetryLayer::new(20).delay_before(20), Duration::from_secs(1));
        for _ in 0..100 {
            let pause = d.next_delay(1, &Error::unavailable("down")).unwrap();
            assert!(pause >= Duration::from_millis(5) && pause <= Duration::from_millis(10));
        }
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryLayer::new(10)
            .delay(Duration::from_millis(100))
            .backoff(3.0)
            .max_delay(Duration::from_secs(1));
        assert_eq!(p.delay_before(2), Duration::from_millis(100));
        assert_eq!(p.delay_before(3), Duration::from_millis(300));
        assert_eq!(p.delay_before(4), Duration::from_millis(900));
        assert_eq!(p.delay_before(5), Duration::from_secs(1));
        let j = p.jitter(0.5);
        for _ in 0..100 {
            let d = j.jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }
}
