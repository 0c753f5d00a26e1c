//! `summary.json`: what a run did, for people (printed) and scripts (the file, `--json`).

use anyhow::Result;
use serde::Serialize;

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
    /// Rows written to features/ (one per listed file; failed ones have NULL features).
    pub rows_out: u64,
    /// Rows whose features were computed.
    pub featurized: u64,
    pub failed: Vec<FailedImage>,
    /// The committed Parquet files, relative to features/.
    pub files: Vec<String>,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Bytes this process read (`read`/`pread` calls, see `featurize::bytes_read`) during the
    /// run, on Linux. On a cluster the images go from the store to the executors and only small
    /// reports come back, so this stays far below the size of the images.
    pub client_bytes_read: Option<u64>,
    /// The PCA stage, unless `--no-pca`.
    pub pca: Option<PcaSummary>,
}

/// What the PCA stage did.
#[derive(Debug, Serialize)]
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
        println!("  featurized {}, failed {}", self.featurized, self.failed.len());
        for failure in self.failed.iter().take(10) {
            println!("    {}: {}", failure.path, failure.error);
        }
        if self.failed.len() > 10 {
            println!("    ... and {} more in {}{SUMMARY_FILE}", self.failed.len() - 10, self.output);
        }
        println!("  {:.1} s, {:.1} images/s ({})", self.seconds, self.images_per_second, self.engine);
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
