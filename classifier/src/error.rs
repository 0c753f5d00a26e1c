//! The crate's one error type, phrased for the person who has to fix the input or the call.

use std::path::PathBuf;

/// Everything that can go wrong while training, evaluating, composing or predicting.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("the feature dimension must be at least 1")]
    ZeroDimension,
    #[error("{values} feature values do not split into {rows} rows of {dim}")]
    RaggedBatch { values: usize, rows: usize, dim: usize },
    #[error("a batch has {keys} keys but {labels} labels")]
    BatchLength { keys: usize, labels: usize },
    #[error("row '{key}' has {got} features, but earlier rows had {expected}")]
    DimensionMismatch { key: String, expected: usize, got: usize },
    #[error("feature {index} of row '{key}' is {value}: features must be finite")]
    NonFinite { key: String, index: usize, value: f32 },
    #[error("row '{key}' has an empty label")]
    EmptyLabel { key: String },
    #[error("pass {pass} ({kind}) saw label '{label}', which the first pass did not: the rows changed between passes")]
    NewLabel { pass: usize, kind: &'static str, label: String },
    #[error("pass {pass} ({kind}) saw {got} rows, the first pass {expected}: every pass must read the same rows")]
    RowCountChanged { pass: usize, kind: &'static str, expected: u64, got: u64 },
    #[error("no rows were fed in the first pass")]
    NoRows,
    #[error("a classifier needs at least 2 labels to train on, found {found}: {labels:?}")]
    TooFewLabels { found: usize, labels: Vec<String> },
    #[error("label '{label}' has no training rows ({rows} rows in all, the validation split took them)")]
    NoTrainingRows { label: String, rows: u64 },
    #[error("there are no validation rows of known labels: the unknown threshold cannot be calibrated")]
    NoValidationRows,
    #[error("{call} called {state}")]
    Protocol { call: &'static str, state: String },
    #[error("invalid option {option}: {message}")]
    InvalidOption { option: &'static str, message: String },
    #[error("held-out labels {held_out:?} are not among the {labels:?} seen in the first pass")]
    UnknownHeldOut { held_out: Vec<String>, labels: Vec<String> },
    #[error("a feature vector of {got} values was given to a model of {expected} features")]
    PredictDimension { expected: usize, got: usize },
    #[error("the model is inconsistent: {0}")]
    InvalidModel(String),
    #[error("backbone ONNX model: {what} (at {at})")]
    Onnx { what: String, at: String },
    #[error("ONNX Runtime: {what}: {message}")]
    Runtime { what: String, message: String },
    #[error("JSON of {what}: {source}")]
    Json { what: &'static str, source: serde_json::Error },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("drawing {what} failed: {message}")]
    Plot { what: &'static str, message: String },
}

pub type Result<T, E = ClassifierError> = std::result::Result<T, E>;

impl ClassifierError {
    pub(crate) fn onnx(what: impl Into<String>, at: impl Into<String>) -> Self {
        Self::Onnx { what: what.into(), at: at.into() }
    }

    pub(crate) fn protocol(call: &'static str, state: impl Into<String>) -> Self {
        Self::Protocol { call, state: state.into() }
    }
}
