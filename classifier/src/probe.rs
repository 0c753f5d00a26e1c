//! A k-fold linear probe: how well a logistic regression on a set of feature vectors tells
//! their labels apart, each row predicted by a model that never saw it. `fruits quantize` runs
//! it on the fp32 and the int8 features of the same images to say whether quantization lost
//! what the classifier needs.
//!
//! Every fold's model is trained by [`Trainer`], exactly as `fruits train` trains (standardised
//! features, L2, L-BFGS), on the other folds; the trainer keeps its own validation share of
//! those rows, so each model is fitted on `(1 - validation_fraction)` of the other folds. The
//! folds are stratified: within each label the rows are ordered by a seeded hash of their key
//! and dealt out in turn, so every fold holds each label's rows within one and the same rows
//! land in the same fold whatever order they are given in.

use std::collections::BTreeMap;

use crate::error::{ClassifierError, Result};
use crate::rng::key_hash;
use crate::score::ScoreKind;
use crate::trainer::{Row, TrainOptions, Trainer};

/// The probe's outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    pub folds: usize,
    pub rows: usize,
    /// Rows whose fold's model gave their own label, over all rows.
    pub accuracy: f64,
    /// The same, fold by fold.
    pub fold_accuracies: Vec<f64>,
}

/// The k-fold accuracy of a linear probe on `rows`, `folds` of them (at least 2), with `options`
/// for every fold's training (its seed also deals the folds). Only the logistic regression is
/// used: the unknown score is not evaluated, so `options.score` is replaced by max-softmax,
/// which costs nothing to fit.
pub fn k_fold_accuracy(rows: &[Row<'_>], folds: usize, options: &TrainOptions) -> Result<ProbeReport> {
    if folds < 2 {
        return Err(ClassifierError::InvalidOption { option: "folds", message: format!("{folds} is below 2") });
    }
    if rows.len() < folds {
        return Err(ClassifierError::InvalidOption {
            option: "folds",
            message: format!("{folds} folds need at least as many rows, there are {}", rows.len()),
        });
    }
    let fold_of = deal(rows, folds, options.seed);
    let options = TrainOptions { score: ScoreKind::MaxSoftmax, extra_scores: Vec::new(), ..options.clone() };
    let (mut correct, mut fold_accuracies) = (0usize, Vec::with_capacity(folds));
    for fold in 0..folds {
        let training: Vec<Row<'_>> =
            rows.iter().zip(&fold_of).filter(|(_, f)| **f != fold).map(|(row, _)| *row).collect();
        let model = train(&options, &training)?.model;
        let (mut right, mut total) = (0usize, 0usize);
        for (row, _) in rows.iter().zip(&fold_of).filter(|(_, f)| **f == fold) {
            let best = model.predict(row.features)?.best();
            right += usize::from(model.labels.get(best).is_some_and(|l| l == row.label));
            total += 1;
        }
        correct += right;
        fold_accuracies.push(if total == 0 { 0.0 } else { right as f64 / total as f64 });
    }
    Ok(ProbeReport { folds, rows: rows.len(), accuracy: correct as f64 / rows.len() as f64, fold_accuracies })
}

/// Each row's fold: per label, rows in the order of their seeded key hash, dealt round-robin
/// (each label starting where the previous one stopped, so small labels do not all pile into
/// the first folds).
fn deal(rows: &[Row<'_>], folds: usize, seed: u64) -> Vec<usize> {
    let mut by_label: BTreeMap<&str, Vec<(u64, usize)>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        by_label.entry(row.label).or_default().push((key_hash(row.key, seed), i));
    }
    let mut fold_of = vec![0; rows.len()];
    let mut next = 0;
    for members in by_label.values_mut() {
        members.sort_unstable();
        for &(_, i) in members.iter() {
            fold_of[i] = next % folds;
            next += 1;
        }
    }
    fold_of
}

/// Runs every pass of a trainer over rows held in memory.
fn train(options: &TrainOptions, rows: &[Row<'_>]) -> Result<crate::trainer::TrainedModel> {
    let mut trainer = Trainer::new(options.clone())?;
    while trainer.next_pass().is_some() {
        trainer.feed(rows.iter().copied())?;
        trainer.end_pass()?;
    }
    trainer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::clusters;

    #[test]
    fn separable_clusters_probe_near_perfectly_and_noise_does_not() {
        let rows = clusters(4, 60, 16, 3.0, 1);
        let all: Vec<Row<'_>> = (0..rows.len()).map(|i| rows.row(i)).collect();
        let report = k_fold_accuracy(&all, 5, &TrainOptions::default()).unwrap();
        assert_eq!((report.folds, report.rows, report.fold_accuracies.len()), (5, 240, 5));
        assert!(report.accuracy >= 0.97, "{report:?}");

        // Labels that have nothing to do with the features: about chance (1 in 4).
        let noise: Vec<String> = (0..rows.len()).map(|i| format!("class {}", (i * 7 + i / 3) % 4)).collect();
        let shuffled: Vec<Row<'_>> = (0..rows.len()).map(|i| Row { label: &noise[i], ..rows.row(i) }).collect();
        let chance = k_fold_accuracy(&shuffled, 5, &TrainOptions::default()).unwrap();
        assert!(chance.accuracy < 0.5, "{chance:?}");
    }

    #[test]
    fn folds_are_stratified_and_independent_of_row_order() {
        let rows = clusters(3, 10, 4, 1.0, 2);
        let all: Vec<Row<'_>> = (0..rows.len()).map(|i| rows.row(i)).collect();
        let folds = deal(&all, 5, 42);
        for fold in 0..5 {
            for class in 0..3 {
                let n =
                    (0..all.len()).filter(|&i| folds[i] == fold && all[i].label == format!("class {class}")).count();
                assert_eq!(n, 2, "fold {fold}, class {class}");
            }
        }
        let reversed: Vec<Row<'_>> = all.iter().rev().copied().collect();
        let again = deal(&reversed, 5, 42);
        assert_eq!(again.into_iter().rev().collect::<Vec<_>>(), folds);
    }

    #[test]
    fn too_few_rows_or_folds_are_refused() {
        let rows = clusters(2, 2, 4, 1.0, 3);
        let all: Vec<Row<'_>> = (0..rows.len()).map(|i| rows.row(i)).collect();
        assert!(k_fold_accuracy(&all, 1, &TrainOptions::default()).is_err());
        assert!(k_fold_accuracy(&all, 5, &TrainOptions::default()).is_err());
    }
}
