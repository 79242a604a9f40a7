//! Starting and stopping the service: bind first (so liveness answers during warm-up), load and
//! warm the models, then report ready; on shutdown stop accepting and finish queued work.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::http::{AppState, router};
use crate::config::ServeArgs;
use crate::inspector::{Inspector, Readiness};
use crate::metrics::Metrics;
use crate::model::registry::ModelRepository;
use crate::model::runtime::Runtime;

/// A running server; tests start one in-process on an ephemeral port.
pub struct Server {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Readiness, shared with the probes.
    pub readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Loads ONNX Runtime, binds the HTTP port and starts loading models in the background.
    ///
    /// Fails at once when the runtime library is missing or the port is taken; a model that
    /// fails to load ends the server with that error (see [`Server::wait`]).
    pub async fn start(args: ServeArgs) -> anyhow::Result<Server> {
        let runtime = Runtime::init(&args.runtime_options())?;
        let metrics = Arc::new(Metrics::new());
        let readiness = Arc::new(Readiness::default());
        let threads = args
            .preprocess_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let inspector = Arc::new(Inspector::new(
            Arc::clone(&readiness),
            args.limits.limits(),
            threads,
            Arc::clone(&metrics),
        ));
        let state = AppState {
            inspector,
            metrics: Arc::clone(&metrics),
            max_body_bytes: args.limits.max_body_bytes,
        };
        let address = SocketAddr::new(args.http_host, args.http_port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let http_addr = listener.local_addr()?;
        tracing::info!(%http_addr, "HTTP API listening");

        let shutdown = CancellationToken::new();
        let load = load_models(args, runtime, Arc::clone(&readiness), metrics);
        let task = tokio::spawn(serve(
            listener,
            router(state),
            load,
            Arc::clone(&readiness),
            shutdown.clone(),
        ));
        Ok(Server {
            http_addr,
            readiness,
            shutdown,
            task,
        })
    }

    /// Asks the server to stop: readiness goes false, no new connections are accepted, and
    /// requests already accepted are answered.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A handle that stops the server, for use while [`Server::wait`] holds the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Waits until the server has stopped; an error if models failed to load.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }
}

/// Stops a [`Server`] from elsewhere (a signal handler).
#[derive(Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Same as [`Server::shutdown`].
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

async fn load_models(
    args: ServeArgs,
    runtime: &'static Runtime,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let repository = ModelRepository::load(
        &args.model.model_repository,
        runtime,
        &args.model.load_options(),
        &metrics,
    )
    .await?;
    readiness.set_models(repository);
    metrics.ready.set(1);
    tracing::info!("ready");
    Ok(())
}

async fn serve(
    listener: TcpListener,
    app: axum::Router,
    load: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop = shutdown.clone();
    let drained = Arc::clone(&readiness);
    let http = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.cancelled().await;
        drained.start_draining();
        tracing::info!("draining: finishing accepted requests");
    });
    let loader = async {
        if let Err(error) = load.await {
            shutdown.cancel();
            return Err(error);
        }
        Ok(())
    };
    let (served, loaded) = tokio::join!(http.into_future(), loader);
    loaded?;
    served.context("HTTP server failed")
}
