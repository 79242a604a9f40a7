//! The native gRPC API (`kensa.v1.InspectionService`): unary and streaming inspections, stored
//! verdicts by key, and verdicts streamed from a cursor, converted to and from the same
//! [`InspectionRequest`] and [`Verdict`] as the HTTP API.
//!
//! `WatchVerdicts` reads the verdict store in cursor order (the store's commit wake-ups say when
//! to look again), so a watcher resuming from its last cursor misses nothing and sees nothing
//! twice. Only without a store does it fall back to the live feed ([`crate::feed`]).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::grpc_status;
use super::proto::kensa_v1 as pb;
use crate::batching::Priority;
use crate::error::Error;
use crate::feed::VerdictEvent;
use crate::inspector::{InspectionRequest, Inspector};
use crate::store::follow::follow;
use crate::store::{SharedStore, StoredVerdict, VerdictQuery};
use crate::verdict::Verdict;

pub use pb::inspection_service_server::InspectionServiceServer;

/// Inspections a single `InspectStream` may have in flight; the stream reads no further message
/// until one finishes, so a fast station is slowed by HTTP/2 flow control, not buffered.
const STREAM_IN_FLIGHT: usize = 64;

/// The `kensa.v1.InspectionService` implementation.
pub struct InspectionApi {
    inspector: Arc<Inspector>,
    shutdown: CancellationToken,
}

impl InspectionApi {
    /// `shutdown` ends open streams when the server drains.
    pub fn new(inspector: Arc<Inspector>, shutdown: CancellationToken) -> Self {
        InspectionApi {
            inspector,
            shutdown,
        }
    }
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl pb::inspection_service_server::InspectionService for InspectionApi {
    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::Verdict>, Status> {
        let verdict = self
            .inspector
            .inspect(inspection(request.into_inner()))
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(verdict_message(&verdict)))
    }

    type InspectStreamStream = ResponseStream<pb::InspectStreamResponse>;

    async fn inspect_stream(
        &self,
        request: Request<Streaming<pb::InspectRequest>>,
    ) -> Result<Response<Self::InspectStreamStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_IN_FLIGHT);
        tokio::spawn(pump_inspections(
            request.into_inner(),
            Arc::clone(&self.inspector),
            sender,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_verdict(
        &self,
        request: Request<pb::GetVerdictRequest>,
    ) -> Result<Response<pb::Verdict>, Status> {
        let key = request.into_inner();
        if key.station_id.is_empty() || key.inspection_id.is_empty() {
            return Err(grpc_status(&Error::BadRequest(
                "station_id and inspection_id are both required".into(),
            )));
        }
        let store = self.store()?;
        match store
            .get(&key.station_id, &key.inspection_id)
            .await
            .map_err(|e| grpc_status(&e.into()))?
        {
            Some(stored) => Ok(Response::new(verdict_message(&stored.verdict))),
            None => Err(grpc_status(&Error::VerdictNotFound {
                station_id: key.station_id,
                inspection_id: key.inspection_id,
            })),
        }
    }

    type WatchVerdictsStream = ResponseStream<pb::VerdictEvent>;

    async fn watch_verdicts(
        &self,
        request: Request<pb::WatchVerdictsRequest>,
    ) -> Result<Response<Self::WatchVerdictsStream>, Status> {
        let watch = request.into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_IN_FLIGHT);
        let Some(store) = self.inspector.store() else {
            if !watch.cursor.is_empty() {
                return Err(Status::failed_precondition(
                    "resuming from a cursor needs the verdict store (kensa runs with \
                     --store none); leave cursor empty to watch live verdicts",
                ));
            }
            tokio::spawn(forward_verdicts(
                self.inspector.subscribe(),
                watch,
                sender,
                self.shutdown.clone(),
            ));
            return Ok(Response::new(ReceiverStream::new(receiver)));
        };
        let after = match watch.cursor.as_str() {
            "" => *store.subscribe().borrow(),
            cursor => cursor.parse().map_err(|_| {
                grpc_status(&Error::BadRequest(format!(
                    "cursor must be a cursor of an earlier event, \"0\" or empty, not {cursor:?}"
                )))
            })?,
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let query = VerdictQuery {
            after,
            limit: STREAM_IN_FLIGHT,
            station: non_empty(watch.station_id),
            line: non_empty(watch.line),
            lot: non_empty(watch.lot_id),
            label: non_empty(watch.label),
            model: non_empty(watch.model),
            defect_only: watch.defect_only,
        };
        tokio::spawn(forward_stored(
            Arc::clone(store),
            query,
            sender,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

impl InspectionApi {
    fn store(&self) -> Result<&SharedStore, Status> {
        self.inspector.store().ok_or_else(|| {
            grpc_status(&Error::Unavailable(
                "the verdict store is off (kensa runs with --store none)",
            ))
        })
    }
}

/// Sends stored verdicts from the watcher's cursor on, until it leaves, the store fails (the
/// watcher resumes from its last cursor) or the server drains.
async fn forward_stored(
    store: SharedStore,
    query: VerdictQuery,
    output: mpsc::Sender<Result<pb::VerdictEvent, Status>>,
    shutdown: CancellationToken,
) {
    let stored = follow(store, query);
    tokio::pin!(stored);
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = output
                    .send(Err(Status::unavailable("the server is draining; reconnect")))
                    .await;
                return;
            }
            () = output.closed() => return,
            next = stored.next() => next,
        };
        let message = match next {
            Some(Ok(stored)) => Ok(event_message(&stored)),
            Some(Err(error)) => Err(grpc_status(&error.into())),
            None => return,
        };
        let failed = message.is_err();
        if output.send(message).await.is_err() || failed {
            return;
        }
    }
}

/// The protobuf form of a stored verdict.
fn event_message(stored: &StoredVerdict) -> pb::VerdictEvent {
    pb::VerdictEvent {
        cursor: stored.cursor.to_string(),
        missed: 0,
        verdict: Some(verdict_message(&stored.verdict)),
        image_sha256: stored.image_sha256.clone(),
        note: stored.note.clone(),
        stored_at: Some(timestamp(&stored.stored_at)),
    }
}

/// Reads a station's stream and inspects each message concurrently (at most
/// [`STREAM_IN_FLIGHT`] at once); answers in completion order. A draining server stops reading,
/// answers what it accepted, then ends the stream with `Unavailable`.
async fn pump_inspections(
    mut input: Streaming<pb::InspectRequest>,
    inspector: Arc<Inspector>,
    output: mpsc::Sender<Result<pb::InspectStreamResponse, Status>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(STREAM_IN_FLIGHT));
    let mut sequence = 0u64;
    let drained = loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let message = tokio::select! {
            () = shutdown.cancelled() => break true,
            () = output.closed() => return,
            message = input.message() => message,
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => break false,
            Err(status) => {
                let _ = output.send(Err(status)).await;
                return;
            }
        };
        let mut request = inspection(message);
        let inspection_id = request
            .inspection_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let inspector = Arc::clone(&inspector);
        let output = output.clone();
        tokio::spawn(async move {
            let outcome = match inspector.inspect(request).await {
                Ok(verdict) => {
                    pb::inspect_stream_response::Outcome::Verdict(verdict_message(&verdict))
                }
                Err(error) => pb::inspect_stream_response::Outcome::Error(error_message(&error)),
            };
            let _ = output
                .send(Ok(pb::InspectStreamResponse {
                    inspection_id,
                    sequence,
                    outcome: Some(outcome),
                }))
                .await;
            drop(slot);
        });
        sequence += 1;
    };
    // Every slot back means every accepted message has been answered.
    let all = u32::try_from(STREAM_IN_FLIGHT).unwrap_or(u32::MAX);
    if slots.acquire_many(all).await.is_ok() && drained {
        let _ = output
            .send(Err(Status::unavailable(
                "the server is draining; reconnect to another instance",
            )))
            .await;
    }
}

/// Sends live verdicts that pass the watcher's filters until it leaves or the server drains.
async fn forward_verdicts(
    mut feed: broadcast::Receiver<VerdictEvent>,
    watch: pb::WatchVerdictsRequest,
    output: mpsc::Sender<Result<pb::VerdictEvent, Status>>,
    shutdown: CancellationToken,
) {
    let mut missed = 0u64;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = output
                    .send(Err(Status::unavailable("the server is draining; reconnect")))
                    .await;
                return;
            }
            () = output.closed() => return,
            event = feed.recv() => event,
        };
        let event = match event {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(count)) => {
                missed += count;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let verdict = &event.verdict;
        if (!watch.station_id.is_empty() && watch.station_id != verdict.station_id)
            || (!watch.model.is_empty() && watch.model != verdict.model)
        {
            continue;
        }
        let message = pb::VerdictEvent {
            cursor: event.sequence.to_string(),
            missed: std::mem::take(&mut missed),
            verdict: Some(verdict_message(verdict)),
            ..pb::VerdictEvent::default()
        };
        if output.send(Ok(message)).await.is_err() {
            return;
        }
    }
}

/// The inspection a message asks for; empty strings mean "not given".
fn inspection(message: pb::InspectRequest) -> InspectionRequest {
    let priority = match message.priority() {
        pb::Priority::Urgent => Priority::Urgent,
        pb::Priority::Normal | pb::Priority::Unspecified => Priority::Normal,
    };
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    InspectionRequest {
        model: non_empty(message.model),
        model_version: message.model_version,
        station_id: message.station_id,
        inspection_id: non_empty(message.inspection_id),
        image: message.image,
        note: message.note,
        metadata: message.metadata.into_iter().collect(),
        priority,
        deadline: message.deadline_ms.map(Duration::from_millis),
        heatmap: message.heatmap,
    }
}

/// A per-message error of `InspectStream`, carrying the same code as a unary call's status.
fn error_message(error: &Error) -> pb::InspectionError {
    let status = grpc_status(error);
    pb::InspectionError {
        grpc_code: status.code() as i32,
        code: error.code().to_string(),
        message: error.to_string(),
        retry_after_ms: error
            .retry_after()
            .map(|after| u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// The protobuf form of a verdict; the heat map travels as PNG bytes, not base64.
pub fn verdict_message(verdict: &Verdict) -> pb::Verdict {
    let attention = &verdict.attention;
    let heatmap_png = verdict
        .heatmap_png
        .as_deref()
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .unwrap_or_default()
        .into();
    pb::Verdict {
        inspection_id: verdict.inspection_id.clone(),
        station_id: verdict.station_id.clone(),
        model: verdict.model.clone(),
        model_version: verdict.model_version,
        label: verdict.label.clone(),
        display_label: verdict.display_label.clone(),
        is_defect: verdict.is_defect,
        confidence: verdict.confidence,
        probabilities: verdict
            .probabilities
            .iter()
            .map(|(label, p)| (label.clone(), *p))
            .collect(),
        attention: Some(pb::AttentionMap {
            width: u32::try_from(attention.width).unwrap_or(u32::MAX),
            height: u32::try_from(attention.height).unwrap_or(u32::MAX),
            values: attention.values.clone(),
        }),
        timings: Some(pb::Timings {
            queue_ms: verdict.timings.queue_ms,
            preprocess_ms: verdict.timings.preprocess_ms,
            inference_ms: verdict.timings.inference_ms,
            total_ms: verdict.timings.total_ms,
        }),
        batch_size: u32::try_from(verdict.batch_size).unwrap_or(u32::MAX),
        received_at: Some(timestamp(&verdict.received_at)),
        metadata: verdict
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        heatmap_png,
    }
}

fn timestamp(time: &chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
