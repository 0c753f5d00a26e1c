//! Validation metrics: accuracy, per-class precision and recall, the confusion matrix, and
//! how the unknown threshold does on known rows. Serialised as `metrics.json`.

use serde::{Deserialize, Serialize};

/// `matrix[true][predicted]` counts over validation rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    pub fn new(labels: Vec<String>) -> Self {
        let n = labels.len();
        Self { labels, matrix: vec![vec![0; n]; n] }
    }

    /// Counts one row; indices out of range are ignored (they cannot come from this crate).
    pub fn add(&mut self, truth: usize, predicted: usize) {
        if let Some(cell) = self.matrix.get_mut(truth).and_then(|row| row.get_mut(predicted)) {
            *cell += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.matrix.iter().flatten().sum()
    }

    pub fn correct(&self) -> u64 {
        self.matrix.iter().enumerate().map(|(i, row)| row[i]).sum()
    }

    /// `None` without rows.
    pub fn accuracy(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.correct() as f64 / total as f64)
    }

    /// Of the rows predicted as class `i`, the share that are `i`; `None` if none was.
    pub fn precision(&self, i: usize) -> Option<f64> {
        let predicted: u64 = self.matrix.iter().map(|row| row[i]).sum();
        (predicted > 0).then(|| self.matrix[i][i] as f64 / predicted as f64)
    }

    /// Of the rows of class `i`, the share predicted as `i`; `None` if there were none.
    pub fn recall(&self, i: usize) -> Option<f64> {
        let actual: u64 = self.matrix[i].iter().sum();
        (actual > 0).then(|| self.matrix[i][i] as f64 / actual as f64)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub training_rows: u64,
    pub validation_rows: u64,
    /// `null` when no validation row was predicted as this class.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// Share of this class's validation rows under the unknown threshold.
    pub kept: Option<f64>,
}

/// The unknown score on known validation rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownMetrics {
    /// The score's name, e.g. `cosine-raw-k16`.
    pub score: String,
    pub threshold: f32,
    /// The share of known validation rows the threshold was calibrated to keep.
    pub keep_target: f64,
    /// The share it keeps (at least `keep_target`).
    pub kept: f64,
}

/// How the optimisation went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub seed: u64,
    /// Passes over the rows, all kinds.
    pub passes: usize,
    /// Loss and gradient evaluations of L-BFGS.
    pub optimizer_evaluations: usize,
    /// Mean cross-entropy plus L2 penalty at the final weights.
    pub loss: f64,
    /// Largest absolute gradient component at the final weights.
    pub gradient_norm: f64,
    /// Whether the gradient tolerance was met before the pass limit.
    pub converged: bool,
    pub kmeans_iterations: usize,
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub labels: Vec<String>,
    pub training_rows: u64,
    pub validation_rows: u64,
    /// Accuracy of the most probable label on the validation rows, unknown flag ignored.
    pub accuracy: f64,
    pub classes: Vec<ClassMetrics>,
    pub confusion: ConfusionMatrix,
    pub unknown: UnknownMetrics,
    pub training: TrainingSummary,
}

impl Metrics {
    pub fn to_json(&self) -> Result<Vec<u8>, crate::ClassifierError> {
        serde_json::to_vec_pretty(self).map_err(|source| crate::ClassifierError::Json { what: "the metrics", source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_recall_accuracy() {
        let mut m = ConfusionMatrix::new(vec!["a".into(), "b".into(), "c".into()]);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (2, 1)] {
            m.add(t, p);
        }
        m.add(7, 0); // ignored
        assert_eq!(m.total(), 6);
        assert_eq!(m.accuracy(), Some(4.0 / 6.0));
        assert_eq!(m.precision(1), Some(2.0 / 4.0));
        assert_eq!(m.recall(0), Some(2.0 / 3.0));
        assert_eq!(m.precision(2), None);
        assert_eq!(m.recall(2), Some(0.0));
        assert_eq!(ConfusionMatrix::new(vec![]).accuracy(), None);
    }
}
