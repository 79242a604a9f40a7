//! The hallway every front door goes through: admit, preprocess, enqueue, await, answer.
//!
//! Adapters (HTTP, gRPC, the Open Inference Protocol) turn their wire format into an
//! [`InspectionRequest`] and call [`Inspector::inspect`]; limits, checks, deadlines and metrics
//! live here once, and every new verdict is published to [`crate::feed`].
//!
//! With a verdict store, every verdict is committed to it before it is returned (durable before
//! acknowledged), and a retry with the same (station_id, inspection_id) is answered from the
//! store without a second inference, or refused with a conflict when its image differs. Two
//! concurrent requests with one key may both run inference, but the store keeps only the first
//! commit and both callers get that stored verdict.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{Semaphore, broadcast, oneshot};
use tokio::time::Instant;

use tokio_util::task::TaskTracker;

use crate::batching::{Entry, Priority};
use crate::error::Error;
use crate::feed::{VerdictEvent, VerdictFeed};
use crate::heatmap;
use crate::metrics::{ErrorLabels, Metrics, VerdictLabels};
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
    /// Its cursor in the verdict store; None without a store.
    pub cursor: Option<u64>,
    /// True when this is the stored verdict of an earlier request with the same key.
    pub replayed: bool,
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

/// The verdict store as the inspector writes it.
struct Recording {
    store: SharedStore,
    images: ImageRetention,
}

/// The application service behind every front door.
pub struct Inspector {
    readiness: Arc<Readiness>,
    limits: Limits,
    preprocess_slots: Semaphore,
    metrics: Arc<Metrics>,
    feed: VerdictFeed,
    recording: Option<Recording>,
    background: TaskTracker,
}

impl Inspector {
    /// `preprocess_threads` bounds decode/resize jobs at once, so a burst cannot queue hundreds
    /// of blocking threads against a few cores.
    pub fn new(
        readiness: Arc<Readiness>,
        limits: Limits,
        preprocess_threads: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Inspector {
            readiness,
            limits,
            preprocess_slots: Semaphore::new(preprocess_threads.max(1)),
            metrics,
            feed: VerdictFeed::default(),
            recording: None,
            background: TaskTracker::new(),
        }
    }

    /// Commits every verdict to `store` before answering, and keeps the images `images` says.
    pub fn with_store(mut self, store: SharedStore, images: ImageRetention) -> Self {
        self.recording = Some(Recording { store, images });
        self
    }

    /// The verdict store, when there is one.
    pub fn store(&self) -> Option<&SharedStore> {
        self.recording.as_ref().map(|r| &r.store)
    }

    /// Readiness shared with the health endpoints.
    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// The request limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Every verdict produced from now on, from every front door (see [`crate::feed`]).
    pub fn subscribe(&self) -> broadcast::Receiver<VerdictEvent> {
        self.feed.subscribe()
    }

    /// Inspects one unit and returns its verdict; a new verdict is also published to listeners.
    pub async fn inspect(&self, request: InspectionRequest) -> Result<Verdict, Error> {
        self.inspect_recorded(request).await.map(|i| i.verdict)
    }

    /// Like [`Inspector::inspect`], also saying where the verdict sits in the store and whether
    /// it is a stored answer to an earlier request.
    pub async fn inspect_recorded(&self, request: InspectionRequest) -> Result<Inspected, Error> {
        let result = self.recorded(request).await;
        match &result {
            Ok(inspected) if inspected.replayed => {
                self.metrics.idempotent_replays.inc();
            }
            Ok(inspected) => self.feed.publish(&inspected.verdict),
            Err(error) => {
                self.metrics
                    .errors
                    .get_or_create(&ErrorLabels {
                        code: error.code().to_string(),
                    })
                    .inc();
            }
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
        let Some(recording) = &self.recording else {
            return Err(Error::BadRequest(
                "mode=async needs the verdict store (kensa runs with --store none)".into(),
            ));
        };
        self.validate(&request)?;
        self.ready_models()?
            .get(request.model.as_deref(), request.model_version)?;
        let given = request.inspection_id.is_some();
        let inspection_id = request.inspection_id.get_or_insert_with(new_id).clone();
        let submitted = |stored| Submitted {
            station_id: request.station_id.clone(),
            inspection_id: inspection_id.clone(),
            stored,
        };
        if given {
            let image_sha256 = hash(&request.image).await?;
            if let Some(stored) = recording
                .store
                .get(&request.station_id, &inspection_id)
                .await?
            {
                return replay(stored, &image_sha256).map(|i| submitted(Some(i)));
            }
        }
        let answer = submitted(None);
        let deadline = Instant::now() + request.deadline.unwrap_or(self.limits.max_deadline);
        let inspector = Arc::clone(self);
        self.background.spawn(async move {
            loop {
                let mut attempt = request.clone();
                attempt.deadline = Some(deadline.saturating_duration_since(Instant::now()));
                match inspector.inspect_recorded(attempt).await {
                    Err(Error::QueueFull { retry_after, .. })
                        if Instant::now() + retry_after < deadline =>
                    {
                        tokio::time::sleep(retry_after).await;
                    }
                    Err(error) => {
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

    /// Inspects, committing the verdict to the store first when there is one.
    async fn recorded(&self, mut request: InspectionRequest) -> Result<Inspected, Error> {
        let Some(recording) = &self.recording else {
            let verdict = self.inspect_inner(request).await?;
            return Ok(Inspected {
                verdict,
                cursor: None,
                replayed: false,
            });
        };
        self.validate(&request)?;
        let given = request.inspection_id.is_some();
        let inspection_id = request.inspection_id.get_or_insert_with(new_id).clone();
        let image_sha256 = hash(&request.image).await?;
        let heatmap_image = request.heatmap.then(|| request.image.clone());
        if given
            && let Some(stored) = recording
                .store
                .get(&request.station_id, &inspection_id)
                .await?
        {
            return self
                .with_heatmap(replay(stored, &image_sha256)?, heatmap_image)
                .await;
        }
        let note = request.note.clone();
        let image = request.image.clone();
        let verdict = self.inspect_inner(request).await?;
        let mut kept = verdict.clone();
        kept.heatmap_png = None;
        let record = NewVerdict {
            image: recording.images.keeps(&kept, image.len()).then_some(image),
            verdict: kept,
            note,
            image_sha256: image_sha256.clone(),
        };
        let started = Instant::now();
        let inserted = recording.store.insert(record).await?;
        self.metrics
            .store_write_seconds
            .observe(started.elapsed().as_secs_f64());
        match inserted {
            Inserted::New(stored) => Ok(Inspected {
                verdict,
                cursor: Some(stored.cursor),
                replayed: false,
            }),
            // Another request with this key committed first: its verdict is the one.
            Inserted::Existing(stored) => {
                self.with_heatmap(replay(stored, &image_sha256)?, heatmap_image)
                    .await
            }
        }
    }

    /// Heat maps are not stored: a stored answer that asks for one gets it rendered from the
    /// stored attention over the resent image (the same image: [`replay`] checked its hash).
    async fn with_heatmap(
        &self,
        mut inspected: Inspected,
        image: Option<Bytes>,
    ) -> Result<Inspected, Error> {
        let Some(image) = image else {
            return Ok(inspected);
        };
        let verdict = &mut inspected.verdict;
        let model = self
            .ready_models()?
            .get(Some(&verdict.model), Some(verdict.model_version))?;
        let limits = self.limits.image;
        let spec = model.manifest.image.clone();
        let pixels = tokio::task::spawn_blocking(move || prepare_image(&image, &spec, &limits))
            .await
            .map_err(|e| Error::Internal(format!("preprocessing panicked: {e}")))??
            .pixels;
        let attention = verdict.attention.values.clone();
        verdict.heatmap_png = Some(self.render_heatmap(&model, pixels, attention).await?);
        Ok(inspected)
    }

    fn ready_models(&self) -> Result<&ModelRepository, Error> {
        self.readiness
            .models()
            .filter(|_| self.readiness.is_ready())
            .ok_or(Error::Unavailable(
                "models are loading or the service is draining",
            ))
    }

    async fn inspect_inner(&self, request: InspectionRequest) -> Result<Verdict, Error> {
        let received = Instant::now();
        let received_at = Utc::now();
        self.validate(&request)?;
        let model = self
            .ready_models()?
            .get(request.model.as_deref(), request.model_version)?;
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

        let heatmap_pixels = request.heatmap.then(|| pixels.clone());
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
        let scores =
            Scores::from_outputs(&result.logits, &result.attention, manifest.attention_grid);
        let label = &manifest.labels[scores.index.min(manifest.labels.len() - 1)];
        self.metrics
            .verdicts
            .get_or_create(&VerdictLabels {
                model: model.name.clone(),
                version: model.version.to_string(),
                label: label.name.clone(),
            })
            .inc();
        let heatmap_png = match heatmap_pixels {
            Some(pixels) => Some(
                self.render_heatmap(&model, pixels, scores.attention.values.clone())
                    .await?,
            ),
            None => None,
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            station_id = %request.station_id,
            model = %model.name,
            version = model.version,
            label = %label.name,
            confidence = scores.confidence(),
            batch_size = result.batch_size,
            total_ms = ms(received.elapsed()),
            "verdict"
        );
        Ok(Verdict {
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
                queue_ms: ms(result.queue_time),
                preprocess_ms: ms(preprocess_time),
                inference_ms: ms(result.inference_time),
                total_ms: ms(received.elapsed()),
            },
            batch_size: result.batch_size,
            received_at,
            metadata: request.metadata,
            heatmap_png,
        })
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
        tokio::task::spawn_blocking(move || {
            let prepared = prepare_image(&image, &model.manifest.image, &limits)?;
            let ids = model.tokenizer.encode(&note)?;
            Ok((prepared.pixels, ids))
        })
        .await
        .map_err(|e| Error::Internal(format!("preprocessing panicked: {e}")))?
    }

    async fn render_heatmap(
        &self,
        model: &Arc<LoadedModel>,
        pixels: Vec<f32>,
        attention: Vec<f32>,
    ) -> Result<String, Error> {
        let model = Arc::clone(model);
        let png = tokio::task::spawn_blocking(move || {
            let manifest = &model.manifest;
            heatmap::render_png(
                &pixels,
                &manifest.image,
                &attention,
                manifest.attention_grid,
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("heat map rendering panicked: {e}")))??;
        Ok(base64::engine::general_purpose::STANDARD.encode(png))
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

/// The answer to a request whose key already has a stored verdict: that verdict when the image
/// is the same (a retry), a conflict when it is not (a different unit under a reused id).
fn replay(stored: StoredVerdict, image_sha256: &str) -> Result<Inspected, Error> {
    if stored.image_sha256 != image_sha256 {
        return Err(Error::Conflict(format!(
            "station {:?} already has a verdict for inspection {:?} (cursor {}) with a different \
             image (sha256 {} stored, {} sent); a retry must resend the same image, a new unit \
             needs a new inspection_id",
            stored.verdict.station_id,
            stored.verdict.inspection_id,
            stored.cursor,
            short(&stored.image_sha256),
            short(image_sha256),
        )));
    }
    Ok(Inspected {
        verdict: stored.verdict,
        cursor: Some(stored.cursor),
        replayed: true,
    })
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
