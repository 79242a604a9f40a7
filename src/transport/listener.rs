//! Accepting connections: at most `max_connections` at once per port (one more is closed at
//! once and counted, and accepting goes on, so a flood of idle sockets cannot make `accept`
//! fail), each with `handshake_timeout` to finish TLS or, in plain text, to send its first
//! bytes. Handshakes run beside the accept loop, so a slow one delays nobody else.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::connection::{Connection, Stream};
use super::tls::{ReloadableTls, subject};
use crate::access::Peer;
use crate::metrics::{Metrics, PortLabels};

/// The HTTP/2 connection preface: a client that starts it must finish it in the handshake time
/// (past it, hyper waits for the rest without a timeout of its own).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Pause between looks at a connection's first bytes.
const PEEK_AGAIN: Duration = Duration::from_millis(10);

/// Pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How one port takes connections.
#[derive(Clone)]
pub struct ListenerConfig {
    /// `http` or `grpc`, for metrics and logs.
    pub port: &'static str,
    /// Connections open at once.
    pub max_connections: usize,
    /// Time for a TLS handshake or, without TLS, for the first bytes.
    pub handshake_timeout: Duration,
    /// TLS, when on.
    pub tls: Option<Arc<ReloadableTls>>,
}

/// Accepts until `shutdown`, handing over handshaken connections; the receiver ends once the
/// listener is closed and every handshake in progress is done.
pub fn incoming(
    listener: TcpListener,
    config: ListenerConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Connection> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, config, metrics, sender, shutdown));
    receiver
}

async fn accept_loop(
    listener: TcpListener,
    config: ListenerConfig,
    metrics: Arc<Metrics>,
    sender: mpsc::Sender<Connection>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let labels = PortLabels {
        port: config.port.to_string(),
    };
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, address) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(port = config.port, %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.connections_refused.get_or_create(&labels).inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = metrics.connections_open.get_or_create(&labels).clone();
        let (config, sender) = (config.clone(), sender.clone());
        tokio::spawn(async move {
            let peer = Peer {
                address,
                subject: None,
            };
            let handshake =
                tokio::time::timeout(config.handshake_timeout, establish(stream, peer, &config));
            let Ok(Some((stream, peer))) = handshake.await else {
                return;
            };
            open.inc();
            let connection = Connection::new(stream, peer, slot, open);
            let _ = sender.send(connection).await;
        });
    }
}

/// Waits until a plain-text client has sent an HTTP/1 request's first bytes or the whole
/// HTTP/2 preface; None when it closed first.
async fn first_bytes(stream: &TcpStream) -> Option<()> {
    let mut buffer = [0u8; H2_PREFACE.len()];
    loop {
        let read = stream.peek(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        if read == H2_PREFACE.len() || buffer[..read] != H2_PREFACE[..read] {
            return Some(());
        }
        tokio::time::sleep(PEEK_AGAIN).await;
    }
}

/// The TLS handshake, or in plain text the wait for the first bytes; None when it failed.
async fn establish(
    stream: TcpStream,
    mut peer: Peer,
    config: &ListenerConfig,
) -> Option<(Stream, Peer)> {
    let Some(tls) = &config.tls else {
        first_bytes(&stream).await?;
        return Some((Stream::Plain(stream), peer));
    };
    match tls.acceptor().accept(stream).await {
        Ok(stream) => {
            peer.subject = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(subject);
            Some((Stream::Tls(Box::new(stream)), peer))
        }
        Err(error) => {
            tracing::debug!(port = config.port, address = %peer.address, %error, "TLS handshake failed");
            None
        }
    }
}
