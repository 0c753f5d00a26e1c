//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use fruits_udfs::model::ORT_LIBRARY_ENV;
use fruits_udfs::preprocess::{InputSpec, Layout, Scaling};
use fruits_udfs::{ModelConfig, ScanOptions};

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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Featurize every image under --input and write Parquet and a summary under --output.
    Run(RunArgs),
    /// Run SQL against the `images` table, with `featurize` and `featurize_or_error` available.
    Sql(SqlArgs),
    /// Measure images/s of the raw model, of decode+resize and of the full job, on this machine.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// Output directory: receives features/*.parquet and summary.json.
    #[arg(long, short)]
    pub output: PathBuf,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// The query, e.g. "SELECT label, count(*) FROM images GROUP BY label".
    pub query: String,

    /// Write the result to this Parquet file instead of printing it.
    #[arg(long, short)]
    pub output: Option<PathBuf>,

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
}

impl InputArgs {
    pub fn scan_options(&self) -> ScanOptions {
        ScanOptions { files_per_partition: self.files_per_partition as usize }
    }
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Task slots of the embedded executor, and inference sessions (default: number of cores).
    #[arg(long, env = "FRUITS_PARALLELISM", value_parser = clap::value_parser!(u64).range(1..))]
    pub parallelism: Option<u64>,
}

impl EngineArgs {
    pub fn slots(&self) -> usize {
        self.parallelism
            .map(|p| p as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// ONNX model producing one embedding per image.
    #[arg(long, env = "FRUITS_MODEL")]
    pub model: PathBuf,

    /// ONNX Runtime shared library (default: found next to the binary or in the checkout's .runtime/).
    #[arg(long, env = ORT_LIBRARY_ENV)]
    pub ort_library: Option<PathBuf>,

    /// Name of the model's image input.
    #[arg(long, default_value = "input")]
    pub model_input: String,

    /// Name of the model's embedding output, of shape [N, D].
    #[arg(long, default_value = "features")]
    pub model_output: String,

    /// Memory layout of the input tensor: nhwc or nchw.
    #[arg(long, default_value_t = InputSpec::default().layout)]
    pub model_layout: Layout,

    /// Pixel scaling: symmetric (x/127.5-1), unit (x/255) or imagenet (mean/std).
    #[arg(long, default_value_t = InputSpec::default().scaling)]
    pub model_scaling: Scaling,

    /// Input width and height, in pixels.
    #[arg(long, default_value_t = InputSpec::default().width, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub model_size: u32,

    /// Most images per inference call.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: u64,
}

impl ModelArgs {
    pub fn config(&self) -> ModelConfig {
        let mut config = ModelConfig::new(&self.model);
        config.ort_library = self.ort_library.clone();
        config.input_name = self.model_input.clone();
        config.output_name = self.model_output.clone();
        config.input = InputSpec {
            width: self.model_size,
            height: self.model_size,
            layout: self.model_layout,
            scaling: self.model_scaling,
        };
        config.max_batch = self.batch_size as usize;
        config
    }
}
