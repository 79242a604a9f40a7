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
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::access::Gate;
use crate::api::grpc_gate::GrpcGateLayer;
use crate::api::grpc_metrics::GrpcMetricsLayer;
use crate::api::http::router;
use crate::api::state::AppState;
use crate::api::{grpc_server, request_id};
use crate::config::ServeArgs;
use crate::edge::{EdgeArgs, PortTls};
use crate::inspector::{Inspector, Readiness};
use crate::metrics::Metrics;
use crate::model::lifecycle::ModelLifecycle;
use crate::model::runtime::Runtime;
use crate::publish::mqtt;
use crate::reviews::Reviews;
use crate::stations::Stations;
use crate::store::health::{self, StoreHealth};
use crate::store::timed::TimedStore;
use crate::store::upkeep::{OutboxConsumer, Upkeep};
use crate::transport::listener::{self, ListenerConfig};
use crate::verdicts::Verdicts;

/// A running server; tests start one in-process on an ephemeral port.
pub struct Server {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Where the gRPC APIs listen.
    pub grpc_addr: SocketAddr,
    /// Readiness, shared with the probes.
    pub readiness: Arc<Readiness>,
    reloader: Reloader,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Loads ONNX Runtime, binds the HTTP and gRPC ports and starts loading models in the
    /// background.
    ///
    /// Fails at once when the runtime library is missing, the port is taken, the access or TLS
    /// files are unusable, or authentication would be off on a non-loopback address; a model
    /// that fails to load ends the server with that error (see [`Server::wait`]).
    pub async fn start(args: ServeArgs) -> anyhow::Result<Server> {
        let runtime = Runtime::init(&args.runtime_options())?;
        match crate::transport::raise_open_file_limit() {
            Ok((before, after)) => tracing::info!(before, after, "open-file limit raised"),
            Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
        }
        let gate = Arc::new(args.edge.gate(&[args.http_host, args.grpc_host])?);
        let tls = args.edge.tls()?.map(Arc::new);
        let metrics = Arc::new(Metrics::new());
        let readiness = Arc::new(Readiness::default());
        let threads = args
            .preprocess_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let shutdown = CancellationToken::new();
        let background = CancellationToken::new();
        let location = args.store.location(&args.data_dir)?;
        let mqtt_config = args.store.mqtt(args.limits.max_note_chars)?;
        let mut store = crate::store::open(&location, &args.store.open_options()?)
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
        let store_health = Arc::new(StoreHealth::new(2 * args.store.store_timeout));
        store.verdicts = Arc::new(TimedStore::new(
            Arc::clone(&store.verdicts),
            args.store.store_timeout,
            Arc::clone(&store_health),
        ));
        tokio::spawn(health::probe(
            Arc::clone(&store.verdicts),
            Arc::clone(&store_health),
            background.clone(),
        ));
        let mqtt_ledger = match (mqtt_config, &store.consumers) {
            (Some(config), Some(ledger)) => {
                tracing::info!(broker = %format!("{}:{}", config.host, config.port), "publishing verdicts over MQTT");
                let publisher = mqtt::Publisher {
                    store: Arc::clone(&store.verdicts),
                    reviews: Arc::clone(&store.reviews),
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
        let models = Arc::new(ModelLifecycle::new(
            args.model.model_repository.clone(),
            runtime,
            args.model.load_options(),
            Arc::clone(&metrics),
            Arc::clone(&readiness),
        ));
        let inspector = Arc::new(Inspector::new(
            Arc::clone(&readiness),
            args.limits.limits(),
            threads,
            Arc::clone(&metrics),
            Arc::clone(&store.verdicts),
            args.store.image_retention(args.limits.max_image_bytes),
        ));
        let verdicts = Verdicts::new(Arc::clone(&store.verdicts), shutdown.clone());
        let reviews = Reviews::new(
            Arc::clone(&store.verdicts),
            Arc::clone(&store.reviews),
            Arc::clone(&metrics),
        );
        let state = AppState {
            inspector: Arc::clone(&inspector),
            verdicts,
            reviews,
            stations: Stations::new(Arc::clone(&store.verdicts), Arc::clone(&store.activity)),
            metrics: Arc::clone(&metrics),
            max_body_bytes: args.limits.max_body_bytes,
            body_timeout: args.edge.body_timeout,
            gate: Arc::clone(&gate),
            models: Arc::clone(&models),
        };
        let grpc = grpc_server::services(&state, shutdown.clone()).await?;
        let mut app = router(state);
        if let Some(cors) = args.edge.cors()? {
            app = app.layer(cors);
        }
        let http_listener = bind(
            SocketAddr::new(args.http_host, args.http_port),
            "HTTP (--http-port / KENSA_HTTP_PORT)",
        )
        .await?;
        let http_addr = http_listener.local_addr()?;
        tracing::info!(%http_addr, tls = tls.is_some(), "HTTP API listening");
        let grpc_listener = bind(
            SocketAddr::new(args.grpc_host, args.grpc_port),
            "gRPC (--grpc-port / KENSA_GRPC_PORT)",
        )
        .await?;
        let grpc_addr = grpc_listener.local_addr()?;
        tracing::info!(%grpc_addr, tls = tls.is_some(), "gRPC API listening");

        let ports = Ports {
            http: http_listener,
            grpc: grpc_listener,
            edge: args.edge.clone(),
            tls: tls.clone(),
            gate: Arc::clone(&gate),
        };
        let watched = Watched {
            readiness: Arc::clone(&readiness),
            store_health,
            metrics: Arc::clone(&metrics),
        };
        let load = load_models(
            Arc::clone(&models),
            args.model_poll_interval,
            metrics,
            background.clone(),
        );
        let task = tokio::spawn(serve(ports, app, grpc, load, watched, shutdown.clone()));
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
            reloader: Reloader { gate, tls, models },
            shutdown,
            task,
        })
    }

    /// What SIGHUP does: see [`Reloader::reload`].
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
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

/// Loads the models, says ready, and from then on polls the repository (unless `poll` is zero).
async fn load_models(
    models: Arc<ModelLifecycle>,
    poll: std::time::Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    models.load_first().await?;
    metrics.ready.set(1);
    tracing::info!("ready");
    if !poll.is_zero() {
        tokio::spawn(models.poll(poll, stop));
    }
    Ok(())
}

/// Re-reads the client file, the TLS certificates and the model repository (SIGHUP); a file
/// or a model version that does not load leaves what was in force and logs why.
#[derive(Clone)]
pub struct Reloader {
    gate: Arc<Gate>,
    tls: Option<Arc<PortTls>>,
    models: Arc<ModelLifecycle>,
}

impl Reloader {
    /// Reloads; never fails the server. The models reload in the background.
    pub fn reload(&self) {
        let models = Arc::clone(&self.models);
        tokio::spawn(async move {
            match models.reload().await {
                Ok(report) => tracing::info!(
                    loaded = report.loaded.len(),
                    unloaded = report.unloaded.len(),
                    unchanged = report.unchanged.len(),
                    failed = report.failed.len(),
                    "model repository reloaded"
                ),
                Err(error) => tracing::warn!(%error, "model repository not reloaded"),
            }
        });
        match self.gate.reload() {
            Ok(Some(clients)) => tracing::info!(clients, "client file reloaded"),
            Ok(None) => {}
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "client file not reloaded; the previous one stays"
                )
            }
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "TLS certificates not reloaded; the previous ones stay"
                ),
            }
        }
    }
}

/// Binds one port; `which` names the port and the flag that moves it, for the error a second
/// kensa on the same machine gets.
async fn bind(address: SocketAddr, which: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on {address} for {which}: another process may hold the port")
    })
}

/// The bound ports and how they take connections.
struct Ports {
    http: TcpListener,
    grpc: TcpListener,
    edge: EdgeArgs,
    tls: Option<Arc<PortTls>>,
    gate: Arc<Gate>,
}

/// What readiness follows once the models are up.
struct Watched {
    readiness: Arc<Readiness>,
    store_health: Arc<StoreHealth>,
    metrics: Arc<Metrics>,
}

async fn serve(
    ports: Ports,
    app: axum::Router,
    grpc: grpc_server::GrpcServices,
    load: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    watched: Watched,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Ports {
        http,
        grpc: grpc_listener,
        edge,
        tls,
        gate,
    } = ports;
    let port = |port, tls: Option<&Arc<crate::transport::tls::ReloadableTls>>| ListenerConfig {
        port,
        max_connections: edge.max_connections,
        handshake_timeout: edge.handshake_timeout,
        tls: tls.cloned(),
    };
    let metrics = &watched.metrics;
    let http_incoming = listener::incoming(
        http,
        port("http", tls.as_ref().map(|t| &t.http)),
        Arc::clone(metrics),
        shutdown.clone(),
    );
    let http =
        crate::transport::http::serve(http_incoming, app, edge.http_limits(), shutdown.clone());
    let grpc_incoming = listener::incoming(
        grpc_listener,
        port("grpc", tls.as_ref().map(|t| &t.grpc)),
        Arc::clone(metrics),
        shutdown.clone(),
    );
    let stop = shutdown.clone();
    let grpc_layers = tower::ServiceBuilder::new()
        .layer(request_id::set_layer())
        .layer(TraceLayer::new_for_grpc().make_span_with(request_id::request_span))
        .layer(request_id::propagate_layer())
        .layer(GrpcMetricsLayer::new(Arc::clone(metrics)))
        .layer(GrpcGateLayer::new(gate));
    let grpc_server = tonic::transport::Server::builder()
        .max_concurrent_streams(edge.http2_max_streams)
        .http2_keepalive_interval(Some(edge.http2_keep_alive))
        .http2_keepalive_timeout(Some(edge.http2_keep_alive))
        .http2_max_pending_accept_reset_streams(Some(2 * edge.http2_max_streams as usize))
        .layer(grpc_layers)
        .add_routes(grpc.routes)
        .serve_with_incoming_shutdown(
            ReceiverStream::new(grpc_incoming).map(Ok::<_, std::io::Error>),
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
        let mut store_up = watched.store_health.subscribe();
        loop {
            let up = *store_up.borrow_and_update();
            watched.readiness.set_store_up(up);
            watched.metrics.store_up.set(i64::from(up));
            if loaded.is_ok() {
                health.set_ready(watched.readiness.is_ready()).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = store_up.changed() => if changed.is_err() { shutdown.cancelled().await; break },
            }
        }
        watched.readiness.start_draining();
        health.set_ready(false).await;
        tracing::info!("draining: finishing accepted requests");
        loaded
    };
    let (_, grpc_served, loaded) = tokio::join!(http, grpc_server, lifecycle);
    loaded?;
    grpc_served.context("gRPC server failed")
}
