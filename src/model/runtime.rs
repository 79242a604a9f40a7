//! ONNX Runtime: loading the shared library, choosing the execution provider, and opening
//! sessions.
//!
//! ONNX Runtime allows one environment per process, so the first [`Runtime::init`] wins and
//! later calls (for example several servers started by one test binary) share it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, anyhow, bail};
use clap::ValueEnum;
use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use serde::Serialize;

use super::profile::OptimizationProfile;

/// The ONNX Runtime release kensa is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// What a GPU provider needs, said wherever one could not be used.
const GPU_HINT: &str = "The CUDA and TensorRT providers need ONNX Runtime's GPU build \
     (scripts/setup-ort.sh --gpu), CUDA 12 and cuDNN 9 on the library path, TensorRT 10 for \
     tensorrt, and a visible GPU (nvidia-smi); see scripts/gpu-check.sh";

/// Which execution provider the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// TensorRT, else CUDA, else CPU: the best the machine offers.
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA; failing to register is a startup error.
    Cuda,
    /// TensorRT (with CUDA behind it); failing to register is a startup error.
    Tensorrt,
}

/// The execution provider actually in use, reported by `/v1/models` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's default CPU provider.
    Cpu,
    /// NVIDIA CUDA.
    Cuda,
    /// NVIDIA TensorRT.
    Tensorrt,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        })
    }
}

/// Everything that decides how sessions are opened.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeOptions {
    /// Path of libonnxruntime.so. Default: .ort/lib/libonnxruntime.so.1.31.1 under the working
    /// directory or beside the executable (scripts/setup-ort.sh puts it there).
    #[arg(long = "ort-library", env = "ORT_DYLIB_PATH", value_name = "FILE")]
    pub library: Option<PathBuf>,
    /// Execution provider: auto tries TensorRT, then CUDA, then CPU.
    #[arg(long, env = "KENSA_DEVICE", value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// GPU ordinal for CUDA and TensorRT.
    #[arg(long, env = "KENSA_DEVICE_ID", default_value_t = 0)]
    pub device_id: i32,
    /// Let TensorRT build fp16 engines.
    #[arg(long, env = "KENSA_TRT_FP16")]
    pub trt_fp16: bool,
    /// Folder for TensorRT's engine cache, so restarts skip the engine build.
    #[arg(long, env = "KENSA_TRT_ENGINE_CACHE", value_name = "DIR")]
    pub trt_engine_cache: Option<PathBuf>,
    /// Upper bound of the CUDA memory arena, in bytes.
    #[arg(long, env = "KENSA_CUDA_MEMORY_LIMIT", value_name = "BYTES")]
    pub cuda_memory_limit: Option<usize>,
    /// Threads each session may use inside one operator (0: kensa decides, so that sessions x
    /// threads <= cores; see --sessions).
    #[arg(long, env = "KENSA_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// Let ONNX Runtime's threads spin while waiting for work: faster on a machine dedicated to
    /// kensa, wasted CPU on a shared one.
    #[arg(long, env = "KENSA_ORT_SPIN")]
    pub ort_spin: bool,
}

impl RuntimeOptions {
    /// The CPU, `intra_threads` per operator, no spinning, the library where
    /// scripts/setup-ort.sh puts it: what a test or a benchmark of one graph pair runs on.
    pub fn cpu(intra_threads: usize) -> RuntimeOptions {
        RuntimeOptions {
            library: None,
            device: DeviceChoice::Cpu,
            device_id: 0,
            trt_fp16: false,
            trt_engine_cache: None,
            cuda_memory_limit: None,
            intra_threads,
            ort_spin: false,
        }
    }
}

/// The process-wide ONNX Runtime environment and the provider chosen for it.
pub struct Runtime {
    environment: Environment,
    options: RuntimeOptions,
    /// Set when the first session resolves `auto` to a concrete provider.
    resolved: Mutex<Option<Provider>>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

impl Runtime {
    /// Loads ONNX Runtime once per process; a missing library is an error that says what to run.
    pub fn init(options: &RuntimeOptions) -> anyhow::Result<&'static Runtime> {
        let _guard = INIT
            .lock()
            .map_err(|_| anyhow!("ONNX Runtime initialisation panicked"))?;
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime);
        }
        let library = find_library(options.library.as_deref())?;
        let environment = ort::init_from(&library)
            .map_err(|e| anyhow!("cannot load ONNX Runtime from {}: {e}", library.display()))?
            .with_name("kensa")
            .with_telemetry(false)
            .build()
            .map_err(|e| anyhow!("cannot create the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %library.display(), "ONNX Runtime loaded");
        let runtime = Runtime {
            environment,
            options: options.clone(),
            resolved: Mutex::new(None),
        };
        Ok(RUNTIME.get_or_init(|| runtime))
    }

    /// The provider in use, once a session has been opened.
    pub fn provider(&self) -> Option<Provider> {
        self.resolved.lock().ok().and_then(|p| *p)
    }

    /// Opens a session for `file` on the configured provider, with `intra_threads` threads
    /// inside an operator.
    ///
    /// With `auto`, the first session tries each provider in order and the winner is kept for
    /// every later session, so all graphs of all models run on the same device.
    pub fn open(
        &self,
        file: &Path,
        intra_threads: usize,
        shapes: &OptimizationProfile,
    ) -> anyhow::Result<(Session, Provider)> {
        let mut resolved = self
            .resolved
            .lock()
            .map_err(|_| anyhow!("a previous session open panicked"))?;
        let candidates = match (*resolved, self.options.device) {
            (Some(provider), _) => vec![provider],
            (None, DeviceChoice::Auto) => vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            (None, DeviceChoice::Cpu) => vec![Provider::Cpu],
            (None, DeviceChoice::Cuda) => vec![Provider::Cuda],
            (None, DeviceChoice::Tensorrt) => vec![Provider::Tensorrt],
        };
        let mut failures = Vec::new();
        for provider in candidates {
            match self.open_with(file, provider, intra_threads, shapes) {
                Ok(session) => {
                    if resolved.is_none() {
                        if failures.is_empty() {
                            tracing::info!(%provider, "execution provider selected");
                        } else {
                            // Said once, loudly: a GPU node quietly running on CPU is slow.
                            tracing::warn!(
                                %provider,
                                unavailable = %failures.join("; "),
                                hint = GPU_HINT,
                                "--device auto fell back"
                            );
                        }
                    }
                    *resolved = Some(provider);
                    return Ok((session, provider));
                }
                Err(error) => {
                    tracing::debug!(%provider, %error, "execution provider unavailable");
                    failures.push(format!("{provider}: {error:#}"));
                }
            }
        }
        let hint = if self.options.device == DeviceChoice::Cpu {
            ""
        } else {
            GPU_HINT
        };
        bail!(
            "cannot open {}: {}. {hint}",
            file.display(),
            failures.join("; ")
        )
    }

    fn open_with(
        &self,
        file: &Path,
        provider: Provider,
        intra_threads: usize,
        shapes: &OptimizationProfile,
    ) -> anyhow::Result<Session> {
        let spin = self.options.ort_spin;
        let mut builder = Session::builder(&self.environment)
            .map_err(|e| anyhow!("{e}"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| anyhow!("{e}"))?
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| anyhow!("{e}"))?
            .with_intra_op_spinning(spin)
            .map_err(|e| anyhow!("{e}"))?
            .with_inter_op_spinning(spin)
            .map_err(|e| anyhow!("{e}"))?;
        let providers = self.execution_providers(provider, shapes);
        if !providers.is_empty() {
            builder = builder
                .with_execution_providers(providers)
                .map_err(|e| anyhow!("{e}"))?;
        }
        builder
            .commit_from_file(file)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("on {provider}"))
    }

    fn execution_providers(
        &self,
        provider: Provider,
        shapes: &OptimizationProfile,
    ) -> Vec<ExecutionProviderDispatch> {
        let options = &self.options;
        let mut cuda = ep::CUDA::default().with_device_id(options.device_id);
        if let Some(limit) = options.cuda_memory_limit {
            cuda = cuda.with_memory_limit(limit);
        }
        match provider {
            Provider::Cpu => Vec::new(),
            Provider::Cuda => vec![cuda.build().error_on_failure()],
            Provider::Tensorrt => {
                let mut trt = ep::TensorRT::default()
                    .with_device_id(options.device_id)
                    .with_fp16(options.trt_fp16)
                    .with_profile_min_shapes(&shapes.min)
                    .with_profile_opt_shapes(&shapes.opt)
                    .with_profile_max_shapes(&shapes.max);
                if let Some(cache) = &options.trt_engine_cache {
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(cache.display());
                }
                vec![
                    trt.build().error_on_failure(),
                    cuda.build().error_on_failure(),
                ]
            }
        }
    }
}

/// Where the library is looked for, in order, when no path is given.
fn default_locations() -> Vec<PathBuf> {
    let name = format!("libonnxruntime.so.{ORT_VERSION}");
    let mut places = vec![PathBuf::from(".ort/lib").join(&name)];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            places.push(dir.join(".ort/lib").join(&name));
        }
    }
    places
}

fn find_library(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    const HINT: &str = "run scripts/setup-ort.sh (or scripts/setup-ort.sh --gpu), \
                        or point --ort-library / ORT_DYLIB_PATH at libonnxruntime.so";
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!(
            "ONNX Runtime library {} does not exist: {HINT}",
            path.display()
        );
    }
    let places = default_locations();
    places.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
        anyhow!(
            "ONNX Runtime {ORT_VERSION} not found (looked in {}): {HINT}",
            looked.join(", ")
        )
    })
}
