//! A TCP proxy that a test can cut and restore on the same port: an outage of the broker or
//! the database as the service sees it, without touching the real server.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A proxy to `target`, passing bytes both ways.
pub struct Proxy {
    /// The loopback port clients connect to.
    pub port: u16,
    target: SocketAddr,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Listens on a free loopback port.
    pub async fn start(target: SocketAddr) -> Proxy {
        Proxy::listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), target)
    }

    fn listen(listener: TcpListener, target: SocketAddr) -> Proxy {
        let port = listener.local_addr().unwrap().port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            port,
            target,
            tasks,
        }
    }

    /// Closes the listener and every connection through it.
    pub async fn cut(mut self) -> CutProxy {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        CutProxy {
            port: self.port,
            target: self.target,
        }
    }
}

/// A proxy while the target is unreachable through it.
pub struct CutProxy {
    port: u16,
    target: SocketAddr,
}

impl CutProxy {
    /// Listens again on the same port.
    pub async fn restore(self) -> Proxy {
        Proxy::listen(
            TcpListener::bind(("127.0.0.1", self.port))
                .await
                .expect("the proxy port is free again"),
            self.target,
        )
    }
}
