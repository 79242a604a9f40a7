//! Serving the HTTP port over [`super::listener`]'s connections with hyper: HTTP/1.1 and
//! HTTP/2 (with TLS, by ALPN), a header read timeout that also closes idle keep-alive
//! connections, HTTP/2 stream and keep-alive limits, and a graceful drain.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::Service as _;

use super::connection::Connection;

/// Limits of one HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to send a request's headers, and the longest an HTTP/1.1 connection may sit idle
    /// between requests.
    pub header_read_timeout: Duration,
    /// HTTP/2: streams at once per connection.
    pub max_streams: u32,
    /// HTTP/2: ping interval; a peer that does not answer within the same time is dropped.
    pub keep_alive: Duration,
}

/// Serves `app` on every connection until `shutdown`, then lets requests in progress finish.
pub async fn serve(
    mut incoming: mpsc::Receiver<Connection>,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .keep_alive_interval(limits.keep_alive)
        .keep_alive_timeout(limits.keep_alive);
    let graceful = GracefulShutdown::new();
    loop {
        let connection = tokio::select! {
            () = shutdown.cancelled() => break,
            connection = incoming.recv() => match connection {
                Some(connection) => connection,
                None => break,
            },
        };
        let peer = connection.peer.clone();
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(peer.clone());
            let mut app = app.clone();
            async move {
                let response = app.call(request.map(Body::new)).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(connection), service)
            .into_owned();
        let served = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
}
