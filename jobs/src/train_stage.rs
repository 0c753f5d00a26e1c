//! The training stage: the classifier and its leave-classes-out evaluation, fed side by side
//! from the committed features, streamed once per pass, so that memory stays at a batch of
//! rows and the trainers' own state whatever the number of rows.

use std::pin::pin;

use anyhow::{Context, Result};
use datafusion::prelude::SessionContext;
use fruits_classifier::{
    HoldOut, LeaveClassesOut, LeaveOutOptions, LeaveOutReport, ScoreEvaluation, TrainOptions, TrainedModel, Trainer,
};
use futures::StreamExt;
use serde::Serialize;

use crate::committed::FeatureFiles;

/// What the stage trained and measured.
pub struct Trained {
    pub trained: TrainedModel,
    pub leave_out: Option<LeaveOutReport>,
    /// Committed rows with features, which every pass read.
    pub rows: u64,
    pub rows_without_features: u64,
    pub passes: usize,
}

/// Trains on every committed row with features and, with `hold_out`, the leave-classes-out
/// rotations on the same passes (one read feeds every trainer).
pub async fn train(
    ctx: &SessionContext,
    committed: &FeatureFiles,
    options: TrainOptions,
    hold_out: Option<HoldOut>,
) -> Result<Trained> {
    let mut trainer = Trainer::new(options.clone())?;
    let mut leave_out = hold_out
        .map(|hold_out| LeaveClassesOut::new(LeaveOutOptions { train: options, hold_out, ..Default::default() }))
        .transpose()?;
    let (mut rows, mut rows_without_features, mut passes) = (0, 0, 0);
    loop {
        let train_pass = trainer.next_pass();
        let leave_out_pass = leave_out.as_mut().and_then(LeaveClassesOut::next_pass);
        if train_pass.is_none() && leave_out_pass.is_none() {
            break;
        }
        let (mut pass_rows, mut pass_without) = (0, 0);
        let mut blocks = pin!(committed.blocks(ctx).await?);
        while let Some(block) = blocks.next().await {
            let block = block?;
            pass_rows += block.paths.len() as u64;
            pass_without += block.without_features;
            if block.paths.is_empty() {
                continue;
            }
            let (keys, labels, values, dim) = (&block.paths, &block.labels, &block.values, block.dim);
            if train_pass.is_some() {
                trainer.feed_columns(keys, labels, values, dim)?;
            }
            if let (Some(_), Some(evaluation)) = (&leave_out_pass, leave_out.as_mut()) {
                evaluation.feed_columns(keys, labels, values, dim)?;
            }
        }
        if let Some(pass) = &train_pass {
            log::info!("training pass {} ({}): {pass_rows} rows", pass.index, pass.kind.name());
            trainer.end_pass()?;
        }
        if let (Some(_), Some(evaluation)) = (&leave_out_pass, leave_out.as_mut()) {
            evaluation.end_pass()?;
        }
        (rows, rows_without_features) = (pass_rows, pass_without);
        passes += 1;
    }
    let trained = trainer.finish().context("training failed")?;
    let leave_out =
        leave_out.map(LeaveClassesOut::finish).transpose().context("the leave-classes-out evaluation failed")?;
    Ok(Trained { trained, leave_out, rows, rows_without_features, passes })
}

/// What `fruits train` reports (`--json` prints it as one line).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub features: String,
    pub output: String,
    pub rows: u64,
    pub rows_without_features: u64,
    pub passes: usize,
    pub labels: Vec<String>,
    pub training_rows: u64,
    pub validation_rows: u64,
    /// On the validation rows.
    pub accuracy: f64,
    /// The score the model ships, its threshold and the share of known validation rows it keeps.
    pub unknown_score: String,
    pub unknown_threshold: f32,
    pub known_kept: f64,
    /// Every score measured on the validation rows.
    pub scores: Vec<ScoreEvaluation>,
    pub leave_out: Option<LeaveOutReport>,
    pub onnx_file: String,
    pub onnx_bytes: u64,
    /// Median inference time of the composed file, one image per call, one thread.
    pub latency_ms_per_image: f64,
    pub seconds: f64,
}

impl TrainSummary {
    /// The text printed at the end of `fruits train`.
    pub fn print(&self) {
        println!(
            "trained on {} rows of {} ({} without features skipped), {} passes, {:.1} s",
            self.rows, self.features, self.rows_without_features, self.passes, self.seconds
        );
        println!("  {} classes: {}", self.labels.len(), self.labels.join(", "));
        println!(
            "  validation accuracy {:.4} on {} rows ({} training rows)",
            self.accuracy, self.validation_rows, self.training_rows
        );
        println!(
            "  unknown: {} > {:.5} (keeps {:.1} % of known validation images)",
            self.unknown_score,
            self.unknown_threshold,
            100.0 * self.known_kept
        );
        if let Some(report) = &self.leave_out {
            println!("leave-classes-out (train without the held-out labels, score them as unknown):");
            print!("{}", report.table());
        }
        println!(
            "wrote {} ({:.1} MB, {:.2} ms per image, 1 thread), model.json, head.json, metrics.json, confusion.png",
            self.onnx_file,
            self.onnx_bytes as f64 / 1e6,
            self.latency_ms_per_image
        );
    }
}
