//! Model lifecycle: the first load, and reloads that roll out new versions without stopping the
//! line.
//!
//! A reload (SIGHUP, `POST /v1/models/reload`, or the repository poll) reads the repository
//! again. A version whose folder did not change keeps serving as it is; a new or changed one is
//! loaded, validated and warmed beside what serves, and only then does the whole set switch at
//! once ([`Readiness::set_models`]). Requests already holding the old set finish on it; a
//! version left out is unloaded when its last request is answered. A version that fails to load
//! leaves what served before in service and is reported: in the log, in
//! `kensa_model_load_failures_total` and in `GET /v1/models`. The same broken files are not
//! tried again until they change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::registry::{
    Fingerprint, LoadOptions, LoadedModel, ModelRepository, discover_each, load_version,
};
use super::routing::VersionPolicy;
use super::runtime::Runtime;
use crate::error::Error;
use crate::inspector::Readiness;
use crate::metrics::{Metrics, ModelInfoLabels, ModelLabels};

/// Loads the repository and keeps it current.
pub struct ModelLifecycle {
    root: PathBuf,
    runtime: &'static Runtime,
    options: LoadOptions,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Versions whose current files failed, by (model, version).
    failures: Mutex<BTreeMap<(String, u64), LoadFailure>>,
}

/// A version that failed to load or validate.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// Model name.
    pub model: String,
    /// Version number.
    pub version: u64,
    /// The version folder.
    pub folder: String,
    /// Why, as the loader said it.
    pub error: String,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// Whether an older load of this version still serves.
    pub previous_serving: bool,
    #[serde(skip)]
    fingerprint: Fingerprint,
}

/// One model version, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionRef {
    /// Model name.
    pub model: String,
    /// Version number.
    pub version: u64,
}

/// What a reload did.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    /// Versions loaded (new, or changed on disk) and now serving.
    pub loaded: Vec<VersionRef>,
    /// Versions gone from the repository, unloaded once their last request finishes.
    pub unloaded: Vec<VersionRef>,
    /// Versions serving as before.
    pub unchanged: Vec<VersionRef>,
    /// Versions that failed this time or before with the same files.
    pub failed: Vec<LoadFailure>,
}

impl ReloadReport {
    /// Whether anything changed in service.
    pub fn changed(&self) -> bool {
        !self.loaded.is_empty() || !self.unloaded.is_empty()
    }
}

impl ModelLifecycle {
    /// A lifecycle for the repository at `root`; nothing is loaded until [`Self::load_first`].
    pub fn new(
        root: PathBuf,
        runtime: &'static Runtime,
        options: LoadOptions,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> ModelLifecycle {
        ModelLifecycle {
            root,
            runtime,
            options,
            metrics,
            readiness,
            reloading: tokio::sync::Mutex::new(()),
            failures: Mutex::default(),
        }
    }

    /// Loads every version at start; any failure is fatal (a server must not come up missing
    /// a model it was given).
    pub async fn load_first(&self) -> anyhow::Result<()> {
        let _one = self.reloading.lock().await;
        let repository =
            ModelRepository::load(&self.root, self.runtime, &self.options, &self.metrics).await?;
        self.readiness.set_models(Arc::new(repository));
        Ok(())
    }

    /// Which discovered versions are loaded.
    pub fn version_policy(&self) -> &VersionPolicy {
        &self.options.version_policy
    }

    /// Versions whose current files do not load.
    pub fn failures(&self) -> Vec<LoadFailure> {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Reads the repository again and switches to what it holds (see the module comment).
    pub async fn reload(&self) -> Result<ReloadReport, Error> {
        let _one = self.reloading.lock().await;
        let current = self
            .readiness
            .models()
            .ok_or(Error::Unavailable("models are still loading"))?;
        let root = self.root.clone();
        let scan = tokio::task::spawn_blocking(move || discover_each(&root))
            .await
            .map_err(|e| Error::Internal(format!("repository scan panicked: {e}")))?
            .map_err(|e| Error::Internal(format!("cannot read the model repository: {e:#}")))?;
        let scan = self
            .options
            .version_policy
            .select(scan, |found| match found {
                Ok(found) => (found.name.as_str(), found.version),
                Err(bad) => (bad.name.as_str(), bad.version),
            });

        let mut report = ReloadReport::default();
        let mut next: Vec<Arc<LoadedModel>> = Vec::new();
        let mut failed_now: BTreeMap<(String, u64), LoadFailure> = BTreeMap::new();
        let known_failures = self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for found in scan {
            let (name, version, fingerprint) = match &found {
                Ok(found) => (found.name.clone(), found.version, found.fingerprint.clone()),
                Err(bad) => (bad.name.clone(), bad.version, bad.fingerprint.clone()),
            };
            let serving = current.find(&name, version).cloned();
            let key = (name.clone(), version);
            let reference = VersionRef {
                model: name.clone(),
                version,
            };
            if let Some(model) = serving.as_ref().filter(|m| m.fingerprint == fingerprint) {
                next.push(Arc::clone(model));
                report.unchanged.push(reference);
                continue;
            }
            if let Some(failure) = known_failures
                .get(&key)
                .filter(|f| f.fingerprint == fingerprint)
            {
                next.extend(serving);
                failed_now.insert(key, failure.clone());
                continue;
            }
            let loaded = match found {
                Ok(found) => {
                    let dir = found.dir.display().to_string();
                    load_version(found, self.runtime, &self.options, &self.metrics)
                        .await
                        .map_err(|e| (dir, format!("{e:#}")))
                }
                Err(bad) => Err((bad.dir.display().to_string(), bad.error)),
            };
            match loaded {
                Ok(model) => {
                    tracing::info!(model = %name, version, "model version now serving");
                    next.push(Arc::new(model));
                    report.loaded.push(reference);
                }
                Err((folder, error)) => {
                    tracing::error!(
                        model = %name,
                        version,
                        folder = %folder,
                        error = %error,
                        previous_serving = serving.is_some(),
                        "model version failed to load; what served before keeps serving"
                    );
                    self.metrics
                        .model_load_failures
                        .get_or_create(&ModelLabels {
                            model: name.clone(),
                            version: version.to_string(),
                        })
                        .inc();
                    failed_now.insert(
                        key,
                        LoadFailure {
                            model: name,
                            version,
                            folder,
                            error,
                            at: Utc::now(),
                            previous_serving: serving.is_some(),
                            fingerprint,
                        },
                    );
                    next.extend(serving);
                }
            }
        }
        report.failed = failed_now.values().cloned().collect();
        *self.failures.lock().unwrap_or_else(PoisonError::into_inner) = failed_now;
        if next.is_empty() {
            return Err(Error::Conflict(
                "the repository holds no model that loads; the models in service stay".into(),
            ));
        }
        let next = ModelRepository::from_versions(next, self.options.version_routes.clone());
        for gone in current.iter().filter(|m| {
            next.find(&m.name, m.version)
                .is_none_or(|n| !Arc::ptr_eq(n, m))
        }) {
            if next.find(&gone.name, gone.version).is_none() {
                report.unloaded.push(VersionRef {
                    model: gone.name.clone(),
                    version: gone.version,
                });
                tracing::info!(
                    model = %gone.name,
                    version = gone.version,
                    "model version unloaded once its last request finishes"
                );
            }
            self.metrics.model_info.remove(&ModelInfoLabels {
                model: gone.name.clone(),
                version: gone.version.to_string(),
                provider: gone.provider.to_string(),
            });
        }
        for model in next.iter() {
            self.metrics
                .model_info
                .get_or_create(&ModelInfoLabels {
                    model: model.name.clone(),
                    version: model.version.to_string(),
                    provider: model.provider.to_string(),
                })
                .set(1);
        }
        if report.changed() {
            self.readiness.set_models(Arc::new(next));
        }
        Ok(report)
    }

    /// Reloads every `every` until `stop`; a reload that changes nothing says nothing.
    pub async fn poll(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if self.readiness.models().is_none() {
                continue;
            }
            if let Err(error) = self.reload().await {
                tracing::warn!(%error, "model repository poll");
            }
        }
    }
}
