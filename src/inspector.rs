//! The hallway every front door goes through: admit, preprocess, enqueue, await, answer.
//!
//! Adapters (HTTP, gRPC, the Open Inference Protocol) turn their wire format into an
//! [`InspectionRequest`] and call [`Inspector::inspect`]; limits, checks, deadlines and metrics
//! live here once.
//!
//! Every verdict is committed to the store before it is returned (durable before acknowledged;
//! with `--store none` the store is the in-memory ring), and a retry with the same
//! (station_id, inspection_id) is answered from the store without a second inference, or
//! refused with a conflict when its image differs. Two concurrent requests with one key may
//! both run inference, but the store keeps only the first commit and both callers get that
//! stored verdict. Readers never come here: they use [`crate::verdicts`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::batching::{Entry, Priority};
use crate::error::Error;
use crate::heatmap;
use crate::metrics::{ConfidenceLabels, DriftLabels, Metrics, VerdictLabels};
use crate::model::manifest::Grid;
use crate::model::registry::{LoadedModel, ModelRepository};
use crate::preprocess::image::{ImageLimits, prepare_image};
use crate::store::record::sha256_hex;
use crate::store::retention::ImageRetention;
use crate::store::{Inserted, NewVerdict, SharedStore, StoredVerdict};
use crate::verdict::{Scores, Timings, Verdict};

/// One inspection as every front door hands it over.
#[derive(Debug, Clone, Default)]
pub struct InspectionRequest {
    /// Model name; may be omitted when one model is loaded.
    pub model: Option<String>,
    /// Model version; the newest when omitted.
    pub model_version: Option<u64>,
    /// Which station asks (required).
    pub station_id: String,
    /// The station's own id for this inspection; generated when omitted.
    pub inspection_id: Option<String>,
    /// The encoded image file.
    pub image: Bytes,
    /// The note the machine or operator recorded; may be empty.
    pub note: String,
    /// Extra fields to carry into the verdict (line, lot_id, unit_position, recipe, ...).
    pub metadata: BTreeMap<String, String>,
    /// Urgent requests leave the queue first.
    pub priority: Priority,
    /// How long the station will wait; the server default when omitted.
    pub deadline: Option<Duration>,
    /// Whether to render the attention heat map into the verdict.
    pub heatmap: bool,
}

/// Request limits that are not the image's own.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Encoded size and pixel count of images.
    pub image: ImageLimits,
    /// Longest note, in characters.
    pub max_note_chars: usize,
    /// Deadline when the request names none.
    pub default_deadline: Duration,
    /// Longest deadline a request may ask for.
    pub max_deadline: Duration,
}

/// Longest station id, inspection id, metadata key or value.
const MAX_ID_CHARS: usize = 128;
/// Longest metadata value.
const MAX_METADATA_VALUE_CHARS: usize = 512;
/// Most metadata fields.
const MAX_METADATA_FIELDS: usize = 32;

/// Whether the service takes work: models loaded and warm, not draining.
#[derive(Default)]
pub struct Readiness {
    models: OnceLock<ModelRepository>,
    draining: AtomicBool,
}

impl Readiness {
    /// Publishes the loaded, warmed-up models; from now on the service is ready.
    pub fn set_models(&self, models: ModelRepository) {
        if self.models.set(models).is_err() {
            tracing::warn!("models were already set");
        }
    }

    /// Marks the service as draining: no longer ready, still finishing work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True when requests are accepted.
    pub fn is_ready(&self) -> bool {
        self.models.get().is_some() && !self.draining.load(Ordering::SeqCst)
    }

    /// The loaded models, once warm.
    pub fn models(&self) -> Option<&ModelRepository> {
        self.models.get()
    }
}

/// Images up to this size are hashed on the calling task; larger ones on a blocking thread.
const INLINE_HASH_BYTES: usize = 64 << 10;

/// A verdict and how it came to be, for front doors that tell the station (HTTP headers).
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The verdict.
    pub verdict: Verdict,
    /// Its cursor in the verdict store.
    pub cursor: u64,
    /// True when this is the stored verdict of an earlier request with the same key.
    pub replayed: bool,
    /// The attention heat map as a PNG, when the request asked for it: a rendering beside the
    /// verdict, never part of the stored record.
    pub heatmap_png: Option<Vec<u8>>,
}

/// What an asynchronous submission was answered with.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The station.
    pub station_id: String,
    /// The inspection id (generated when the request had none).
    pub inspection_id: String,
    /// The stored verdict when the key already had one (a retry); None while it is running.
    pub stored: Option<Inspected>,
}

/// The application service behind every front door.
pub struct Inspector {
    readiness: Arc<Readiness>,
    limits: Limits,
    preprocess_slots: Semaphore,
    metrics: Arc<Metrics>,
    store: SharedStore,
    images: ImageRetention,
    background: TaskTracker,
}

impl Inspector {
    /// `preprocess_threads` bounds decode/resize jobs at once, so a burst cannot queue hundreds
    /// of blocking threads against a few cores; every verdict is committed to `store`, with its
    /// image when `images` says so.
    pub fn new(
        readiness: Arc<Readiness>,
        limits: Limits,
        preprocess_threads: usize,
        metrics: Arc<Metrics>,
        store: SharedStore,
        images: ImageRetention,
    ) -> Self {
        Inspector {
            readiness,
            limits,
            preprocess_slots: Semaphore::new(preprocess_threads.max(1)),
            metrics,
            store,
            images,
            background: TaskTracker::new(),
        }
    }

    /// Readiness shared with the health endpoints.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// Inspects one unit: its verdict (stored, or the stored answer to an earlier request with
    /// the same key), where it sits in the store, and the heat map when asked for.
    pub async fn inspect(&self, mut request: InspectionRequest) -> Result<Inspected, Error> {
        let span = tracing::info_span!(
            "inspect",
            station_id = %request.station_id,
            inspection_id = tracing::field::Empty,
            model = tracing::field::Empty,
            version = tracing::field::Empty,
        );
        let result = async {
            self.validate(&request)?;
            let image_sha256 = hash(&request.image).await?;
            let stored = self.lookup(&mut request).await?;
            if let Some(id) = &request.inspection_id {
                tracing::Span::current().record("inspection_id", id.as_str());
            }
            match stored {
                Some(stored) => self.replay(stored, &image_sha256, &request).await,
                None => self.infer_and_store(request, image_sha256).await,
            }
        }
        .instrument(span)
        .await;
        if result.as_ref().is_ok_and(|inspected| inspected.replayed) {
            self.metrics.idempotent_replays.inc();
        }
        result
    }

    /// Accepts a unit to inspect in the background (`mode=async`, for slow lines): checks what
    /// can be checked at once and answers with its key; the verdict is stored (and streamed)
    /// when done. A full queue is waited out within the request's deadline (`--max-deadline`
    /// when it names none); a unit that fails gets no verdict, the failure is logged.
    pub async fn submit(
        self: &Arc<Self>,
        mut request: InspectionRequest,
    ) -> Result<Submitted, Error> {
        self.validate(&request)?;
        self.ready_models()?
            .get(request.model.as_deref(), request.model_version)?;
        let image_sha256 = hash(&request.image).await?;
        let stored = self.lookup(&mut request).await?;
        let inspection_id = request.inspection_id.clone().unwrap_or_default();
        let submitted = |stored| Submitted {
            station_id: request.station_id.clone(),
            inspection_id: inspection_id.clone(),
            stored,
        };
        if let Some(stored) = stored {
            let inspected = self.replay(stored, &image_sha256, &request).await?;
            return Ok(submitted(Some(inspected)));
        }
        let answer = submitted(None);
        let deadline = Instant::now() + request.deadline.unwrap_or(self.limits.max_deadline);
        let inspector = Arc::clone(self);
        self.background.spawn(async move {
            loop {
                let mut attempt = request.clone();
                attempt.deadline = Some(deadline.saturating_duration_since(Instant::now()));
                match inspector
                    .infer_and_store(attempt, image_sha256.clone())
                    .await
                {
                    Err(Error::QueueFull { retry_after, .. })
                        if Instant::now() + retry_after < deadline =>
                    {
                        tokio::time::sleep(retry_after).await;
                    }
                    Err(error) => {
                        inspector.metrics.count_error("async", error.code());
                        tracing::warn!(
                            station_id = %request.station_id,
                            inspection_id = ?request.inspection_id,
                            %error,
                            "asynchronous inspection failed"
                        );
                        return;
                    }
                    Ok(_) => return,
                }
            }
        });
        Ok(answer)
    }

    /// Waits for asynchronous inspections still running (on shutdown).
    pub async fn finish_background(&self) {
        self.background.close();
        self.background.wait().await;
    }

    /// The stored verdict under the request's key, when the station gave a key (the one store
    /// read a keyed request costs); a request without one gets a fresh id here.
    async fn lookup(
        &self,
        request: &mut InspectionRequest,
    ) -> Result<Option<StoredVerdict>, Error> {
        let Some(inspection_id) = &request.inspection_id else {
            request.inspection_id = Some(new_id());
            return Ok(None);
        };
        Ok(self.store.get(&request.station_id, inspection_id).await?)
    }

    /// Infers, then commits the verdict; the answer is whichever verdict the store kept.
    async fn infer_and_store(
        &self,
        request: InspectionRequest,
        image_sha256: String,
    ) -> Result<Inspected, Error> {
        let image = request.image.clone();
        let note = request.note.clone();
        let heatmap = request.heatmap;
        let (verdict, heatmap_png) = self.infer(request).await?;
        let record = NewVerdict {
            image: self
                .images
                .keeps(&verdict, image.len())
                .then_some(image.clone()),
            verdict,
            note,
            image_sha256: image_sha256.clone(),
        };
        let started = Instant::now();
        let inserted = self.store.insert(record).await?;
        self.metrics
            .store_write_seconds
            .observe(started.elapsed().as_secs_f64());
        match inserted {
            Inserted::New(stored) => Ok(Inspected {
                verdict: stored.verdict,
                cursor: stored.cursor,
                replayed: false,
                heatmap_png,
            }),
            // Another request with this key committed first: its verdict is the one.
            Inserted::Existing(stored) => {
                let request = InspectionRequest {
                    image,
                    heatmap,
                    ..InspectionRequest::default()
                };
                self.replay(stored, &image_sha256, &request).await
            }
        }
    }

    /// The answer to a request whose key already has a stored verdict: that verdict when the
    /// image is the same (a retry), a conflict when it is not (a different unit under a reused
    /// id). Heat maps are not stored: one asked for is rendered from the stored attention over
    /// the resent image (the same image, as its hash shows).
    async fn replay(
        &self,
        stored: StoredVerdict,
        image_sha256: &str,
        request: &InspectionRequest,
    ) -> Result<Inspected, Error> {
        if stored.image_sha256 != image_sha256 {
            return Err(Error::Conflict(format!(
                "station {:?} already has a verdict for inspection {:?} (cursor {}) with a \
                 different image (sha256 {} stored, {} sent); a retry must resend the same \
                 image, a new unit needs a new inspection_id",
                stored.verdict.station_id,
                stored.verdict.inspection_id,
                stored.cursor,
                short(&stored.image_sha256),
                short(image_sha256),
            )));
        }
        let heatmap_png = if request.heatmap {
            Some(self.render_heatmap(&request.image, &stored.verdict).await?)
        } else {
            None
        };
        Ok(Inspected {
            verdict: stored.verdict,
            cursor: stored.cursor,
            replayed: true,
            heatmap_png,
        })
    }

    fn ready_models(&self) -> Result<&ModelRepository, Error> {
        self.readiness
            .models()
            .filter(|_| self.readiness.is_ready())
            .ok_or(Error::Unavailable(
                "models are loading or the service is draining",
            ))
    }

    /// Preprocesses, queues, waits for the batch and builds the verdict (and the heat map when
    /// asked for). The request is validated and carries its inspection id.
    async fn infer(&self, request: InspectionRequest) -> Result<(Verdict, Option<Vec<u8>>), Error> {
        let received = Instant::now();
        let received_at = Utc::now();
        let model = self
            .ready_models()?
            .get(request.model.as_deref(), request.model_version)?;
        let span = tracing::Span::current();
        span.record("model", model.name.as_str());
        span.record("version", model.version);
        let deadline_after = request.deadline.unwrap_or(self.limits.default_deadline);
        let deadline = received + deadline_after;
        let place = model.queue.reserve()?;

        let preprocess_started = Instant::now();
        let (pixels, input_ids) = self.preprocess(&model, &request).await?;
        let preprocess_time = preprocess_started.elapsed();
        self.metrics
            .preprocess_seconds
            .get_or_create(&model.labels())
            .observe(preprocess_time.as_secs_f64());
        if Instant::now() >= deadline {
            return Err(Error::DeadlineExceeded {
                deadline: deadline_after,
            });
        }

        let (respond, answer) = oneshot::channel();
        model.queue.append(Entry {
            pixels,
            input_ids,
            priority: request.priority,
            queued_at: Instant::now(),
            deadline,
            respond,
            permit: place,
        })?;
        let result = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(Error::Internal("the batch worker dropped a request".into())),
            Err(_) => {
                return Err(Error::DeadlineExceeded {
                    deadline: deadline_after,
                });
            }
        };

        let manifest = &model.manifest;
        let temperature = model.decision.as_ref().map_or(1.0, |d| d.spec.temperature);
        let scores = Scores::from_outputs(
            &result.logits,
            temperature,
            &result.attention,
            manifest.attention_grid,
        );
        let label = &manifest.labels[scores.index.min(manifest.labels.len() - 1)];
        let (disposition, decision) = match &model.decision {
            Some(policy) => {
                let names: Vec<&str> = manifest.labels.iter().map(|l| l.name.as_str()).collect();
                let line = request.metadata.get("line").map(String::as_str);
                let (disposition, decision) = policy.decide(
                    &scores.probabilities,
                    manifest.normal_index(),
                    &names,
                    &request.station_id,
                    line,
                );
                (Some(disposition), Some(decision))
            }
            None => (None, None),
        };
        let line = request.metadata.get("line").map(String::as_str);
        self.metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                model: model.name.clone(),
                version: model.version.to_string(),
                station: self.metrics.station(&request.station_id),
                line: self.metrics.line(line),
                label: label.name.clone(),
                disposition: disposition.map_or("none", |d| d.as_str()).to_string(),
            })
            .inc();
        self.metrics
            .confidence
            .get_or_create(&ConfidenceLabels {
                model: model.name.clone(),
                label: label.name.clone(),
            })
            .observe(f64::from(scores.confidence()));
        if let Some(drift) = model
            .drift
            .as_ref()
            .and_then(|monitor| monitor.observe(scores.index, scores.confidence()))
        {
            for (signal, psi) in [("label", drift.labels), ("confidence", drift.confidence)] {
                self.metrics
                    .drift
                    .get_or_create(&DriftLabels {
                        model: model.name.clone(),
                        version: model.version.to_string(),
                        signal: signal.to_string(),
                    })
                    .set(psi);
            }
        }
        tracing::debug!(
            station_id = %request.station_id,
            model = %model.name,
            version = model.version,
            label = %label.name,
            confidence = scores.confidence(),
            batch_size = result.batch_size,
            total_ms = Timings::ms(received.elapsed()),
            "verdict"
        );
        let verdict = Verdict {
            inspection_id: request.inspection_id.unwrap_or_else(new_id),
            station_id: request.station_id,
            model: model.name.clone(),
            model_version: model.version,
            label: label.name.clone(),
            display_label: label.display_name.clone(),
            is_defect: !label.is_normal,
            confidence: scores.confidence(),
            probabilities: scores.by_label(manifest),
            attention: scores.attention,
            timings: Timings {
                queue_ms: Timings::ms(result.queue_time),
                preprocess_ms: Timings::ms(preprocess_time),
                inference_ms: Timings::ms(result.inference_time),
                total_ms: Timings::ms(received.elapsed()),
            },
            batch_size: result.batch_size,
            received_at,
            metadata: request.metadata,
            disposition,
            decision,
        };
        let heatmap_png = if request.heatmap {
            Some(self.render_heatmap(&request.image, &verdict).await?)
        } else {
            None
        };
        Ok((verdict, heatmap_png))
    }

    /// Checks everything that does not need the image decoded.
    fn validate(&self, request: &InspectionRequest) -> Result<(), Error> {
        check_id("station_id", &request.station_id)?;
        if let Some(id) = &request.inspection_id {
            check_id("inspection_id", id)?;
        }
        if request.image.is_empty() {
            return Err(Error::BadRequest("image is missing or empty".into()));
        }
        let limit = self.limits.image.max_bytes;
        if request.image.len() > limit {
            return Err(Error::PayloadTooLarge {
                what: "image",
                size: request.image.len(),
                limit,
            });
        }
        let chars = request.note.chars().count();
        if chars > self.limits.max_note_chars {
            return Err(Error::NoteTooLong {
                chars,
                limit: self.limits.max_note_chars,
            });
        }
        if request.metadata.len() > MAX_METADATA_FIELDS {
            return Err(Error::BadRequest(format!(
                "{} metadata fields, at most {MAX_METADATA_FIELDS} allowed",
                request.metadata.len()
            )));
        }
        for (key, value) in &request.metadata {
            check_id("metadata key", key)?;
            if value.chars().count() > MAX_METADATA_VALUE_CHARS {
                return Err(Error::BadRequest(format!(
                    "metadata {key} is longer than {MAX_METADATA_VALUE_CHARS} characters"
                )));
            }
        }
        if let Some(deadline) = request.deadline
            && (deadline.is_zero() || deadline > self.limits.max_deadline)
        {
            return Err(Error::BadRequest(format!(
                "deadline must be between 1ms and {}ms",
                self.limits.max_deadline.as_millis()
            )));
        }
        Ok(())
    }

    /// Decodes, resizes and tokenizes on a blocking thread, at most `preprocess_threads` at once.
    async fn preprocess(
        &self,
        model: &Arc<LoadedModel>,
        request: &InspectionRequest,
    ) -> Result<(Vec<f32>, Vec<i64>), Error> {
        let _slot = self
            .preprocess_slots
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("shutting down"))?;
        let model = Arc::clone(model);
        let image = request.image.clone();
        let note = request.note.clone();
        let limits = self.limits.image;
        let metrics = Arc::clone(&self.metrics);
        tokio::task::spawn_blocking(move || {
            let prepared = prepare_image(&image, &model.manifest.image, &limits)?;
            let tokenize_started = Instant::now();
            let ids = model.tokenizer.encode(&note)?;
            let labels = model.labels();
            metrics.observe_stage(&labels, "decode", prepared.decode_time);
            metrics.observe_stage(&labels, "resize", prepared.resize_time);
            metrics.observe_stage(&labels, "tokenize", tokenize_started.elapsed());
            Ok((prepared.pixels, ids))
        })
        .await
        .map_err(|e| Error::Internal(format!("preprocessing panicked: {e}")))?
    }

    /// Draws the verdict's attention over the image the station sent, on a blocking thread.
    async fn render_heatmap(&self, image: &Bytes, verdict: &Verdict) -> Result<Vec<u8>, Error> {
        let image = image.clone();
        let limits = self.limits.image;
        let attention = verdict.attention.clone();
        let caption = heatmap::Caption {
            label: verdict.display_label.clone(),
            confidence: verdict.confidence,
            disposition: verdict.disposition,
        };
        tokio::task::spawn_blocking(move || {
            let grid = Grid {
                height: attention.height,
                width: attention.width,
            };
            heatmap::render_png(&image, &limits, &attention.values, grid, &caption)
        })
        .await
        .map_err(|e| Error::Internal(format!("heat map rendering panicked: {e}")))?
    }
}

/// An inspection id for a request that brought none.
fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Hex SHA-256 of an image, off the async threads when it is large.
async fn hash(image: &Bytes) -> Result<String, Error> {
    if image.len() <= INLINE_HASH_BYTES {
        return Ok(sha256_hex(image));
    }
    let image = image.clone();
    tokio::task::spawn_blocking(move || sha256_hex(&image))
        .await
        .map_err(|e| Error::Internal(format!("hashing the image panicked: {e}")))
}

fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

fn check_id(field: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::BadRequest(format!("{field} is required")));
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(Error::BadRequest(format!(
            "{field} is longer than {MAX_ID_CHARS} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::BadRequest(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}
