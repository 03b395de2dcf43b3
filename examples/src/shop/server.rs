//! Serving the router: HTTP/1.1 with a header read timeout and a bounded graceful shutdown.
//!
//! `axum::serve` has neither knob: a client that never finishes its request head (or an idle
//! keep-alive connection) holds its connection for ever, and its graceful shutdown waits for
//! every connection without a limit. So the shop serves its router with hyper's own
//! connection builder (`hyper::server::conn::http1`, the one `axum::serve` uses underneath),
//! a tokio timer for `header_read_timeout`, and `hyper_util`'s `GracefulShutdown` to drain:
//!
//! - a connection gets `header_read_timeout` to send each request head, the first and every
//!   one after a response on a kept-alive connection (so an idle one is closed after it too);
//! - when `shutdown` completes, the listener is closed (new connections are refused), idle
//!   connections are closed, in-flight requests finish and get `Connection: close`;
//! - whatever is still open `grace` later is dropped.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How [`serve_router`] treats connections and stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long in-flight requests may take to finish once shutdown starts (10 s by default).
    pub grace: Duration,
    /// How long a client has to send a request head, and how long an idle keep-alive connection
    /// stays open (10 s by default).
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            grace: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains (see the module).
/// Returns once every connection is closed, `options.grace` after `shutdown` at the latest.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: wait a little, as hyper's and
                        // axum's accept loops do, rather than spin.
                        tracing::warn!(target: "shop", %error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(options.header_read_timeout)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(target: "shop", %error, "connection ended with an error");
                    }
                });
            }
            // Reap finished connections as they go.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.try_join_next().is_some() {}
    let open = connections.len();
    tracing::info!(target: "shop", open_connections = open, grace = ?options.grace, "shutting down: no new connections, in-flight requests finish");
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        while connections.try_join_next().is_some() {}
        tracing::warn!(target: "shop", still_open = connections.len(), grace = ?options.grace, "connections still open after the grace period: closed");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}
