//! The hallway every front door goes through: admit, preprocess, enqueue, await, answer.
//!
//! Adapters (HTTP, gRPC, the Open Inference Protocol) turn their wire format into an
//! [`InspectionRequest`] and call [`Inspector::inspect`]; limits, checks, deadlines and metrics
//! live here once, and every verdict is published to [`crate::feed`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{Semaphore, broadcast, oneshot};
use tokio::time::Instant;

use crate::batching::{Entry, Priority};
use crate::error::Error;
use crate::feed::{VerdictEvent, VerdictFeed};
use crate::heatmap;
use crate::metrics::{ErrorLabels, Metrics, VerdictLabels};
use crate::model::registry::{LoadedModel, ModelRepository};
use crate::preprocess::image::{ImageLimits, prepare_image};
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

/// The application service behind every front door.
pub struct Inspector {
    readiness: Arc<Readiness>,
    limits: Limits,
    preprocess_slots: Semaphore,
    metrics: Arc<Metrics>,
    feed: VerdictFeed,
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
        }
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

    /// Inspects one unit and returns its verdict; the verdict is also published to listeners.
    pub async fn inspect(&self, request: InspectionRequest) -> Result<Verdict, Error> {
        let result = self.inspect_inner(request).await;
        match &result {
            Ok(verdict) => self.feed.publish(verdict),
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

    async fn inspect_inner(&self, request: InspectionRequest) -> Result<Verdict, Error> {
        let received = Instant::now();
        let received_at = Utc::now();
        self.validate(&request)?;
        let models = self
            .readiness
            .models()
            .filter(|_| self.readiness.is_ready())
            .ok_or(Error::Unavailable(
                "models are loading or the service is draining",
            ))?;
        let model = models.get(request.model.as_deref(), request.model_version)?;
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
            inspection_id: request
                .inspection_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
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
