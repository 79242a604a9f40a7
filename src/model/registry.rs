//! The model repository: every model version found under `--model-repository`, each with its
//! own sessions, queue and worker.
//!
//! Two layouts are accepted: Triton's `<repo>/<model>/<version>/manifest.json` (the folder names
//! give the model's address), or a single model folder with `manifest.json` at its root (the
//! manifest's name and version are used).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::manifest::Manifest;
use super::pipeline::{ModelSessions, blank_batch};
use super::runtime::{Provider, Runtime};
use crate::batching::{self, BatchRunner as _, Queue, QueueConfig};
use crate::decision::{DecisionPolicy, ThresholdOverride};
use crate::drift::DriftMonitor;
use crate::error::Error;
use crate::metrics::{Metrics, ModelInfoLabels, ModelLabels};
use crate::preprocess::text::NoteTokenizer;

/// How every model version is loaded and batched.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Session sets per model version (batches that can run at once).
    pub sessions: usize,
    /// Cap on the batch size; the manifest's `max_batch_size` when unset or larger.
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

/// Every loaded model version by name, then version.
pub struct ModelRepository {
    models: BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>>,
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
}

/// Finds and validates every manifest under `root` without opening any graph.
pub fn discover(root: &Path) -> anyhow::Result<Vec<Discovered>> {
    ensure!(
        root.is_dir(),
        "model repository {} is not a folder (--model-repository / KENSA_MODEL_REPOSITORY)",
        std::path::absolute(root)
            .unwrap_or_else(|_| root.to_path_buf())
            .display()
    );
    if root.join("manifest.json").is_file() {
        let manifest = Manifest::load(root)?;
        return Ok(vec![Discovered {
            name: manifest.name.clone(),
            version: manifest.version,
            dir: root.to_path_buf(),
            manifest,
        }]);
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
            let manifest = Manifest::load(&version_dir)?;
            if manifest.name != name {
                tracing::warn!(folder = %name, manifest = %manifest.name, "model is addressed by its folder name");
            }
            found.push(Discovered {
                name: name.clone(),
                version,
                dir: version_dir,
                manifest,
            });
        }
    }
    if found.is_empty() {
        bail!(
            "no model in {}: expected manifest.json there, or <model>/<version>/manifest.json",
            root.display()
        );
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

/// Opens the sessions of one version and warms each set with full-size batches.
///
/// Blocking: call from a blocking thread.
pub fn open_and_warm(
    runtime: &Runtime,
    found: &Discovered,
    options: &LoadOptions,
) -> anyhow::Result<(Vec<ModelSessions>, NoteTokenizer, Provider, Duration)> {
    let manifest = &found.manifest;
    let tokenizer = NoteTokenizer::load(&found.dir.join(&manifest.text.tokenizer), &manifest.text)?;
    let mut pool = Vec::new();
    let mut provider = Provider::Cpu;
    for _ in 0..options.sessions.max(1) {
        let (sessions, used) = ModelSessions::open(runtime, &found.dir, manifest)?;
        provider = used;
        pool.push(sessions);
    }
    let started = Instant::now();
    let batch = blank_batch(
        manifest,
        batch_size(manifest, options),
        manifest.text.max_tokens,
    );
    for sessions in &mut pool {
        for _ in 0..options.warmup_batches {
            sessions.run(&batch).with_context(|| {
                format!(
                    "warm-up of {} in {} failed",
                    found.name,
                    found.dir.display()
                )
            })?;
        }
    }
    Ok((pool, tokenizer, provider, started.elapsed()))
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

/// The batch size a version runs at: the manifest's, capped by the operator.
fn batch_size(manifest: &Manifest, options: &LoadOptions) -> usize {
    options
        .max_batch_size
        .map_or(manifest.max_batch_size, |cap| {
            cap.min(manifest.max_batch_size)
        })
        .max(1)
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
        let mut models: BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>> = BTreeMap::new();
        for model in found {
            let load_options = options.clone();
            let job = model.clone();
            let (pool, tokenizer, provider, warmup) =
                tokio::task::spawn_blocking(move || open_and_warm(runtime, &job, &load_options))
                    .await??;
            let labels = ModelLabels {
                model: model.name.clone(),
                version: model.version.to_string(),
            };
            let sessions = pool.len();
            let queue = batching::start(
                QueueConfig {
                    capacity: options.queue_capacity,
                    max_batch_size: batch_size(&model.manifest, options),
                    max_delay: options.max_delay,
                },
                pool,
                model.manifest.text.pad_id,
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
            };
            tracing::info!(
                model = %loaded.name,
                version = loaded.version,
                %provider,
                sessions,
                max_batch_size = loaded.queue.config().max_batch_size,
                warmup_ms = warmup.as_millis() as u64,
                decision = loaded.decision.is_some(),
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
            models
                .entry(loaded.name.clone())
                .or_default()
                .insert(loaded.version, Arc::new(loaded));
        }
        warn_unused_overrides(&options.thresholds, &models);
        Ok(ModelRepository { models })
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
