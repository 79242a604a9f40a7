//! The native gRPC API (`kensa.v1.InspectionService`): unary and streaming inspections (through
//! the [`Inspector`]), and stored verdicts by key or streamed from a cursor (through
//! [`Verdicts`], the same reads as `/v1/verdicts`), converted to and from the same
//! [`InspectionRequest`], [`Verdict`] and [`StoredVerdict`] as the HTTP API; reviews through
//! [`Reviews`], like `POST /v1/verdicts/{station_id}/{inspection_id}/review`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::proto::kensa_v1 as pb;
use super::{grpc_reviews, grpc_status};
use crate::access::Caller;
use crate::batching::Priority;
use crate::error::Error;
use crate::inspector::{InspectionRequest, Inspector};
use crate::metrics::Metrics;
use crate::reviews::Reviews;
use crate::store::StoredVerdict;
use crate::verdict::Verdict;
use crate::verdicts::{Filters, Verdicts};

pub use pb::inspection_service_server::InspectionServiceServer;

/// Inspections a single `InspectStream` may have in flight; the stream reads no further message
/// until one finishes, so a fast station is slowed by HTTP/2 flow control, not buffered.
const STREAM_IN_FLIGHT: usize = 64;

/// The `kensa.v1.InspectionService` implementation.
pub struct InspectionApi {
    inspector: Arc<Inspector>,
    verdicts: Verdicts,
    metrics: Arc<Metrics>,
    reviews: Reviews,
    shutdown: CancellationToken,
}

impl InspectionApi {
    /// `shutdown` ends open inspection streams when the server drains (verdict streams end
    /// through [`Verdicts`]); `metrics` counts the per-message errors of `InspectStream`,
    /// which no call status carries.
    pub fn new(
        inspector: Arc<Inspector>,
        verdicts: Verdicts,
        metrics: Arc<Metrics>,
        reviews: Reviews,
        shutdown: CancellationToken,
    ) -> Self {
        InspectionApi {
            inspector,
            verdicts,
            metrics,
            reviews,
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
        let caller = Caller::of(request.extensions());
        let inspected = self
            .inspector
            .inspect(inspection(request.into_inner(), caller))
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(verdict_message(
            &inspected.verdict,
            inspected.heatmap_png,
        )))
    }

    type InspectStreamStream = ResponseStream<pb::InspectStreamResponse>;

    async fn inspect_stream(
        &self,
        request: Request<Streaming<pb::InspectRequest>>,
    ) -> Result<Response<Self::InspectStreamStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_IN_FLIGHT);
        let caller = Caller::of(request.extensions());
        tokio::spawn(pump_inspections(
            request.into_inner(),
            caller,
            Arc::clone(&self.inspector),
            Arc::clone(&self.metrics),
            sender,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_verdict(
        &self,
        request: Request<pb::GetVerdictRequest>,
    ) -> Result<Response<pb::StoredVerdict>, Status> {
        let key = request.into_inner();
        let stored = self
            .verdicts
            .get(&key.station_id, &key.inspection_id)
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(stored_message(&stored)))
    }

    type WatchVerdictsStream = ResponseStream<pb::StoredVerdict>;

    async fn watch_verdicts(
        &self,
        request: Request<pb::WatchVerdictsRequest>,
    ) -> Result<Response<Self::WatchVerdictsStream>, Status> {
        let watch = request.into_inner();
        let after = match watch.cursor.as_str() {
            "" => self.verdicts.latest_cursor(),
            cursor => cursor.parse().map_err(|_| {
                grpc_status(&Error::BadRequest(format!(
                    "cursor must be a cursor of an earlier event, \"0\" or empty, not {cursor:?}"
                )))
            })?,
        };
        let disposition = match watch.disposition.as_str() {
            "" => None,
            name => Some(
                name.parse()
                    .map_err(|e: String| grpc_status(&Error::BadRequest(e)))?,
            ),
        };
        let filters = Filters {
            station: Some(watch.station_id),
            line: Some(watch.line),
            lot: Some(watch.lot_id),
            label: Some(watch.label),
            model: Some(watch.model),
            defect_only: watch.defect_only,
            disposition,
            reviewed: watch.reviewed,
        };
        let stored = self
            .verdicts
            .follow(filters.after(after, Some(STREAM_IN_FLIGHT)))
            .map_err(|e| grpc_status(&e))?;
        let (sender, receiver) = mpsc::channel(STREAM_IN_FLIGHT);
        tokio::spawn(forward_stored(stored, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn review_verdict(
        &self,
        request: Request<pb::ReviewVerdictRequest>,
    ) -> Result<Response<pb::ReviewVerdictResponse>, Status> {
        let caller = Caller::of(request.extensions());
        let message = request.into_inner();
        let reviewed = self
            .reviews
            .review(
                &message.station_id,
                &message.inspection_id,
                grpc_reviews::request(&message).by(&caller),
            )
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(pb::ReviewVerdictResponse {
            review: Some(grpc_reviews::message(&reviewed.review)),
            replayed: reviewed.replayed,
        }))
    }
}

/// Sends stored verdicts from the watcher's cursor on, until it leaves, the store fails (the
/// watcher resumes from its last cursor) or the server drains.
async fn forward_stored(
    stored: impl futures::Stream<Item = Result<StoredVerdict, Error>>,
    output: mpsc::Sender<Result<pb::StoredVerdict, Status>>,
) {
    tokio::pin!(stored);
    loop {
        let next = tokio::select! {
            () = output.closed() => return,
            next = stored.next() => next,
        };
        let message = match next {
            Some(Ok(stored)) => Ok(stored_message(&stored)),
            Some(Err(error)) => Err(grpc_status(&error)),
            None => return,
        };
        let failed = message.is_err();
        if output.send(message).await.is_err() || failed {
            return;
        }
    }
}

/// The protobuf form of a stored verdict.
fn stored_message(stored: &StoredVerdict) -> pb::StoredVerdict {
    pb::StoredVerdict {
        cursor: stored.cursor.to_string(),
        stored_at: Some(timestamp(&stored.stored_at)),
        image_sha256: stored.image_sha256.clone(),
        note: stored.note.clone(),
        image_retained: stored.image_retained,
        verdict: Some(verdict_message(&stored.verdict, None)),
        review: stored.review.as_ref().map(grpc_reviews::message),
    }
}

/// Reads a station's stream and inspects each message concurrently (at most
/// [`STREAM_IN_FLIGHT`] at once); answers in completion order. A draining server stops reading,
/// answers what it accepted, then ends the stream with `Unavailable`.
async fn pump_inspections(
    mut input: Streaming<pb::InspectRequest>,
    caller: Caller,
    inspector: Arc<Inspector>,
    metrics: Arc<Metrics>,
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
        let mut request = inspection(message, caller.clone());
        let inspection_id = request
            .inspection_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let inspector = Arc::clone(&inspector);
        let metrics = Arc::clone(&metrics);
        let output = output.clone();
        tokio::spawn(async move {
            let outcome = match inspector.inspect(request).await {
                Ok(inspected) => pb::inspect_stream_response::Outcome::Verdict(verdict_message(
                    &inspected.verdict,
                    inspected.heatmap_png,
                )),
                Err(error) => {
                    metrics.count_error("grpc", error.code());
                    pb::inspect_stream_response::Outcome::Error(error_message(&error))
                }
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

/// The inspection a message asks for; empty strings mean "not given".
fn inspection(message: pb::InspectRequest, caller: Caller) -> InspectionRequest {
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
        caller,
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
fn verdict_message(verdict: &Verdict, heatmap_png: Option<Vec<u8>>) -> pb::Verdict {
    let attention = &verdict.attention;
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
            ocr_ms: verdict.timings.ocr_ms,
        }),
        batch_size: u32::try_from(verdict.batch_size).unwrap_or(u32::MAX),
        received_at: Some(timestamp(&verdict.received_at)),
        metadata: verdict
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        heatmap_png: heatmap_png.unwrap_or_default().into(),
        disposition: verdict
            .disposition
            .map(|d| d.as_str().to_string())
            .unwrap_or_default(),
        decision: verdict.decision.as_ref().map(|d| pb::Decision {
            defect_class: d.defect_class.clone().unwrap_or_default(),
            pass_threshold: d.pass_threshold,
            fail_threshold: d.fail_threshold,
            temperature: d.temperature,
            thresholds_from: d.thresholds_from.clone(),
        }),
        ocr: verdict.ocr.as_ref().map(|read| pb::OcrRead {
            text: read.text.clone(),
            lines: read
                .lines
                .iter()
                .map(|line| pb::OcrLine {
                    text: line.text.clone(),
                    confidence: line.confidence,
                    r#box: line.bounds.iter().flatten().copied().collect(),
                })
                .collect(),
        }),
        model_note: verdict.model_note.clone().unwrap_or_default(),
    }
}

fn timestamp(time: &chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
