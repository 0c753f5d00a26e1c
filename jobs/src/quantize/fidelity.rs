//! How close the int8 model stays to the fp32 one on the calibration images: the cosine of each
//! image's two feature vectors, and a k-fold linear probe on each model's features (the same
//! images, folds and training), which says whether a classifier loses anything.

use anyhow::{Context, Result};
use fruits_classifier::{ProbeReport, Row, TrainOptions, k_fold_accuracy};
use fruits_udfs::Featurizer;
use serde::Serialize;

use super::calibration::Calibration;

/// The feature vectors of every calibration image, `dim` floats each, in sample order.
pub fn features(featurizer: &Featurizer, calibration: &Calibration) -> Result<Vec<f32>> {
    let batch = featurizer.config().max_batch.max(1);
    let mut features = Vec::with_capacity(calibration.len() * featurizer.feature_dim());
    for start in (0..calibration.len()).step_by(batch) {
        let n = batch.min(calibration.len() - start);
        let tensors =
            &calibration.tensors[start * calibration.values_per_image..(start + n) * calibration.values_per_image];
        features.extend(featurizer.infer(tensors, n).with_context(|| {
            format!("{} failed on the calibration images", featurizer.config().model_path.display())
        })?);
    }
    Ok(features)
}

/// Per-image cosine of two models' features of the same images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CosineSummary {
    pub min: f64,
    pub median: f64,
    pub mean: f64,
}

impl CosineSummary {
    /// Over the rows of `a` and `b` (`dim` floats each, same order).
    pub fn of(a: &[f32], b: &[f32], dim: usize) -> Option<Self> {
        let mut cosines: Vec<f64> = a.chunks_exact(dim).zip(b.chunks_exact(dim)).map(|(x, y)| cosine(x, y)).collect();
        if cosines.is_empty() {
            return None;
        }
        cosines.sort_by(f64::total_cmp);
        let n = cosines.len();
        let median = if n % 2 == 1 { cosines[n / 2] } else { (cosines[n / 2 - 1] + cosines[n / 2]) / 2.0 };
        Some(Self { min: cosines[0], median, mean: cosines.iter().sum::<f64>() / n as f64 })
    }
}

/// Cosine similarity in f64; 0 when either vector is all zeros.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 { 0.0 } else { dot / (aa.sqrt() * bb.sqrt()) }
}

/// The probe of one model's features, or why it could not run (too few images or labels: the
/// int8 model is still written, the probe only reports).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Probe {
    Ran(ProbeReport),
    NotRun { error: String },
}

impl Probe {
    pub fn accuracy(&self) -> Option<f64> {
        match self {
            Probe::Ran(report) => Some(report.accuracy),
            Probe::NotRun { .. } => None,
        }
    }
}

/// The k-fold linear probe on `features` of the labelled calibration images (images without a
/// label folder are left out).
pub fn probe(calibration: &Calibration, features: &[f32], dim: usize, folds: usize, seed: u64) -> Probe {
    let rows: Vec<Row<'_>> = calibration
        .keys
        .iter()
        .zip(&calibration.labels)
        .zip(features.chunks_exact(dim))
        .filter_map(|((key, label), features)| label.as_deref().map(|label| Row { key, label, features }))
        .collect();
    let options = TrainOptions { seed, ..TrainOptions::default() };
    match k_fold_accuracy(&rows, folds, &options) {
        Ok(report) => Probe::Ran(report),
        Err(e) => {
            Probe::NotRun { error: format!("the linear probe could not run on {} labelled images: {e}", rows.len()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_summary_takes_min_median_and_mean_per_row() {
        let a = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let s = CosineSummary::of(&a, &b, 2).unwrap();
        assert_eq!(s.min, 0.0);
        assert!((s.median - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!((s.mean - (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 3.0).abs() < 1e-12);
        assert_eq!(CosineSummary::of(&[], &[], 2), None);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
