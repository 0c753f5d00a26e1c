//! `summary.json`: what a run did, for people (printed) and scripts (the file, `--json`).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::cli::PcaMode;

/// Name of the run summary inside the output.
pub const SUMMARY_FILE: &str = "summary.json";

/// A file that could not be featurized, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailedImage {
    pub path: String,
    pub label: Option<String>,
    pub error: String,
}

/// What a run did.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub input: String,
    /// URL of the output folder.
    pub output: String,
    /// The model, when it ran in this process (on a cluster, the executors name theirs).
    pub model: Option<String>,
    pub engine: String,
    /// Names this run's files in features/.
    pub run_id: String,
    /// Image files listed under the input.
    pub rows_in: u64,
    /// Rows of the committed result in features/ (one per listed file; failed ones have NULL
    /// features), kept and new alike.
    pub rows_out: u64,
    /// Rows of the committed result with features.
    pub featurized: u64,
    pub failed: Vec<FailedImage>,
    /// The committed Parquet files, relative to features/.
    pub files: Vec<String>,
    /// How this run related to the result committed before it: the counts of an incremental
    /// run, `None` for a full run.
    pub incremental: Option<Incremental>,
    /// Why every image was featurized, for a full run.
    pub full_run_reason: Option<String>,
    /// Images the featurize job read this run (new and changed ones, all of them in a full run).
    pub featurized_this_run: u64,
    pub seconds: f64,
    /// `featurized_this_run` per second of the whole run.
    pub images_per_second: f64,
    /// Bytes this process read (`read`/`pread` calls, see `featurize::bytes_read`) during the
    /// run, on Linux. On a cluster the images go from the store to the executors and only small
    /// reports come back, so this stays far below the size of the images.
    pub client_bytes_read: Option<u64>,
    /// Where the run's time went.
    pub stages: Stages,
    /// The PCA stage, unless `--no-pca`.
    pub pca: Option<PcaSummary>,
}

/// Seconds of each stage of a run (the PCA's are in its own part): where a large or
/// incremental run spends its time.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stages {
    /// Listing the input (once per run, in this process), writing the work list as it goes.
    pub listing: f64,
    /// Reading the committed versions (each listed entry is compared with them as it is
    /// listed).
    pub compare: f64,
    /// The featurize job, planning and writing included.
    pub featurize: f64,
    /// Rewriting committed files that lost rows.
    pub carry_over: f64,
    /// Withdrawing the views and writing `_SUCCESS`.
    pub commit: f64,
}

/// An incremental run against the listing: images not in the committed result (`new`), in
/// it with another size, time or ETag (`changed`: featurized again), in it but no longer
/// listed (`deleted`: their rows left the result), and kept as they were (`unchanged`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Incremental {
    pub new: u64,
    pub changed: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// The committed run this one brought up to date.
    pub since_run: String,
}

/// What the PCA stage did.
#[derive(Debug, Serialize, Deserialize)]
pub struct PcaSummary {
    pub components: usize,
    /// `memory` or `distributed`.
    pub mode: PcaMode,
    /// Rows the PCA was fitted on.
    pub rows: u64,
    /// Rows left out because their features are NULL (images that could not be featurized).
    pub rows_without_features: u64,
    pub feature_dim: usize,
    pub explained_variance_ratio: Vec<f64>,
    pub cumulative_explained_variance_ratio: Vec<f64>,
    /// Files written, relative to the output folder.
    pub files: Vec<String>,
    pub seconds: f64,
}

/// The parts of a `summary.json` that say which run it describes and its PCA.
#[derive(Debug, Deserialize)]
pub struct WrittenSummary {
    pub run_id: String,
    pub pca: Option<PcaSummary>,
}

/// `value` as pretty JSON with a final newline.
pub fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    Ok(text)
}

impl Summary {
    /// The text printed at the end of `fruits run`; `features_dir` names the features folder.
    pub fn print(&self, features_dir: &str) {
        println!(
            "{} images from {} -> {}{features_dir} ({} file{}, committed)",
            self.rows_in,
            self.input,
            self.output,
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" }
        );
        match (&self.incremental, &self.full_run_reason) {
            (Some(i), _) => println!(
                "  incremental since run {}: {} new, {} changed, {} deleted, {} unchanged (kept)",
                i.since_run, i.new, i.changed, i.deleted, i.unchanged
            ),
            (None, Some(reason)) => println!("  full run: {reason}"),
            (None, None) => {}
        }
        println!("  featurized {}, failed {} (the whole result)", self.featurized, self.failed.len());
        for failure in self.failed.iter().take(10) {
            println!("    {}: {}", failure.path, failure.error);
        }
        if self.failed.len() > 10 {
            println!("    ... and {} more in {}{SUMMARY_FILE}", self.failed.len() - 10, self.output);
        }
        println!(
            "  {} images featurized this run in {:.1} s, {:.1} images/s ({})",
            self.featurized_this_run, self.seconds, self.images_per_second, self.engine
        );
    }
}

impl PcaSummary {
    /// The explained variance, printed after the PCA stage.
    pub fn print(&self) {
        let mode = match self.mode {
            PcaMode::Distributed => "distributed",
            _ => "in memory",
        };
        println!(
            "PCA of {} images ({} without features left out), {} components, {mode}, {:.2} s",
            self.rows, self.rows_without_features, self.components, self.seconds
        );
        for (i, (ratio, cumulative)) in
            self.explained_variance_ratio.iter().zip(&self.cumulative_explained_variance_ratio).enumerate()
        {
            println!("  PC{}: {:5.1} % of variance ({:5.1} % cumulative)", i + 1, ratio * 100.0, cumulative * 100.0);
        }
        println!("  wrote {}", self.files.join(", "));
    }
}
