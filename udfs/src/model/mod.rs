//! The embedding model: ONNX Runtime sessions over one ONNX file, fed in batches.

mod pool;
mod runtime;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::preprocess::{DecodeError, DecodeLimits, InputSpec, Layout, preprocess_into};
use pool::SessionPool;
use runtime::locate_library;
pub use runtime::{ORT_LIBRARY_ENV, ORT_VERSION};

/// Errors of the model runtime. Unlike a bad image, these stop the job: they mean the
/// process cannot featurize anything.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime {ORT_VERSION} library not found (looked for {}); run `make setup` \
         (scripts/setup-onnxruntime.sh) to install it, or give its path with --ort-library or {ORT_LIBRARY_ENV}",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    RuntimeNotFound { searched: Vec<PathBuf> },
    #[error("cannot load ONNX Runtime from {}: {message}", .path.display())]
    RuntimeLoad { path: PathBuf, message: String },
    #[error("model file {} not found", .0.display())]
    ModelNotFound(PathBuf),
    #[error("cannot load model {}: {message}", .path.display())]
    ModelLoad { path: PathBuf, message: String },
    #[error("model {} does not match the configuration: {message}", .path.display())]
    Mismatch { path: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Which model to run and how to feed it. The defaults fit
/// `mobilenetv2_features.onnx` (MobileNetV2 1.0/224, NHWC, [-1, 1], 1280 features).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_path: PathBuf,
    /// ONNX Runtime library; `None` searches the default locations.
    pub ort_library: Option<PathBuf>,
    pub input_name: String,
    pub output_name: String,
    pub input: InputSpec,
    /// Most images per inference call; larger calls are split. 1 by default: on ONNX Runtime's
    /// CPU provider MobileNetV2 runs fastest one image at a time (2 cores: 327 images/s at
    /// batch 1, 279 at 8, 243 at 32).
    pub max_batch: usize,
    pub limits: DecodeLimits,
}

impl ModelConfig {
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            ort_library: None,
            input_name: "input".to_owned(),
            output_name: "features".to_owned(),
            input: InputSpec::default(),
            max_batch: 1,
            limits: DecodeLimits::default(),
        }
    }
}

/// How many sessions to keep and how many threads each may use; both at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    sessions: NonZeroUsize,
    threads_per_session: NonZeroUsize,
}

impl Parallelism {
    pub fn new(sessions: NonZeroUsize, threads_per_session: NonZeroUsize) -> Self {
        Self { sessions, threads_per_session }
    }

    /// One single-threaded session per task slot (at least one): tasks featurize side by side,
    /// each on its own core. Measured on 2 cores at batch 1, two sessions of one thread run
    /// 327 images/s against 260 for one session of two. And a process never starts more
    /// inference threads than it has task slots, so executors sharing a host with `--vcores`
    /// summing to its cores do not oversubscribe it (ONNX Runtime's intra-op threads spin
    /// while they wait, and oversubscribed spinning threads collapse the rate).
    pub fn for_task_slots(slots: usize) -> Self {
        let sessions = NonZeroUsize::new(slots).unwrap_or(NonZeroUsize::MIN);
        Self::new(sessions, NonZeroUsize::MIN)
    }

    /// One session on every core this process may run on, for a caller that featurizes one
    /// batch at a time (`fruits predict`, `fruits quantize`).
    pub fn one_session_on_all_cores() -> Self {
        Self::new(NonZeroUsize::MIN, available_cores())
    }

    /// The same sessions, each with `threads` threads.
    pub fn with_threads_per_session(self, threads: NonZeroUsize) -> Self {
        Self { threads_per_session: threads, ..self }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.get()
    }

    pub fn threads_per_session(&self) -> usize {
        self.threads_per_session.get()
    }
}

/// The cores this process may run on: its CPU affinity and cgroup quota, as
/// [`std::thread::available_parallelism`] reads them (`taskset`, `docker --cpus`), at least one.
pub fn available_cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// A session on the ONNX model `bytes` (a composed classifier, say) with `threads` threads, on
/// the process's one ONNX Runtime environment (which this loads first if no [`Featurizer`]
/// has), for callers that run a model of their own rather than featurize.
pub fn inference_session(
    bytes: &[u8],
    ort_library: Option<&std::path::Path>,
    threads: NonZeroUsize,
) -> Result<Session, ModelError> {
    let library = locate_library(ort_library)?;
    let environment = runtime::environment(&library)?;
    Session::builder(environment)
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::All).map_err(Into::into))
        .and_then(|b| b.with_intra_threads(threads.get()).map_err(Into::into))
        .and_then(|mut b| b.commit_from_memory(bytes))
        .map_err(|e| ModelError::ModelLoad { path: PathBuf::from("<in memory>"), message: e.to_string() })
}

/// A loaded model: validated against its [`ModelConfig`], ready to featurize image bytes.
pub struct Featurizer {
    config: ModelConfig,
    parallelism: Parallelism,
    feature_dim: usize,
    fingerprint: String,
    pool: SessionPool,
    /// Images handed to [`Self::featurize`] so far, decodable or not: the progress of a job
    /// running in this process.
    images_seen: AtomicU64,
}

impl std::fmt::Debug for Featurizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Featurizer")
            .field("model", &self.config.model_path)
            .field("feature_dim", &self.feature_dim)
            .finish_non_exhaustive()
    }
}

impl Featurizer {
    /// Loads ONNX Runtime and the model, checks the model against `config`, and opens
    /// `parallelism.sessions` sessions.
    pub fn load(config: ModelConfig, parallelism: Parallelism) -> Result<Self, ModelError> {
        let library = locate_library(config.ort_library.as_deref())?;
        let environment = runtime::environment(&library)?;
        if !config.model_path.is_file() {
            return Err(ModelError::ModelNotFound(config.model_path.clone()));
        }
        let load_error =
            |e: ort::Error| ModelError::ModelLoad { path: config.model_path.clone(), message: e.to_string() };
        let mut sessions = Vec::with_capacity(parallelism.sessions());
        for _ in 0..parallelism.sessions() {
            let session = Session::builder(environment)
                .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::All).map_err(Into::into))
                .and_then(|b| b.with_intra_threads(parallelism.threads_per_session()).map_err(Into::into))
                .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
                .and_then(|mut b| b.commit_from_file(&config.model_path))
                .map_err(load_error)?;
            sessions.push(session);
        }
        let feature_dim = validate(&sessions[0], &config)?;
        let fingerprint = fingerprint(&config)?;
        log::info!(
            "loaded {} ({} sessions x {} threads, {} features) with ONNX Runtime {}",
            config.model_path.display(),
            parallelism.sessions(),
            parallelism.threads_per_session(),
            feature_dim,
            library.display()
        );
        Ok(Self {
            config,
            parallelism,
            feature_dim,
            fingerprint,
            pool: SessionPool::new(sessions),
            images_seen: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The sessions this featurizer runs and their threads.
    pub fn parallelism(&self) -> Parallelism {
        self.parallelism
    }

    /// Length of one feature vector (1280 for MobileNetV2).
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// What makes these features these: the model file's SHA-256 and the preprocessing that
    /// feeds it. Features of two fingerprints are never mixed in one committed result.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Number of images this featurizer has processed since it was loaded.
    pub fn images_seen(&self) -> u64 {
        self.images_seen.load(Ordering::Relaxed)
    }

    /// Featurizes each image: a vector of [`Self::feature_dim`] floats, or why the image could
    /// not be decoded. Only a failure of the runtime itself is an `Err` of the whole call.
    pub fn featurize(&self, images: &[&[u8]]) -> Result<Vec<Result<Vec<f32>, DecodeError>>, ModelError> {
        let spec = &self.config.input;
        let per_image = spec.values_per_image();
        let mut results = Vec::with_capacity(images.len());
        let mut batch = Vec::new();
        for chunk in images.chunks(self.config.max_batch.max(1)) {
            batch.clear();
            batch.resize(chunk.len() * per_image, 0.0);
            // Decoded images take consecutive slots; `slots[i]` is image i's slot or its error.
            let mut decoded = 0;
            let slots: Vec<Result<usize, DecodeError>> = chunk
                .iter()
                .map(|bytes| {
                    let slot = &mut batch[decoded * per_image..(decoded + 1) * per_image];
                    preprocess_into(bytes, &self.config.limits, spec, slot).map(|()| {
                        decoded += 1;
                        decoded - 1
                    })
                })
                .collect();
            let features = if decoded > 0 { self.infer(&batch[..decoded * per_image], decoded)? } else { Vec::new() };
            results.extend(
                slots
                    .into_iter()
                    .map(|slot| slot.map(|i| features[i * self.feature_dim..(i + 1) * self.feature_dim].to_vec())),
            );
            self.images_seen.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok(results)
    }

    /// Decodes, resizes and scales one image into `out` ([`InputSpec::values_per_image`]
    /// floats) the way [`Self::featurize`] does; with [`Self::infer`], what `fruits bench` times
    /// separately.
    pub fn preprocess_into(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), DecodeError> {
        preprocess_into(bytes, &self.config.limits, &self.config.input, out)
    }

    /// Runs the model on `n` preprocessed images laid out as the input spec says; returns
    /// `n * feature_dim` floats.
    pub fn infer(&self, tensor: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        let inference = |e: ort::Error| ModelError::Inference(e.to_string());
        let shape = self.config.input.shape(n);
        self.pool.with_session(|session| {
            let input = TensorRef::from_array_view((shape, tensor)).map_err(inference)?;
            let outputs = session.run(ort::inputs![self.config.input_name.as_str() => input]).map_err(inference)?;
            let output = outputs
                .get(&self.config.output_name)
                .ok_or_else(|| ModelError::Inference(format!("no output named '{}'", self.config.output_name)))?;
            let (out_shape, values) = output.try_extract_tensor::<f32>().map_err(inference)?;
            if values.len() != n * self.feature_dim {
                return Err(ModelError::Inference(format!(
                    "output '{}' has shape {:?}, expected [{n}, {}]",
                    self.config.output_name,
                    &out_shape[..],
                    self.feature_dim
                )));
            }
            Ok(values.to_vec())
        })
    }
}

/// `sha256:<hex of the model file> <input name> <width>x<height> <layout> <scaling>
/// resize=pillow-bicubic <output name>`: the model and everything that decides its input.
fn fingerprint(config: &ModelConfig) -> Result<String, ModelError> {
    use sha2::Digest;
    let bytes = std::fs::read(&config.model_path)
        .map_err(|e| ModelError::ModelLoad { path: config.model_path.clone(), message: e.to_string() })?;
    let digest = sha2::Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let spec = &config.input;
    Ok(format!(
        "sha256:{hex} {} {}x{} {:?} {:?} resize=pillow-bicubic {}",
        config.input_name, spec.width, spec.height, spec.layout, spec.scaling, config.output_name
    )
    .to_lowercase())
}

/// Checks the model's declared input and output against the configuration and returns the
/// feature dimension, so that a wrong model or a wrong layout is refused at start, not after
/// the first batch of a long job.
fn validate(session: &Session, config: &ModelConfig) -> Result<usize, ModelError> {
    let mismatch = |message: String| ModelError::Mismatch { path: config.model_path.clone(), message };
    let names =
        |outlets: &[ort::value::Outlet]| outlets.iter().map(|o| o.name().to_owned()).collect::<Vec<_>>().join(", ");
    let describe = |dtype: &ValueType| match dtype {
        ValueType::Tensor { ty, shape, .. } => format!("{ty:?} tensor of shape {:?}", &shape[..]),
        other => format!("{other:?}"),
    };

    let input = session.inputs().iter().find(|o| o.name() == config.input_name).ok_or_else(|| {
        mismatch(format!("no input named '{}' (the model's inputs: {})", config.input_name, names(session.inputs())))
    })?;
    let spec = &config.input;
    let expected = spec.shape(1);
    let expected_text = match spec.layout {
        Layout::Nhwc => format!("float32 [N, {}, {}, 3] (NHWC)", spec.height, spec.width),
        Layout::Nchw => format!("float32 [N, 3, {}, {}] (NCHW)", spec.height, spec.width),
    };
    let input_ok = match input.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => {
            shape.len() == 4 && shape.iter().zip(expected).skip(1).all(|(&dim, want)| dim < 0 || dim as usize == want)
        }
        _ => false,
    };
    if !input_ok {
        return Err(mismatch(format!(
            "input '{}' is a {}, expected {expected_text}; check the model's layout and size settings",
            config.input_name,
            describe(input.dtype())
        )));
    }

    let output = session.outputs().iter().find(|o| o.name() == config.output_name).ok_or_else(|| {
        mismatch(format!(
            "no output named '{}' (the model's outputs: {})",
            config.output_name,
            names(session.outputs())
        ))
    })?;
    match output.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } if shape.len() == 2 && shape[1] > 0 => {
            Ok(shape[1] as usize)
        }
        other => Err(mismatch(format!(
            "output '{}' is a {}, expected float32 [N, D] with a fixed D",
            config.output_name,
            describe(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint is the file's content and the feeding, not its name: an int8 copy of a
    /// model (`fruits quantize`) fed the same way gets its own, and a copy of the same bytes
    /// elsewhere keeps it, so results made with either are never mixed.
    #[test]
    fn fingerprint_follows_the_file_content_and_the_feeding() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            ModelConfig::new(path)
        };
        let fp32 = fingerprint(&write("model.onnx", b"fp32 weights")).unwrap();
        let int8 = fingerprint(&write("model-int8.onnx", b"int8 weights")).unwrap();
        let copy = fingerprint(&write("elsewhere.onnx", b"fp32 weights")).unwrap();
        assert_ne!(fp32, int8);
        assert_eq!(fp32, copy);
        let rest = |f: &str| f.split_once(' ').map(|(_, rest)| rest.to_owned());
        assert_eq!(rest(&fp32), rest(&int8), "the same feeding");
        assert_eq!(rest(&fp32).as_deref(), Some("input 224x224 nhwc symmetric resize=pillow-bicubic features"));

        let mut nchw = write("model.onnx", b"fp32 weights");
        nchw.input.layout = Layout::Nchw;
        assert_ne!(fingerprint(&nchw).unwrap(), fp32);
    }
}
