//! Starting and stopping the service: bind the HTTP and gRPC ports first (so liveness answers
//! during warm-up), load and warm the models, then report ready; on shutdown stop accepting on
//! both ports and finish queued work.
//!
//! The verdict store opens (and migrates) before the ports are bound, so a store that cannot be
//! reached is a startup error, not a stream of 503s; its retention sweep, gauges and the MQTT
//! publisher run beside the server until it has drained. `--store none` opens the in-memory
//! store, so every path below is the same with or without a database.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::api::grpc_metrics::GrpcMetricsLayer;
use crate::api::http::router;
use crate::api::state::AppState;
use crate::api::{grpc_server, request_id};
use crate::config::ServeArgs;
use crate::inspector::{Inspector, Readiness};
use crate::metrics::Metrics;
use crate::model::registry::ModelRepository;
use crate::model::runtime::Runtime;
use crate::publish::mqtt;
use crate::store::upkeep::{OutboxConsumer, Upkeep};
use crate::verdicts::Verdicts;

/// A running server; tests start one in-process on an ephemeral port.
pub struct Server {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Where the gRPC APIs listen.
    pub grpc_addr: SocketAddr,
    /// Readiness, shared with the probes.
    pub readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Loads ONNX Runtime, binds the HTTP and gRPC ports and starts loading models in the
    /// background.
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
        let shutdown = CancellationToken::new();
        let background = CancellationToken::new();
        let location = args.store.location(&args.data_dir)?;
        let mqtt_config = args.store.mqtt()?;
        let store = crate::store::open(&location)
            .await
            .context("cannot open the verdict store")?;
        if location.is_durable() {
            tracing::info!(store = %location, "verdict store open");
        } else {
            tracing::warn!(
                store = %location,
                "no database (--store none): verdicts are kept in memory only, lost at exit"
            );
        }
        let mqtt_ledger = match (mqtt_config, &store.consumers) {
            (Some(config), Some(ledger)) => {
                tracing::info!(broker = %format!("{}:{}", config.host, config.port), "publishing verdicts over MQTT");
                let publisher = mqtt::Publisher {
                    store: Arc::clone(&store.verdicts),
                    ledger: Arc::clone(ledger),
                    metrics: Arc::clone(&metrics),
                };
                mqtt::spawn(publisher, config, background.clone());
                Some(OutboxConsumer {
                    ledger: Arc::clone(ledger),
                    name: mqtt::CONSUMER,
                })
            }
            (Some(_), None) => anyhow::bail!(
                "--mqtt publishes from a durable verdict store; it cannot run with --store none"
            ),
            (None, _) => None,
        };
        let upkeep = Upkeep {
            store: store.clone(),
            policy: args.store.retention(),
            prune_every: args.store.retention_interval,
            metrics: Arc::clone(&metrics),
            mqtt: mqtt_ledger,
        };
        tokio::spawn(upkeep.run(background.clone()));
        let inspector = Arc::new(Inspector::new(
            Arc::clone(&readiness),
            args.limits.limits(),
            threads,
            Arc::clone(&metrics),
            Arc::clone(&store.verdicts),
            args.store.image_retention(args.limits.max_image_bytes),
        ));
        let verdicts = Verdicts::new(Arc::clone(&store.verdicts), shutdown.clone());
        let grpc = grpc_server::services(
            Arc::clone(&inspector),
            verdicts.clone(),
            Arc::clone(&metrics),
            args.limits.max_body_bytes,
            shutdown.clone(),
        )
        .await?;
        let state = AppState {
            inspector: Arc::clone(&inspector),
            verdicts,
            metrics: Arc::clone(&metrics),
            max_body_bytes: args.limits.max_body_bytes,
        };
        let http_listener = bind(
            SocketAddr::new(args.http_host, args.http_port),
            "HTTP (--http-port / KENSA_HTTP_PORT)",
        )
        .await?;
        let http_addr = http_listener.local_addr()?;
        tracing::info!(%http_addr, "HTTP API listening");
        let grpc_listener = bind(
            SocketAddr::new(args.grpc_host, args.grpc_port),
            "gRPC (--grpc-port / KENSA_GRPC_PORT)",
        )
        .await?;
        let grpc_addr = grpc_listener.local_addr()?;
        tracing::info!(%grpc_addr, "gRPC API listening");

        let grpc_layer = GrpcMetricsLayer::new(Arc::clone(&metrics));
        let load = load_models(args, runtime, Arc::clone(&readiness), metrics);
        let task = tokio::spawn(serve(
            Listeners {
                http: http_listener,
                grpc: grpc_listener,
            },
            router(state),
            grpc,
            grpc_layer,
            load,
            Arc::clone(&readiness),
            shutdown.clone(),
        ));
        let task = tokio::spawn(async move {
            let served = task.await.context("server task panicked")?;
            inspector.finish_background().await;
            background.cancel();
            served
        });
        Ok(Server {
            http_addr,
            grpc_addr,
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

/// Binds one port; `which` names the port and the flag that moves it, for the error a second
/// kensa on the same machine gets.
async fn bind(address: SocketAddr, which: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on {address} for {which}: another process may hold the port")
    })
}

/// The bound ports.
struct Listeners {
    http: TcpListener,
    grpc: TcpListener,
}

async fn serve(
    listeners: Listeners,
    app: axum::Router,
    grpc: grpc_server::GrpcServices,
    grpc_layer: GrpcMetricsLayer,
    load: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop = shutdown.clone();
    let http = axum::serve(listeners.http, app)
        .with_graceful_shutdown(async move { stop.cancelled().await });
    let stop = shutdown.clone();
    let grpc_layers = tower::ServiceBuilder::new()
        .layer(request_id::set_layer())
        .layer(TraceLayer::new_for_grpc().make_span_with(request_id::request_span))
        .layer(request_id::propagate_layer())
        .layer(grpc_layer);
    let grpc_server = tonic::transport::Server::builder()
        .layer(grpc_layers)
        .add_routes(grpc.routes)
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY small unary answers wait for delayed ACKs (about 40 ms).
            tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            async move { stop.cancelled().await },
        );
    let health = grpc.health;
    let lifecycle = async {
        let loaded = load.await;
        if loaded.is_err() {
            shutdown.cancel();
        } else if !shutdown.is_cancelled() {
            health.set_ready(true).await;
        }
        shutdown.cancelled().await;
        readiness.start_draining();
        health.set_ready(false).await;
        tracing::info!("draining: finishing accepted requests");
        loaded
    };
    let (http_served, grpc_served, loaded) =
        tokio::join!(http.into_future(), grpc_server, lifecycle);
    loaded?;
    http_served.context("HTTP server failed")?;
    grpc_served.context("gRPC server failed")
}
