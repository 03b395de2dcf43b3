//! The status of a foreign error, read along its source chain: what every backend shares (I/O,
//! tokio's timeout, an `Error` wrapped as a std error), then what each backend registered.

use std::error::Error as StdError;

use super::{Status, StdErrorAdapter};

/// Picks the status of a foreign error: the first recognised error along its source chain.
pub(super) fn classify(error: &(dyn StdError + 'static)) -> Status {
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(status) = classify_one(e) {
            return status;
        }
        next = e.source();
    }
    Status::Internal
}

fn classify_one(e: &(dyn StdError + 'static)) -> Option<Status> {
    if let Some(adapter) = e.downcast_ref::<StdErrorAdapter>() {
        return Some(adapter.0.status());
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        return match io.kind() {
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
            | AddrNotAvailable | TimedOut | Interrupted | WouldBlock | UnexpectedEof
            | HostUnreachable | NetworkUnreachable | NetworkDown => Some(Status::Unavailable),
            // A missing file is the server's problem, not a missing resource the caller asked
            // for: it stays `Internal` (and its detail out of HTTP responses).
            _ => None,
        };
    }
    if e.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
        return Some(Status::Timeout);
    }
    inventory::iter::<ErrorClassifier>
        .into_iter()
        .find_map(|classifier| (classifier.0)(e))
}

/// A backend's reading of its own errors (a database's connection failures are `Unavailable`,
/// its unique violations `Conflict`, ..), registered with `inventory::submit!` beside the
/// backend, so that this model knows no backend. Asked for each error along a foreign error's
/// source chain, after the errors every backend shares (I/O, tokio's timeout).
pub(crate) struct ErrorClassifier(pub(crate) fn(&(dyn StdError + 'static)) -> Option<Status>);

inventory::collect!(ErrorClassifier);
