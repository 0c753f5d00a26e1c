//! The trained classifier: linear head, unknown score and threshold, and prediction in Rust
//! with the same arithmetic as the ONNX graph [`crate::compose`] writes.

use serde::{Deserialize, Serialize};

use crate::error::{ClassifierError, Result};
use crate::score::{ScoreKind, UnknownScore};
use crate::standardize::Standardizer;

/// Version of the `head.json` layout; bumped when a field changes meaning.
pub const MODEL_FORMAT_VERSION: u32 = 1;

/// `logits = features · weights + bias` on the raw features: the standardisation the head was
/// trained with is folded into `weights` and `bias`, so the ONNX graph needs one `MatMul` + `Add`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    /// Row-major `[dim, classes]`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Everything prediction needs, serialisable as `head.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub format_version: u32,
    /// Class names in output order (sorted).
    pub labels: Vec<String>,
    pub dim: usize,
    pub head: LinearHead,
    /// The training rows' moments, for scores in standardised space.
    pub standardizer: Standardizer,
    pub score: UnknownScore,
    /// Rows scoring above this are unknown; calibrated to keep the asked share of known
    /// validation rows.
    pub unknown_threshold: f32,
}

/// One row's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Softmax over the model's labels, in label order.
    pub probabilities: Vec<f32>,
    pub unknown_score: f32,
    /// `unknown_score > unknown_threshold`.
    pub unknown: bool,
}

impl Prediction {
    /// The `k` most probable class indices with their probabilities, most probable first
    /// (ties by lower index).
    pub fn top_k(&self, k: usize) -> Vec<(usize, f32)> {
        let mut order: Vec<(usize, f32)> = self.probabilities.iter().copied().enumerate().collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        order.truncate(k);
        order
    }

    /// The most probable class index.
    pub fn best(&self) -> usize {
        argmax(&self.probabilities)
    }
}

impl Model {
    pub fn classes(&self) -> usize {
        self.labels.len()
    }

    pub fn score_kind(&self) -> ScoreKind {
        self.score.kind
    }

    /// Predicts one row of raw backbone features.
    pub fn predict(&self, features: &[f32]) -> Result<Prediction> {
        let mut scratch = Vec::new();
        self.predict_with(features, &mut scratch)
    }

    /// Predicts `features.len() / dim` rows, row-major.
    pub fn predict_batch(&self, features: &[f32]) -> Result<Vec<Prediction>> {
        if self.dim == 0 || !features.len().is_multiple_of(self.dim) {
            return Err(ClassifierError::PredictDimension { expected: self.dim, got: features.len() });
        }
        let mut scratch = Vec::new();
        features.chunks_exact(self.dim).map(|row| self.predict_with(row, &mut scratch)).collect()
    }

    /// The `k` most probable labels of a prediction, with their probabilities.
    pub fn top_labels<'a>(&'a self, prediction: &Prediction, k: usize) -> Vec<(&'a str, f32)> {
        prediction.top_k(k).into_iter().filter_map(|(i, p)| self.labels.get(i).map(|l| (l.as_str(), p))).collect()
    }

    pub(crate) fn predict_with(&self, features: &[f32], scratch: &mut Vec<f32>) -> Result<Prediction> {
        if features.len() != self.dim {
            return Err(ClassifierError::PredictDimension { expected: self.dim, got: features.len() });
        }
        let probabilities = self.probabilities(features);
        let unknown_score = self.score.score(features, &probabilities, &self.standardizer, scratch);
        Ok(Prediction { unknown: unknown_score > self.unknown_threshold, probabilities, unknown_score })
    }

    /// Softmax of the head's logits, accumulated in f64 (the graph's f32 `MatMul` differs by
    /// rounding only).
    pub(crate) fn probabilities(&self, features: &[f32]) -> Vec<f32> {
        let classes = self.classes();
        let mut logits: Vec<f64> = self.head.bias.iter().map(|&b| f64::from(b)).collect();
        for (&x, w) in features.iter().zip(self.head.weights.chunks_exact(classes)) {
            let x = f64::from(x);
            logits.iter_mut().zip(w).for_each(|(l, &w)| *l += x * f64::from(w));
        }
        softmax(&logits)
    }

    /// Serialises the model as `head.json`.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| ClassifierError::Json { what: "the model", source })
    }

    /// Reads and checks a model written by [`Self::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let model: Model =
            serde_json::from_slice(bytes).map_err(|source| ClassifierError::Json { what: "the model", source })?;
        model.validate()?;
        Ok(model)
    }

    /// Checks that every part agrees on the dimension and the classes, so that prediction can
    /// index without checks.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(ClassifierError::InvalidModel(m));
        let (dim, classes) = (self.dim, self.classes());
        if self.format_version != MODEL_FORMAT_VERSION {
            return invalid(format!("format version {}, this build reads {MODEL_FORMAT_VERSION}", self.format_version));
        }
        if dim == 0 || classes < 2 {
            return invalid(format!("{dim} features and {classes} labels"));
        }
        if self.head.weights.len() != dim * classes || self.head.bias.len() != classes {
            return invalid(format!(
                "head of {} weights and {} biases for {dim} features and {classes} labels",
                self.head.weights.len(),
                self.head.bias.len()
            ));
        }
        if self.standardizer.mean.len() != dim || self.standardizer.inv_std.len() != dim {
            return invalid(format!("standardizer of {} features, model of {dim}", self.standardizer.mean.len()));
        }
        let all = self.head.weights.iter().chain(&self.head.bias).chain(&self.standardizer.mean);
        if !all.chain(&self.standardizer.inv_std).all(|v| v.is_finite()) || !self.unknown_threshold.is_finite() {
            return invalid("a parameter is not finite".into());
        }
        self.score.validate(dim, classes)
    }
}

/// Index of the largest value, the first of ties (as ONNX `ArgMax` and [`Prediction::best`]).
pub(crate) fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

fn softmax(logits: &[f64]) -> Vec<f32> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
    let exp: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|&e| (e / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_model() -> Model {
        Model {
            format_version: MODEL_FORMAT_VERSION,
            labels: vec!["a".into(), "b".into(), "c".into()],
            dim: 2,
            head: LinearHead { weights: vec![1.0, 0.0, -1.0, 0.0, 1.0, -1.0], bias: vec![0.0, 0.0, 0.5] },
            standardizer: Standardizer { mean: vec![0.0, 0.0], inv_std: vec![1.0, 1.0] },
            score: UnknownScore { kind: ScoreKind::MaxSoftmax, prototypes: vec![], prototype_classes: vec![] },
            unknown_threshold: 0.5,
        }
    }

    #[test]
    fn predicts_and_ranks() {
        let model = tiny_model();
        let p = model.predict(&[3.0, 0.0]).unwrap();
        let sum: f32 = p.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert_eq!(p.best(), 0);
        assert_eq!(model.top_labels(&p, 2).iter().map(|x| x.0).collect::<Vec<_>>(), ["a", "b"]);
        assert!(!p.unknown);
        // Logits 0.25, 0.25, 0: no class above 0.37, 1 - 0.36 > 0.5: unknown.
        let q = model.predict(&[0.25, 0.25]).unwrap();
        assert!(q.unknown && (q.unknown_score - (1.0 - q.probabilities[0])).abs() < 1e-6, "{q:?}");
        assert!(matches!(model.predict(&[1.0]), Err(ClassifierError::PredictDimension { expected: 2, got: 1 })));
        assert_eq!(model.predict_batch(&[3.0, 0.0, 0.0, 3.0]).unwrap()[1].best(), 1);
    }

    #[test]
    fn json_round_trip_and_validation() {
        let model = tiny_model();
        let back = Model::from_json(&model.to_json().unwrap()).unwrap();
        assert_eq!(back, model);
        let mut broken = model.clone();
        broken.head.bias.pop();
        let err = Model::from_json(&broken.to_json().unwrap()).unwrap_err();
        assert!(err.to_string().contains("head of 6 weights and 2 biases"), "{err}");
        assert!(matches!(Model::from_json(b"{"), Err(ClassifierError::Json { .. })));
    }
}
