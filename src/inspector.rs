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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::access::Caller;
use crate::batching::{Entry, Priority};
use crate::error::Error;
use crate::heatmap;
use crate::metrics::{ConfidenceLabels, DriftLabels, Metrics, VerdictLabels};
use crate::model::manifest::Grid;
use crate::model::registry::{LoadedModel, ModelRepository};
use crate::ocr::{self, OcrRead};
use crate::preprocess::image::{ImageLimits, prepare_image, prepare_image_and_frame};
use crate::store::record::sha256_hex;
use crate::store::retention::ImageRetention;
use crate::store::{Inserted, NewVerdict, SharedStore, StoredVerdict};
use crate::text::check_text;
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
    /// Who sent it, as the access gate found; a station it may not submit for is refused.
    pub caller: Caller,
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
pub const MAX_ID_CHARS: usize = 128;
/// Longest metadata value.
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
/// Most metadata fields.
pub const MAX_METADATA_FIELDS: usize = 32;

/// Whether the service takes work: models loaded and warm, not draining, and the store able
/// to commit.
#[derive(Default)]
pub struct Readiness {
    models: RwLock<Option<Arc<ModelRepository>>>,
    draining: AtomicBool,
    store_down: AtomicBool,
}

impl Readiness {
    /// Publishes the loaded, warmed-up models (at start, and each reload swaps the whole
    /// set at once); from the first call on the service is ready.
    pub fn set_models(&self, models: Arc<ModelRepository>) {
        *self.models.write().unwrap_or_else(PoisonError::into_inner) = Some(models);
    }

    /// Marks the service as draining: no longer ready, still finishing work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Records whether the store can commit (see `store::health`).
    pub fn set_store_up(&self, up: bool) {
        self.store_down.store(!up, Ordering::SeqCst);
    }

    /// True when requests are accepted.
    pub fn is_ready(&self) -> bool {
        self.models().is_some()
            && !self.draining.load(Ordering::SeqCst)
            && !self.store_down.load(Ordering::SeqCst)
    }

    /// The models in service now, once warm; a request keeps the set it started with.
    pub fn models(&self) -> Option<Arc<ModelRepository>> {
        self.models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

/// A key of the store: (station_id, inspection_id).
type Key = (String, String);

/// What tells two submissions under one key apart: the image's SHA-256 and the note.
type Fingerprint = (String, String);

/// The application service behind every front door.
pub struct Inspector {
    readiness: Arc<Readiness>,
    limits: Limits,
    preprocess_slots: Semaphore,
    metrics: Arc<Metrics>,
    store: SharedStore,
    images: ImageRetention,
    background: TaskTracker,
    /// Asynchronous submissions still running, so a second one under the same key with other
    /// content is refused at once instead of being dropped when it reaches the store.
    running: Mutex<HashMap<Key, Fingerprint>>,
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
            running: Mutex::new(HashMap::new()),
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
        let key = (request.station_id.clone(), inspection_id.clone());
        let fingerprint = (image_sha256.clone(), request.note.clone());
        if !self.start_running(&key, fingerprint)? {
            return Ok(answer);
        }
        let deadline = Instant::now() + request.deadline.unwrap_or(self.limits.max_deadline);
        let inspector = Arc::clone(self);
        self.background.spawn(async move {
            let _running = RunningGuard {
                inspector: &inspector,
                key,
            };
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

    /// Marks an asynchronous submission as running under `key`: true when it is new, false
    /// when the same unit is already running (a retry: nothing more to do), a conflict when
    /// another unit is running under the key.
    fn start_running(&self, key: &Key, fingerprint: Fingerprint) -> Result<bool, Error> {
        let mut running = match self.running.lock() {
            Ok(running) => running,
            Err(poisoned) => poisoned.into_inner(),
        };
        match running.get(key) {
            Some(other) if *other == fingerprint => Ok(false),
            Some(_) => Err(Error::Conflict(format!(
                "station {:?} has an asynchronous inspection {:?} still running with a \
                 different image or note; a new unit needs a new inspection_id",
                key.0, key.1
            ))),
            None => {
                running.insert(key.clone(), fingerprint);
                Ok(true)
            }
        }
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
        let unit = Unit::of(&request, self.limits.default_deadline);
        let (verdict, heatmap_png) = self.infer(request).await?;
        self.commit(unit, image_sha256, verdict, heatmap_png).await
    }

    /// Inspects the units of one batch all or nothing (the Open Inference Protocol's batches):
    /// every unit is checked, and inferred or found stored, before any is committed, so a batch
    /// refused with a 4xx, 429 or 504 stores nothing. One key twice in a batch is refused.
    pub async fn inspect_all(
        &self,
        requests: Vec<InspectionRequest>,
    ) -> Result<Vec<Inspected>, Error> {
        let result = async {
            let mut keys = HashSet::new();
            for request in &requests {
                self.validate(request)?;
                if let Some(id) = &request.inspection_id
                    && !keys.insert((&request.station_id, id))
                {
                    return Err(Error::BadRequest(format!(
                        "inspection_id {id:?} of station {:?} appears twice in the batch",
                        request.station_id
                    )));
                }
            }
            let ready =
                futures::future::try_join_all(requests.into_iter().map(|mut request| async move {
                    let image_sha256 = hash(&request.image).await?;
                    if let Some(stored) = self.lookup(&mut request).await? {
                        return Ok(Ready::Stored(Box::new(
                            self.replay(stored, &image_sha256, &request).await?,
                        )));
                    }
                    let unit = Unit::of(&request, self.limits.default_deadline);
                    let (verdict, heatmap_png) = self.infer(request).await?;
                    Ok::<_, Error>(Ready::Inferred(Box::new((
                        unit,
                        image_sha256,
                        verdict,
                        heatmap_png,
                    ))))
                }))
                .await?;
            let mut inspected = Vec::with_capacity(ready.len());
            for unit in ready {
                inspected.push(match unit {
                    Ready::Stored(stored) => *stored,
                    Ready::Inferred(inferred) => {
                        let (unit, image_sha256, verdict, heatmap_png) = *inferred;
                        self.commit(unit, image_sha256, verdict, heatmap_png)
                            .await?
                    }
                });
            }
            Ok(inspected)
        }
        .await;
        if let Ok(all) = &result {
            let replays = all.iter().filter(|i| i.replayed).count();
            self.metrics.idempotent_replays.inc_by(replays as u64);
        }
        result
    }

    /// Commits a verdict within the unit's deadline; the answer is whichever verdict the store
    /// kept. A commit that misses the deadline is not acknowledged (504); the station retries
    /// with the same key and gets the verdict if the commit landed after all.
    async fn commit(
        &self,
        unit: Unit,
        image_sha256: String,
        verdict: Verdict,
        heatmap_png: Option<Vec<u8>>,
    ) -> Result<Inspected, Error> {
        let record = NewVerdict {
            image: self
                .images
                .keeps(&verdict, unit.request.image.len())
                .then_some(unit.request.image.clone()),
            verdict,
            note: unit.request.note.clone(),
            image_sha256: image_sha256.clone(),
        };
        let started = Instant::now();
        let inserted = tokio::time::timeout_at(unit.deadline, self.store.insert(record))
            .instrument(tracing::info_span!("store"))
            .await;
        let inserted = match inserted {
            Ok(inserted) => inserted?,
            Err(_) => {
                return Err(Error::DeadlineExceeded {
                    deadline: unit.deadline_after,
                });
            }
        };
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
            Inserted::Existing(stored) => self.replay(stored, &image_sha256, &unit.request).await,
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
        if stored.note != request.note {
            return Err(Error::Conflict(format!(
                "station {:?} already has a verdict for inspection {:?} (cursor {}) with the \
                 same image but a different note; a retry must resend the same note, a new \
                 unit needs a new inspection_id",
                stored.verdict.station_id, stored.verdict.inspection_id, stored.cursor,
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

    fn ready_models(&self) -> Result<Arc<ModelRepository>, Error> {
        self.readiness
            .models()
            .filter(|_| self.readiness.is_ready())
            .ok_or(Error::Unavailable(
                "models are loading, the service is draining, or the store cannot commit",
            ))
    }

    /// Preprocesses, queues, waits for the batch and builds the verdict (and the heat map when
    /// asked for). The request is validated and carries its inspection id.
    async fn infer(&self, request: InspectionRequest) -> Result<(Verdict, Option<Vec<u8>>), Error> {
        let received = Instant::now();
        let received_at = Utc::now();
        let model = self.ready_models()?.get_routed(
            request.model.as_deref(),
            request.model_version,
            &request.station_id,
            request.metadata.get("line").map(String::as_str),
        )?;
        let span = tracing::Span::current();
        span.record("model", model.name.as_str());
        span.record("version", model.version);
        let tally = model.stats.begin();
        let deadline_after = request.deadline.unwrap_or(self.limits.default_deadline);
        let deadline = received + deadline_after;
        let place = model.queue.reserve()?;

        let preprocess_started = Instant::now();
        let Prepared {
            pixels,
            input_ids,
            ocr,
        } = self
            .preprocess(&model, &request)
            .instrument(tracing::info_span!("preprocess"))
            .await?;
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
            span: tracing::Span::current(),
        })?;
        let answered = tokio::time::timeout_at(deadline, answer)
            .instrument(tracing::info_span!("batched"))
            .await;
        let result = match answered {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(Error::Internal("the batch worker dropped a request".into())),
            Err(_) => {
                return Err(Error::DeadlineExceeded {
                    deadline: deadline_after,
                });
            }
        };
        tally.succeeded(result.queue_time, result.inference_time);

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
                ocr_ms: ocr.as_ref().map_or(0.0, |o| Timings::ms(o.took)),
                total_ms: Timings::ms(received.elapsed()),
            },
            batch_size: result.batch_size,
            received_at,
            metadata: request.metadata,
            disposition,
            decision,
            model_note: ocr.as_ref().map(|o| o.model_note.clone()),
            ocr: ocr.map(|o| o.read),
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
        if !request.caller.may_submit_for(&request.station_id) {
            return Err(Error::Forbidden(format!(
                "client {:?} may not submit for station {:?}",
                &*request.caller.name, request.station_id
            )));
        }
        check_text("note", &request.note)?;
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
            check_text(&format!("metadata {key}"), value)?;
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

    /// Decodes, resizes, reads the text on the frame (models with an `ocr` section) and
    /// tokenizes the note the model sees, on a blocking thread, at most `preprocess_threads`
    /// at once.
    async fn preprocess(
        &self,
        model: &Arc<LoadedModel>,
        request: &InspectionRequest,
    ) -> Result<Prepared, Error> {
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
            let labels = model.labels();
            let (prepared, read) = match &model.ocr {
                None => (prepare_image(&image, &model.manifest.image, &limits)?, None),
                Some(ocr) => {
                    let (prepared, frame) =
                        prepare_image_and_frame(&image, &model.manifest.image, &limits)?;
                    let started = Instant::now();
                    let read = ocr::read_frame(&ocr.reader, ocr.spec.region, &frame)?;
                    let took = started.elapsed();
                    metrics
                        .ocr_seconds
                        .get_or_create(&labels)
                        .observe(took.as_secs_f64());
                    let seen = ocr.spec.join.join(&note, &read.text);
                    (
                        prepared,
                        Some(OcrOutcome {
                            read,
                            model_note: seen,
                            took,
                        }),
                    )
                }
            };
            let tokenize_started = Instant::now();
            let seen = read
                .as_ref()
                .map_or(note.as_str(), |r| r.model_note.as_str());
            let ids = model.tokenizer.encode(seen)?;
            metrics.observe_stage(&labels, "decode", prepared.decode_time);
            metrics.observe_stage(&labels, "resize", prepared.resize_time);
            metrics.observe_stage(&labels, "tokenize", tokenize_started.elapsed());
            Ok(Prepared {
                pixels: prepared.pixels,
                input_ids: ids,
                ocr: read,
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("preprocessing panicked: {e}")))?
    }

    /// Draws the verdict's attention over the image the station sent, on a blocking thread
    /// (also for a stored verdict over its retained image, for the operator page).
    pub async fn render_heatmap(&self, image: &Bytes, verdict: &Verdict) -> Result<Vec<u8>, Error> {
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

/// What a commit needs of its request: the image and note it stores or compares, whether a
/// heat map was asked for, and the deadline that also covers the commit.
struct Unit {
    request: InspectionRequest,
    deadline: Instant,
    deadline_after: Duration,
}

impl Unit {
    fn of(request: &InspectionRequest, default_deadline: Duration) -> Unit {
        let deadline_after = request.deadline.unwrap_or(default_deadline);
        Unit {
            request: InspectionRequest {
                image: request.image.clone(),
                note: request.note.clone(),
                heatmap: request.heatmap,
                ..InspectionRequest::default()
            },
            deadline: Instant::now() + deadline_after,
            deadline_after,
        }
    }
}

/// A unit of a batch before the batch commits.
enum Ready {
    /// Its key was already stored: the stored verdict.
    Stored(Box<Inspected>),
    /// Inferred, waiting for the batch to commit.
    Inferred(Box<(Unit, String, Verdict, Option<Vec<u8>>)>),
}

/// Forgets a running asynchronous submission when its task ends, however it ends.
struct RunningGuard<'a> {
    inspector: &'a Inspector,
    key: Key,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.inspector.running.lock() {
            running.remove(&self.key);
        }
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

/// One request prepared for the queue, with what OCR read when the model reads its frame.
struct Prepared {
    pixels: Vec<f32>,
    input_ids: Vec<i64>,
    ocr: Option<OcrOutcome>,
}

/// What OCR read on a frame, the note the model therefore sees, and how long reading took.
struct OcrOutcome {
    read: OcrRead,
    model_note: String,
    took: Duration,
}
