//! The model directory an app ships: `fruits-classifier.onnx`, `model.json` (how to feed it and
//! read it) and `head.json` (the head and score for prediction in Rust). The files are built
//! as bytes so that callers write them to any store; [`write_model_dir`] writes a local one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ClassifierError, Result};
use crate::model::Model;
use crate::onnx::{ComposeOptions, TensorInfo, compose};

pub const ONNX_FILE: &str = "fruits-classifier.onnx";
pub const MANIFEST_FILE: &str = "model.json";
pub const HEAD_FILE: &str = "head.json";
pub const METRICS_FILE: &str = "metrics.json";
pub const CONFUSION_FILE: &str = "confusion.png";
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// What an app must do to an image before the model sees it. The defaults are MobileNetV2's
/// as this project feeds it (`mobilenetv2_features.onnx`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub width: u32,
    pub height: u32,
    /// The resampling filter, as Pillow names it (`Image.resize((w, h), Image.BICUBIC)`:
    /// Keys' cubic with a = -0.5, no crop, aspect ratio not kept).
    pub resize: String,
    pub color: String,
    /// `NHWC`: `[batch, height, width, channel]`.
    pub layout: String,
    pub dtype: String,
    /// `value = pixel * scale + offset` for 8-bit pixels: x / 127.5 - 1 gives [-1, 1].
    pub scale: f64,
    pub offset: f64,
}

impl Default for Preprocessing {
    fn default() -> Self {
        Self {
            width: 224,
            height: 224,
            resize: "bicubic".to_owned(),
            color: "RGB".to_owned(),
            layout: "NHWC".to_owned(),
            dtype: "float32".to_owned(),
            scale: 1.0 / 127.5,
            offset: -1.0,
        }
    }
}

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model_file: String,
    pub input: TensorInfo,
    /// `probabilities` [N, classes], `unknown_score` [N], then any kept backbone output.
    pub outputs: Vec<TensorInfo>,
    /// Class names in the order of `probabilities`' columns.
    pub labels: Vec<String>,
    /// The score `unknown_score` computes, e.g. `cosine-raw-k16`.
    pub unknown_score: String,
    /// A photo is of an unknown fruit when `unknown_score > unknown_threshold`.
    pub unknown_threshold: f32,
    pub preprocessing: Preprocessing,
}

/// The three files, as bytes.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub onnx: Vec<u8>,
    pub manifest: Manifest,
    pub manifest_json: Vec<u8>,
    pub head_json: Vec<u8>,
}

/// Composes the ONNX file with `backbone` and describes it.
pub fn model_files(
    model: &Model,
    backbone: &[u8],
    compose_options: &ComposeOptions,
    preprocessing: Preprocessing,
) -> Result<ModelFiles> {
    let composed = compose(backbone, model, compose_options)?;
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        model_file: ONNX_FILE.to_owned(),
        input: composed.input,
        outputs: composed.outputs,
        labels: model.labels.clone(),
        unknown_score: model.score.kind.to_string(),
        unknown_threshold: model.unknown_threshold,
        preprocessing,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| ClassifierError::Json { what: "the manifest", source })?;
    Ok(ModelFiles { onnx: composed.bytes, manifest, manifest_json, head_json: model.to_json()? })
}

/// Writes the files into `dir` (created if missing).
pub fn write_model_dir(dir: &Path, files: &ModelFiles) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ClassifierError::Io { path: dir.to_path_buf(), source })?;
    for (name, bytes) in
        [(ONNX_FILE, &files.onnx), (MANIFEST_FILE, &files.manifest_json), (HEAD_FILE, &files.head_json)]
    {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| ClassifierError::Io { path, source })?;
    }
    Ok(())
}

/// Reads a model and its manifest from their bytes and checks that they agree.
pub fn read_model(head_json: &[u8], manifest_json: &[u8]) -> Result<(Model, Manifest)> {
    let model = Model::from_json(head_json)?;
    let manifest: Manifest = serde_json::from_slice(manifest_json)
        .map_err(|source| ClassifierError::Json { what: "the manifest", source })?;
    if manifest.labels != model.labels || manifest.unknown_threshold != model.unknown_threshold {
        return Err(ClassifierError::InvalidModel(format!(
            "{MANIFEST_FILE} and {HEAD_FILE} disagree on the labels or the threshold"
        )));
    }
    Ok((model, manifest))
}

/// Reads `head.json` and `model.json` from a local directory.
pub fn read_model_dir(dir: &Path) -> Result<(Model, Manifest)> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| ClassifierError::Io { path, source })
    };
    read_model(&read(HEAD_FILE)?, &read(MANIFEST_FILE)?)
}
