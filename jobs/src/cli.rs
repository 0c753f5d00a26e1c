//! The options: what a user can ask of `fruits`, as clap types and nothing else. Every other
//! module reads these; this one reads none of them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fruits_classifier::HoldOut;
use fruits_process::{DecodeArgs, ModelArgs, S3Args};
use fruits_udfs::{ORT_LIBRARY_ENV, ScanOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "fruits",
    version,
    about = "Image embeddings and a PCA map of a bucket of fruit photos, on DataFusion Ballista"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Print only errors (no progress, no summary).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// For scripts (`run`, `pca`, `train`): print the summary as one line of JSON on stdout
    /// instead of the text summary (`predict`: one line per image); a failure prints
    /// `{"error": "..."}` there, and still exits with 1.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Featurize every image under --input and write Parquet and a summary under --output.
    Run(RunArgs),
    /// Run SQL against the `images` table, with `featurize` and `featurize_or_error` available.
    Sql(SqlArgs),
    /// Measure images/s on this machine: Python onnxruntime and fruits' own sessions on ready
    /// tensors (the limit), decode+resize+scale, and the whole job, and how close the job comes.
    Bench(BenchArgs),
    /// Copy the images under a local folder to an object-store prefix, keeping the folders.
    Upload(UploadArgs),
    /// Run the PCA stage alone on committed features; writes next to them.
    Pca(PcaCommandArgs),
    /// Copy every object under an object-store prefix (a run's output, say) to a local folder.
    Download(DownloadArgs),
    /// Train the fruit classifier on committed features; write the model directory an app ships.
    Train(TrainArgs),
    /// Name the fruit in each photo with a model directory written by `fruits train`.
    Predict(PredictArgs),
    /// Write a static int8 copy of the model, calibrated on a sample of your images, and print
    /// how close it stays to the fp32 model on them.
    Quantize(QuantizeArgs),
}

/// Which label sets `fruits train` leaves out to measure the unknown-fruit scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeaveOut {
    /// Labels 1+2, 3+4, ... (sorted): every label left out once; 5 trainings on 10 labels.
    Pairs,
    /// Every pair of labels: 45 trainings on 10 labels.
    AllPairs,
    /// No leave-classes-out evaluation.
    None,
}

impl LeaveOut {
    pub fn hold_out(self) -> Option<HoldOut> {
        match self {
            LeaveOut::Pairs => Some(HoldOut::DisjointPairs),
            LeaveOut::AllPairs => Some(HoldOut::AllPairs),
            LeaveOut::None => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The features folder of a run (OUTPUT/features, local or s3://); read once per training pass.
    #[arg(long)]
    pub features: String,

    /// The model directory to write, local or s3://: fruits-classifier.onnx, model.json,
    /// head.json, metrics.json, confusion.png (files already there are replaced).
    #[arg(long, short)]
    pub output: String,

    /// Decides the validation split and the initial prototypes: the same seed and features give
    /// the same model.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Share of each label's rows held out for validation (and for calibrating the unknown
    /// threshold).
    #[arg(long, default_value_t = 0.2)]
    pub validation_fraction: f64,

    /// Which labels to leave out, one training each, to measure how well unknown fruits are rejected.
    #[arg(long, value_enum, default_value_t = LeaveOut::Pairs)]
    pub leave_out: LeaveOut,

    /// The backbone (`--model`, the featurize model the features came from), composed with the
    /// head into fruits-classifier.onnx.
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Folder or s3:// prefix of your images, one folder per label: a sample of them calibrates
    /// the int8 model, and the same sample measures its fidelity.
    #[arg(long, value_name = "DIR")]
    pub calibrate: String,

    /// The int8 model to write (a file there is replaced; the fp32 model is refused).
    #[arg(long, short, value_name = "Q.onnx")]
    pub output: PathBuf,

    /// Calibration images, taken from every label in turn (200 calibrate MobileNetV2 well;
    /// more cost time and change little).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub calibration_images: u64,

    /// Folds of the linear probe that compares the two models' features.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=50))]
    pub folds: u64,

    /// Decides which images of each label are taken and the probe's folds.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Python with onnxruntime's quantization tool (default: the venv `make setup-quantize`
    /// makes, in $FRUITS_CACHE_DIR/quantize-venv).
    #[arg(long, env = "FRUITS_QUANTIZE_PYTHON")]
    pub python: Option<PathBuf>,

    /// The fp32 model (`--model`) and how it is fed: the int8 model is fed the same way.
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The model directory written by `fruits train` (local or s3://): head.json and model.json.
    #[arg(long = "model", value_name = "MODELDIR")]
    pub classifier: String,

    /// The backbone the classifier was trained on (the featurize model); fed as model.json says.
    #[arg(long, env = "FRUITS_MODEL")]
    pub backbone: PathBuf,

    /// ONNX Runtime shared library (default: found next to the binary, in ../lib, or in the checkout's .runtime/).
    #[arg(long, env = ORT_LIBRARY_ENV)]
    pub ort_library: Option<PathBuf>,

    /// Name of the backbone's feature output.
    #[arg(long, default_value = "features")]
    pub backbone_output: String,

    #[command(flatten)]
    pub decode: DecodeArgs,

    /// The photos: local paths or URLs (s3://bucket/photo.jpg).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,

    #[command(flatten)]
    pub s3: S3Args,
}

/// Above this many rows `auto` computes the covariance distributed. Below it, memory mode holds
/// at most 512 MB of f32 features (0.75 GB peak, measured at 50,000 rows: 363 MB) and is the
/// faster of the two; above it the client's memory would keep growing with the data, while the
/// distributed mode stays at a few `d x d` matrices.
pub const DISTRIBUTED_ABOVE_ROWS: u64 = 100_000;

/// Where the covariance matrix is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcaMode {
    /// `distributed` above 100,000 rows, else `memory`.
    Auto,
    /// Every feature vector in this process.
    Memory,
    /// Moments aggregated by the engine; only the `d x d` matrix reaches this process.
    Distributed,
}

impl PcaMode {
    /// The mode to use for `rows` rows: never `Auto`.
    pub fn resolve(self, rows: u64) -> PcaMode {
        match self {
            PcaMode::Auto if rows > DISTRIBUTED_ABOVE_ROWS => PcaMode::Distributed,
            PcaMode::Auto => PcaMode::Memory,
            mode => mode,
        }
    }
}

/// What the user asked of the PCA stage.
#[derive(Debug, Clone, Copy)]
pub struct PcaOptions {
    pub k: usize,
    pub csv: bool,
    pub mode: PcaMode,
}

#[derive(Debug, Args)]
pub struct PcaArgs {
    /// Principal components to compute.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub pca_k: u64,

    /// Also write features.csv (path, label, one column per feature).
    #[arg(long)]
    pub csv: bool,

    /// Where the covariance is computed: `memory` reads every feature vector into this
    /// process; `distributed` has the engine aggregate it (in `fruits run`, by the executors
    /// within the featurize job) so this process holds only a d x d matrix; `auto` picks
    /// `distributed` above 100,000 rows.
    #[arg(long, value_enum, default_value_t = PcaMode::Auto)]
    pub pca_mode: PcaMode,
}

impl PcaArgs {
    pub fn options(&self) -> PcaOptions {
        PcaOptions { k: self.pca_k as usize, csv: self.csv, mode: self.pca_mode }
    }
}

#[derive(Debug, Args)]
pub struct PcaCommandArgs {
    /// The features folder of a run (OUTPUT/features, local or s3://); outputs go to OUTPUT.
    #[arg(long)]
    pub features: String,

    #[command(flatten)]
    pub pca: PcaArgs,

    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Local folder of images, one folder per label.
    #[arg(long)]
    pub from: String,

    /// Destination prefix, e.g. s3://bucket/photos.
    #[arg(long)]
    pub to: String,

    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Source prefix, e.g. s3://bucket/out.
    #[arg(long)]
    pub from: String,

    /// Local folder; created if missing, files already there are overwritten.
    #[arg(long)]
    pub to: PathBuf,

    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// Output folder or object-store prefix (s3://bucket/prefix): receives features/ (Parquet
    /// files and the _SUCCESS manifest) and summary.json. A result committed there by the same
    /// model is brought up to date: only new and changed images are featurized.
    #[arg(long, short)]
    pub output: String,

    /// Featurize every image again, even those whose features the committed result holds.
    #[arg(long)]
    pub full: bool,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Skip the PCA stage.
    #[arg(long)]
    pub no_pca: bool,

    #[command(flatten)]
    pub pca: PcaArgs,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// The query, e.g. "SELECT label, count(*) FROM images GROUP BY label".
    pub query: String,

    /// Write the result as Parquet files (`part-00000.parquet`, ...) into this folder, local or
    /// s3://, instead of printing it. The folder must be new, empty, or hold an earlier
    /// result of `fruits sql` (replaced); a folder with anything else is refused.
    #[arg(long, short)]
    pub output: Option<String>,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// Images used for the raw-model and decode measurements (taken from the start of the listing).
    #[arg(long, default_value_t = 512)]
    pub sample: usize,

    /// Seconds each ready-tensor and decode measurement runs for (at least).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,

    /// Python with onnxruntime and numpy, which measures Python onnxruntime's rate on the same
    /// tensors (default: the venv `make setup-quantize` makes; without one that figure is skipped).
    #[arg(long, env = "FRUITS_QUANTIZE_PYTHON")]
    pub python: Option<PathBuf>,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct InputArgs {
    /// Folder or object-store prefix (s3://bucket/prefix) holding images in one folder per label.
    #[arg(long, short, env = "FRUITS_INPUT")]
    pub input: String,

    /// Most image files in one task.
    #[arg(long, default_value_t = ScanOptions::default().files_per_partition as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub files_per_partition: u64,

    /// Largest image file read, in bytes (at most 1 GiB): a larger file is not read, and its row
    /// says so.
    #[arg(
        long,
        env = "FRUITS_MAX_IMAGE_BYTES",
        default_value_t = ScanOptions::default().max_image_bytes,
        value_parser = clap::value_parser!(u64).range(1..=ScanOptions::MAX_IMAGE_BYTES_LIMIT)
    )]
    pub max_image_bytes: u64,
}

impl InputArgs {
    pub fn scan_options(&self) -> ScanOptions {
        ScanOptions { files_per_partition: self.files_per_partition as usize, max_image_bytes: self.max_image_bytes }
    }
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Run on this Ballista cluster (df://HOST:PORT, the fruits-scheduler) instead of the
    /// embedded engine.
    #[arg(long, env = "FRUITS_SCHEDULER")]
    pub scheduler: Option<String>,

    /// Task slots of the embedded executor, and inference sessions (default: number of cores).
    #[arg(long, env = "FRUITS_PARALLELISM", value_parser = clap::value_parser!(u64).range(1..))]
    pub parallelism: Option<u64>,

    /// The embedded engine's classifier: a model directory written by `fruits train` (local or
    /// s3://), which the SQL function `predict` uses. On a cluster, give it to the executors.
    #[arg(long, env = "FRUITS_CLASSIFIER")]
    pub classifier: Option<String>,

    #[command(flatten)]
    pub s3: S3Args,
}

impl EngineArgs {
    pub fn slots(&self) -> usize {
        self.parallelism.map(|p| p as usize).unwrap_or_else(|| fruits_udfs::available_cores().get())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_options_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn auto_goes_distributed_above_the_threshold_only() {
        assert_eq!(PcaMode::Auto.resolve(DISTRIBUTED_ABOVE_ROWS), PcaMode::Memory);
        assert_eq!(PcaMode::Auto.resolve(DISTRIBUTED_ABOVE_ROWS + 1), PcaMode::Distributed);
        assert_eq!(PcaMode::Memory.resolve(u64::MAX), PcaMode::Memory);
        assert_eq!(PcaMode::Distributed.resolve(10), PcaMode::Distributed);
    }
}
