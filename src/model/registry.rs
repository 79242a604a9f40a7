//! The model repository: every model version found under `--model-repository`, each with its
//! own sessions, queue and worker.
//!
//! The set is immutable: a reload ([`super::lifecycle`]) builds a new one that shares the
//! versions that did not change, and a version left out is unloaded when its last request
//! finishes (its queue closes on drop, and the worker and sessions go with it).
//!
//! Two layouts are accepted: Triton's `<repo>/<model>/<version>/manifest.json` (the folder names
//! give the model's address), or a single model folder with `manifest.json` at its root (the
//! manifest's name and version are used).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};

use super::batch_cap::{self, BatchCap};
use super::manifest::Manifest;
use super::pipeline::{ModelSessions, blank_batch};
use super::routing::{VersionPolicy, VersionRoute, routed_version};
use super::runtime::{Provider, Runtime};
use super::stats::ModelStats;
use super::threading::{ThreadingPlan, ThreadingRequest, available_cores};
use crate::batching::{self, BatchBuckets, BatchRunner as _, Queue, QueueConfig, Stacking};
use crate::decision::{DecisionPolicy, ThresholdOverride};
use crate::drift::DriftMonitor;
use crate::error::Error;
use crate::metrics::{Metrics, ModelInfoLabels, ModelLabels};
use crate::ocr::spec::OcrSpec;
use crate::ocr::{Bgr, OcrReader};
use crate::preprocess::text::NoteTokenizer;

/// How every model version is loaded and batched.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Session sets per model version and threads per session, as asked for.
    pub threading: ThreadingRequest,
    /// Batch sizes batches are padded to.
    pub buckets: BucketChoice,
    /// Cap on the batch size (the manifest's `max_batch_size` when larger); when unset, the
    /// cap is measured at warm-up ([`batch_cap`]).
    pub max_batch_size: Option<usize>,
    /// Queue capacity per model version.
    pub queue_capacity: usize,
    /// Longest time a batch waits to fill.
    pub max_delay: Duration,
    /// Full-size batches run through each session set before the model is ready.
    pub warmup_batches: usize,
    /// Per-station and per-line overrides of the models' decision thresholds.
    pub thresholds: Vec<ThresholdOverride>,
    /// Recent verdicts the drift gauges compare with validation.
    pub drift_window: usize,
    /// Leave the manifests' `ocr` sections unused (`--disable-ocr`).
    pub disable_ocr: bool,
    /// Which discovered versions are loaded.
    pub version_policy: VersionPolicy,
    /// The version a station or line gets when a request names none.
    pub version_routes: Vec<VersionRoute>,
}

/// One model version, loaded and serving.
pub struct LoadedModel {
    /// Name clients address it by.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Its contract.
    pub manifest: Manifest,
    /// Its note tokenizer.
    pub tokenizer: NoteTokenizer,
    /// Its batch queue.
    pub queue: Queue,
    /// The execution provider its sessions run on.
    pub provider: Provider,
    /// Its pass / fail / review rule, when the manifest has one.
    pub decision: Option<DecisionPolicy>,
    /// Recent verdicts against validation, when the manifest records its distribution.
    pub drift: Option<DriftMonitor>,
    /// Batches in flight and threads per batch.
    pub threading: ThreadingPlan,
    /// Batch sizes batches are padded to (none on CPU).
    pub buckets: BatchBuckets,
    /// The largest batch it forms, and how that was chosen.
    pub batch_cap: BatchCap,
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// Its folder's files when loaded: a reload loads the version again only if they changed.
    pub fingerprint: Fingerprint,
    /// When it started serving.
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    /// Its requests' counts and times (Open Inference Protocol statistics).
    pub stats: ModelStats,
    /// Its OCR reader, when the manifest has an `ocr` section and OCR is on.
    pub ocr: Option<ModelOcr>,
}

/// A model's OCR: the reader and the manifest section that says how its text is used.
pub struct ModelOcr {
    /// The opened graphs.
    pub reader: OcrReader,
    /// Region, confidence, how the text joins the note.
    pub spec: OcrSpec,
}

impl Drop for LoadedModel {
    /// The version is out of the repository and no request holds it: what waits is answered,
    /// then the worker ends and the sessions are freed.
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The name, size and modification time of every file in a version folder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(String, u64, Option<SystemTime>)>);

impl Fingerprint {
    /// Reads the folder's files (not sub-folders such as fixtures).
    pub fn of(dir: &Path) -> Fingerprint {
        let mut files: Vec<(String, u64, Option<SystemTime>)> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| {
                        let meta = std::fs::metadata(entry.path()).ok()?;
                        meta.is_file().then(|| {
                            (
                                entry.file_name().to_string_lossy().into_owned(),
                                meta.len(),
                                meta.modified().ok(),
                            )
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        Fingerprint(files)
    }
}

/// Which batch sizes batches are padded to (`--batch-buckets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketChoice {
    /// Powers of two up to the largest batch on TensorRT, where fixed shapes pay; none
    /// elsewhere.
    Auto,
    /// No padding.
    None,
    /// These sizes (and the largest batch).
    Sizes(Vec<usize>),
}

impl BucketChoice {
    /// Parses `auto`, `none` or a comma-separated list of sizes.
    pub fn parse(text: &str) -> Result<BucketChoice, String> {
        match text.trim() {
            "auto" => Ok(BucketChoice::Auto),
            "none" => Ok(BucketChoice::None),
            list => list
                .split(',')
                .map(|size| match size.trim().parse::<usize>() {
                    Ok(size) if size > 0 => Ok(size),
                    _ => Err(format!(
                        "{size:?} is not a batch size; give auto, none or sizes like 1,2,4,8,16"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(BucketChoice::Sizes),
        }
    }

    /// The buckets for a provider and a largest batch.
    pub fn buckets(&self, provider: Provider, max_batch_size: usize) -> BatchBuckets {
        match self {
            BucketChoice::Auto if provider == Provider::Tensorrt => {
                BatchBuckets::powers_of_two(max_batch_size)
            }
            BucketChoice::Auto | BucketChoice::None => BatchBuckets::none(),
            BucketChoice::Sizes(sizes) => BatchBuckets::from_sizes(sizes, max_batch_size),
        }
    }
}

impl LoadedModel {
    /// Metric labels naming this version.
    pub fn labels(&self) -> ModelLabels {
        ModelLabels {
            model: self.name.clone(),
            version: self.version.to_string(),
        }
    }
}

/// Every loaded model version by name, then version, and the configured version routes.
pub struct ModelRepository {
    models: BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>>,
    routes: Vec<VersionRoute>,
}

/// A model version found on disk, not yet loaded.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// Address name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Folder holding manifest.json.
    pub dir: PathBuf,
    /// The parsed, self-consistent manifest.
    pub manifest: Manifest,
    /// The folder's files as found.
    pub fingerprint: Fingerprint,
}

/// A version folder whose manifest does not load.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// Address name (the model folder's).
    pub name: String,
    /// Version number (the version folder's).
    pub version: u64,
    /// The version folder.
    pub dir: PathBuf,
    /// The folder's files as found.
    pub fingerprint: Fingerprint,
    /// Why.
    pub error: String,
}

/// Finds and validates every manifest under `root` without opening any graph; the first
/// manifest that does not load is the error (at startup a broken repository is fatal).
pub fn discover(root: &Path) -> anyhow::Result<Vec<Discovered>> {
    let found: Vec<Discovered> = discover_each(root)?
        .into_iter()
        .map(|found| found.map_err(|bad| anyhow::anyhow!(bad.error)))
        .collect::<anyhow::Result<_>>()?;
    if found.is_empty() {
        bail!(
            "no model in {}: expected manifest.json there, or <model>/<version>/manifest.json",
            root.display()
        );
    }
    Ok(found)
}

/// Finds every version folder under `root`, each with its manifest or why it does not load
/// (a reload keeps serving the rest); none found is not an error here.
pub fn discover_each(root: &Path) -> anyhow::Result<Vec<Result<Discovered, Unreadable>>> {
    ensure!(
        root.is_dir(),
        "model repository {} is not a folder (--model-repository / KENSA_MODEL_REPOSITORY)",
        std::path::absolute(root)
            .unwrap_or_else(|_| root.to_path_buf())
            .display()
    );
    if root.join("manifest.json").is_file() {
        let manifest = Manifest::load(root)?;
        return Ok(vec![Ok(Discovered {
            name: manifest.name.clone(),
            version: manifest.version,
            dir: root.to_path_buf(),
            fingerprint: Fingerprint::of(root),
            manifest,
        })]);
    }
    let mut found = Vec::new();
    for model in sorted_dirs(root)? {
        let name = file_name(&model);
        for version_dir in sorted_dirs(&model)? {
            let Ok(version) = file_name(&version_dir).parse::<u64>() else {
                continue;
            };
            if !version_dir.join("manifest.json").is_file() {
                continue;
            }
            let fingerprint = Fingerprint::of(&version_dir);
            let manifest = match Manifest::load(&version_dir) {
                Ok(manifest) => manifest,
                Err(error) => {
                    found.push(Err(Unreadable {
                        name: name.clone(),
                        version,
                        dir: version_dir,
                        fingerprint,
                        error: format!("{error:#}"),
                    }));
                    continue;
                }
            };
            if manifest.name != name {
                tracing::warn!(folder = %name, manifest = %manifest.name, "model is addressed by its folder name");
            }
            found.push(Ok(Discovered {
                name: name.clone(),
                version,
                dir: version_dir,
                manifest,
                fingerprint,
            }));
        }
    }
    Ok(found)
}

fn sorted_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One version's sessions, opened and warm, and how they are arranged.
pub struct Opened {
    /// One session set per batch in flight.
    pub pool: Vec<ModelSessions>,
    /// The note tokenizer.
    pub tokenizer: NoteTokenizer,
    /// The execution provider in use.
    pub provider: Provider,
    /// Batches in flight and threads per batch.
    pub threading: ThreadingPlan,
    /// Batch sizes batches are padded to.
    pub buckets: BatchBuckets,
    /// The largest batch, as given or as measured at warm-up.
    pub batch_cap: BatchCap,
    /// Time the warm-up took.
    pub warmup: Duration,
    /// The OCR reader, when the manifest asks for one and OCR is on.
    pub ocr: Option<ModelOcr>,
}

/// Opens the session sets of one version, as many as the threading plan says, and warms each:
/// when the operator gave no `--max-batch-size`, by timing every candidate batch size on all
/// sets at once to choose the cap ([`batch_cap`]), else with full-size batches; then each
/// bucket size once.
///
/// Blocking: call from a blocking thread.
pub fn open_and_warm(
    runtime: &Runtime,
    found: &Discovered,
    options: &LoadOptions,
) -> anyhow::Result<Opened> {
    let manifest = &found.manifest;
    let tokenizer = NoteTokenizer::load(&found.dir.join(&manifest.text.tokenizer), &manifest.text)?;
    let cores = available_cores();
    let upper_bound = batch_size(manifest, options);
    let intra_threads = options.threading.intra_threads(cores);
    let open = || ModelSessions::open(runtime, &found.dir, manifest, intra_threads, upper_bound);
    let (first, provider) = open()?;
    let threading = options.threading.plan(cores, provider);
    let mut pool = vec![first];
    for _ in 1..threading.sessions {
        pool.push(open()?.0);
    }
    let mut pool: Vec<ModelSessions> = pool
        .into_iter()
        .map(|sessions| sessions.with_parallel_encoders(threading.parallel_encoders))
        .collect();
    let failed = || {
        format!(
            "warm-up of {} in {} failed",
            found.name,
            found.dir.display()
        )
    };
    let blank = |rows: usize| blank_batch(manifest, rows, manifest.text.max_tokens);
    let started = Instant::now();
    let measure = options.max_batch_size.is_none() && options.warmup_batches > 0;
    let (batch_cap, full_batches) = if measure {
        let sizes = batch_cap::candidates(upper_bound);
        let measured = batch_cap::measure(&mut pool, &sizes, batch_cap::TIMED_ROUNDS, blank)
            .with_context(failed)?;
        (BatchCap::chosen(upper_bound, measured), 0)
    } else {
        (BatchCap::fixed(upper_bound), options.warmup_batches)
    };
    let buckets = options.buckets.buckets(provider, batch_cap.size);
    let full = std::iter::repeat_n(batch_cap.size, full_batches);
    let warm_sizes: Vec<usize> = full.chain(buckets.sizes().iter().copied()).collect();
    for sessions in &mut pool {
        for &rows in &warm_sizes {
            sessions.run(&blank(rows)).with_context(failed)?;
        }
    }
    let warmup = started.elapsed();
    let ocr = match &manifest.ocr {
        Some(spec) if !options.disable_ocr => Some(open_ocr(
            runtime,
            found,
            spec,
            threading.sessions,
            intra_threads,
        )?),
        _ => None,
    };
    Ok(Opened {
        pool,
        tokenizer,
        provider,
        threading,
        buckets,
        batch_cap,
        warmup,
        ocr,
    })
}

/// Opens a version's OCR graphs (one pair per session set, so reads run side by side as
/// batches do) and reads one blank frame through them.
fn open_ocr(
    runtime: &Runtime,
    found: &Discovered,
    spec: &OcrSpec,
    sets: usize,
    intra_threads: usize,
) -> anyhow::Result<ModelOcr> {
    let reader = OcrReader::open(
        runtime,
        &found.dir.join(&spec.detector),
        &found.dir.join(&spec.recogniser),
        sets,
        intra_threads,
        spec.settings(),
    )
    .with_context(|| format!("OCR graphs of {} in {}", found.name, found.dir.display()))?;
    let blank = Bgr {
        width: 64,
        height: 64,
        data: vec![0; 64 * 64 * 3],
    };
    reader
        .read(&blank)
        .map_err(|e| anyhow::anyhow!("OCR warm-up of {} failed: {e}", found.name))?;
    Ok(ModelOcr {
        reader,
        spec: spec.clone(),
    })
}

/// Says which configured overrides apply to no loaded model (a misspelt model name, or a model
/// whose manifest has no decision section), so they do not go unnoticed.
fn warn_unused_overrides(
    overrides: &[ThresholdOverride],
    models: &BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>>,
) {
    for entry in overrides {
        let used = models.values().flat_map(|v| v.values()).any(|model| {
            model
                .decision
                .as_ref()
                .is_some_and(|policy| policy.overrides.contains(entry))
        });
        if !used {
            tracing::warn!(
                override = %serde_json::to_string(entry).unwrap_or_default(),
                "this [[thresholds]] entry applies to no loaded model with a decision section"
            );
        }
    }
}

/// The largest batch a version may run: the manifest's, capped by the operator.
pub fn batch_size(manifest: &Manifest, options: &LoadOptions) -> usize {
    options
        .max_batch_size
        .map_or(manifest.max_batch_size, |cap| {
            cap.min(manifest.max_batch_size)
        })
        .max(1)
}

/// Opens and warms one version, starts its queue and worker and says so in the log and the
/// `kensa_model_info` gauge.
pub async fn load_version(
    model: Discovered,
    runtime: &'static Runtime,
    options: &LoadOptions,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<LoadedModel> {
    let load_options = options.clone();
    let job = model.clone();
    let opened =
        tokio::task::spawn_blocking(move || open_and_warm(runtime, &job, &load_options)).await??;
    let labels = ModelLabels {
        model: model.name.clone(),
        version: model.version.to_string(),
    };
    let Opened {
        pool,
        tokenizer,
        provider,
        threading,
        buckets,
        batch_cap,
        warmup,
        ocr,
    } = opened;
    let queue = batching::start(
        QueueConfig {
            capacity: options.queue_capacity,
            max_batch_size: batch_cap.size,
            max_delay: options.max_delay,
        },
        pool,
        Stacking {
            pad_id: model.manifest.text.pad_id,
            buckets: buckets.clone(),
        },
        Arc::clone(metrics),
        labels,
    );
    let decision = model
        .manifest
        .decision
        .clone()
        .map(|spec| DecisionPolicy::new(&model.name, spec, &options.thresholds));
    let names: Vec<String> = model
        .manifest
        .labels
        .iter()
        .map(|l| l.name.clone())
        .collect();
    let drift = model
        .manifest
        .validation_distribution
        .as_ref()
        .map(|reference| DriftMonitor::new(reference, &names, options.drift_window));
    let loaded = LoadedModel {
        name: model.name,
        version: model.version,
        manifest: model.manifest,
        tokenizer,
        queue,
        provider,
        decision,
        drift,
        threading,
        buckets,
        batch_cap,
        dir: model.dir,
        fingerprint: model.fingerprint,
        loaded_at: chrono::Utc::now(),
        stats: ModelStats::default(),
        ocr,
    };
    tracing::info!(
        model = %loaded.name,
        version = loaded.version,
        %provider,
        cores = threading.cores,
        sessions = threading.sessions,
        intra_threads = threading.intra_threads,
        spinning = threading.spinning,
        parallel_encoders = threading.parallel_encoders,
        automatic = threading.automatic,
        buckets = ?loaded.buckets.sizes(),
        max_batch_size = loaded.queue.config().max_batch_size,
        max_batch_size_measured = loaded.batch_cap.automatic,
        batch_images_per_s = %serde_json::to_string(&loaded.batch_cap.measured).unwrap_or_default(),
        max_queue_delay_ms = options.max_delay.as_secs_f64() * 1000.0,
        warmup_ms = warmup.as_millis() as u64,
        decision = loaded.decision.is_some(),
        ocr = loaded.ocr.is_some(),
        "model ready"
    );
    if let Some(policy) = &loaded.decision {
        for entry in &policy.overrides {
            tracing::info!(
                model = %loaded.name,
                version = loaded.version,
                override = %serde_json::to_string(entry).unwrap_or_default(),
                "decision thresholds overridden"
            );
        }
    }
    metrics
        .model_info
        .get_or_create(&ModelInfoLabels {
            model: loaded.name.clone(),
            version: loaded.version.to_string(),
            provider: provider.to_string(),
        })
        .set(1);
    Ok(loaded)
}

impl ModelRepository {
    /// Loads every version under `root`, warms it up and starts its queue and worker.
    pub async fn load(
        root: &Path,
        runtime: &'static Runtime,
        options: &LoadOptions,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<ModelRepository> {
        let root = root.to_path_buf();
        let found = tokio::task::spawn_blocking(move || discover(&root)).await??;
        let found = options
            .version_policy
            .select(found, |f| (f.name.as_str(), f.version));
        let mut models: BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>> = BTreeMap::new();
        for model in found {
            let loaded = load_version(model, runtime, options, metrics).await?;
            models
                .entry(loaded.name.clone())
                .or_default()
                .insert(loaded.version, Arc::new(loaded));
        }
        warn_unused_overrides(&options.thresholds, &models);
        Ok(ModelRepository {
            models,
            routes: options.version_routes.clone(),
        })
    }

    /// A repository of these versions (a reload's result) with the configured routes.
    pub fn from_versions(
        versions: impl IntoIterator<Item = Arc<LoadedModel>>,
        routes: Vec<VersionRoute>,
    ) -> ModelRepository {
        let mut models: BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>> = BTreeMap::new();
        for model in versions {
            models
                .entry(model.name.clone())
                .or_default()
                .insert(model.version, model);
        }
        ModelRepository { models, routes }
    }

    /// Like [`Self::get`], but a request that names no version gets the version its station
    /// or line is routed to (`[[versions]]`), when that version is loaded.
    pub fn get_routed(
        &self,
        name: Option<&str>,
        version: Option<u64>,
        station: &str,
        line: Option<&str>,
    ) -> Result<Arc<LoadedModel>, Error> {
        if version.is_some() || self.routes.is_empty() {
            return self.get(name, version);
        }
        let newest = self.get(name, None)?;
        let routed = routed_version(&self.routes, &newest.name, station, line)
            .and_then(|v| self.find(&newest.name, v));
        Ok(routed.cloned().unwrap_or(newest))
    }

    /// The configured version routes.
    pub fn routes(&self) -> &[VersionRoute] {
        &self.routes
    }

    /// One loaded version, if it is.
    pub fn find(&self, name: &str, version: u64) -> Option<&Arc<LoadedModel>> {
        self.models.get(name)?.get(&version)
    }

    /// The requested model, or the only one when none is named; the newest version unless one
    /// is named.
    pub fn get(&self, name: Option<&str>, version: Option<u64>) -> Result<Arc<LoadedModel>, Error> {
        let versions = match name {
            Some(name) => self
                .models
                .get(name)
                .ok_or_else(|| Error::ModelNotFound(name.to_string()))?,
            None if self.models.len() == 1 => self
                .models
                .values()
                .next()
                .ok_or_else(|| Error::ModelNotFound("(none loaded)".into()))?,
            None => {
                let names: Vec<&str> = self.models.keys().map(String::as_str).collect();
                return Err(Error::BadRequest(format!(
                    "several models are loaded, name one of {names:?} in the model field"
                )));
            }
        };
        let found = match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        };
        found.cloned().ok_or_else(|| {
            let name = name.unwrap_or_default();
            Error::ModelNotFound(match version {
                Some(v) => format!("{name} version {v}"),
                None => name.to_string(),
            })
        })
    }

    /// Every loaded version, by name then version.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedModel>> {
        self.models.values().flat_map(|versions| versions.values())
    }

    /// Every version of one model, oldest first.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.models
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }
}
