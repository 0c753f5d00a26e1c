//! The fruit classifier on top of fruits' features: streaming training, metrics, unknown-fruit
//! scores and their leave-classes-out evaluation, and the one ONNX file the app ships.
//!
//! * [`Trainer`] trains a multinomial logistic regression (standardised features, L2, full-batch
//!   L-BFGS: one pass over the rows per loss evaluation, so the row order does not matter and
//!   memory does not grow with the rows) and the prototypes of the unknown score, on rows the
//!   caller pushes pass after pass. The validation split is stratified and decided per key.
//! * [`Model`] predicts from a feature vector; [`compose`] writes the backbone + head + score as
//!   one ONNX graph that computes the same numbers; [`model_files`] adds `model.json`.
//! * [`LeaveClassesOut`] trains without pairs of labels and measures how well each
//!   [`ScoreKind`] rejects them.
//! * [`k_fold_accuracy`] is a k-fold linear probe of a set of features (`fruits quantize`
//!   compares fp32 and int8 features with it).
//!
//! Pure compute: no Arrow, Parquet, object store or async runtime, and no ONNX Runtime
//! initialisation ([`run_classifier`] and [`measure_latency`] take the caller's session).

mod error;
mod files;
mod kmeans;
mod lbfgs;
mod leave_out;
mod metrics;
mod model;
mod onnx;
mod plot;
mod probe;
mod rng;
mod runtime;
mod score;
mod split;
mod standardize;
#[cfg(test)]
mod testing;
mod trainer;

pub use error::{ClassifierError, Result};
pub use files::{
    CONFUSION_FILE, HEAD_FILE, MANIFEST_FILE, METRICS_FILE, Manifest, ModelFiles, ONNX_FILE, Preprocessing,
    model_files, read_model, read_model_dir, write_model_dir,
};
pub use leave_out::{HoldOut, LeaveClassesOut, LeaveOutOptions, LeaveOutReport, LeaveOutRow, ScoreSummary};
pub use metrics::{ClassMetrics, ConfusionMatrix, Metrics, TrainingSummary, UnknownMetrics};
pub use model::{LinearHead, MODEL_FORMAT_VERSION, Model, Prediction};
pub use onnx::{ComposeOptions, Composed, Dim, PROBABILITIES, TensorInfo, UNKNOWN_SCORE, compose};
pub use plot::confusion_png;
pub use probe::{ProbeReport, k_fold_accuracy};
pub use rng::{SplitMix64, key_hash};
pub use runtime::{ClassifierOutputs, Latency, measure_latency, run_classifier};
pub use score::{Metric, ScoreKind, Space, UnknownScore, auroc, calibrate_threshold};
pub use split::{BUCKETS, LabelSplit, ValidationSplit};
pub use standardize::Standardizer;
pub use trainer::{Pass, PassKind, Row, ScoreEvaluation, TrainOptions, TrainedModel, Trainer};
