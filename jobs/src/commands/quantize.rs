//! `fruits quantize`: a static int8 copy of the model, calibrated on a sample of the user's own
//! images, and how faithful it is to the fp32 model on them.
//!
//! fruits samples and preprocesses the calibration images itself, onnxruntime's quantization
//! tool (Python, set up by `scripts/setup-quantize.sh`) writes the int8 file from them, and
//! fruits then loads it like any model and runs both models over the same tensors: the feature
//! cosine per image and a k-fold linear probe of each model's features. The int8 file has its
//! own fingerprint (its sha256), so `fruits run --model` with it never mixes its vectors with
//! fp32 ones: over an fp32 result it is a full run that says why.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use fruits_udfs::{Featurizer, Location, ModelConfig, ObjectStores, Parallelism};
use serde::Serialize;

use crate::cli::QuantizeArgs;
use crate::python;
use crate::quantize::calibration::{self, Calibration};
use crate::quantize::fidelity::{self, CosineSummary, Probe};
use crate::quantize::tool::{Tool, ToolReport};

/// What `fruits quantize` did, printed as text or, with `--json`, as one line.
#[derive(Debug, Serialize)]
pub struct QuantizeSummary {
    /// The fp32 model.
    pub model: String,
    /// The int8 model written.
    pub output: String,
    pub model_fingerprint: String,
    pub output_fingerprint: String,
    pub model_bytes: u64,
    pub output_bytes: u64,
    /// The calibration folder and the images listed under it.
    pub calibrate: String,
    pub listed: usize,
    /// Images the int8 model was calibrated on, and fidelity measured on.
    pub calibration_images: usize,
    /// Sample images that could not be decoded (others were taken instead).
    pub undecodable: usize,
    /// Per-image cosine of the int8 features against the fp32 ones.
    pub cosine: CosineSummary,
    pub folds: usize,
    pub probe_fp32: Probe,
    pub probe_int8: Probe,
    /// The quantization tool's own report.
    pub tool: ToolReport,
    pub seconds: f64,
}

pub async fn run(args: &QuantizeArgs, text: bool) -> Result<QuantizeSummary> {
    let started = Instant::now();
    let config = args.model.config().context("--model (or FRUITS_MODEL) is required: the fp32 model to quantize")?;
    check_output(&config.model_path, &args.output)?;
    let tool = Tool::locate(args.python.as_deref())?;
    let runtime = ObjectStores::new(args.s3.options()).runtime_env()?;
    let folder = Location::parse(&args.calibrate, &runtime)?;

    let fp32 = Featurizer::load(config.clone(), Parallelism::one_session_on_all_cores())?;
    let sample = calibration::sample(&folder, &fp32, args.calibration_images as usize, args.seed).await?;
    if text {
        println!(
            "calibrating on {} of the {} images under {}{}",
            sample.len(),
            sample.listed,
            folder.url(),
            match sample.undecodable.len() {
                0 => String::new(),
                n => format!(" ({n} undecodable ones skipped)"),
            }
        );
    }

    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let quantized = scratch.path().join("int8.onnx");
    let report = quantize(&tool, &config, &sample, &quantized, scratch.path())?;
    let int8 = Featurizer::load(
        ModelConfig { model_path: quantized.clone(), ..config.clone() },
        Parallelism::one_session_on_all_cores(),
    )
    .context("the quantization tool wrote a model fruits cannot run")?;
    ensure!(
        int8.fingerprint() != fp32.fingerprint(),
        "the quantized model has the fp32 model's fingerprint: the tool wrote the same file"
    );

    let dim = fp32.feature_dim();
    let (fp32_features, int8_features) = (fidelity::features(&fp32, &sample)?, fidelity::features(&int8, &sample)?);
    let cosine = CosineSummary::of(&fp32_features, &int8_features, dim).context("no calibration images")?;
    let folds = args.folds as usize;
    let probe_fp32 = fidelity::probe(&sample, &fp32_features, dim, folds, args.seed);
    let probe_int8 = fidelity::probe(&sample, &int8_features, dim, folds, args.seed);

    place(&quantized, &args.output)?;
    let summary = QuantizeSummary {
        model: config.model_path.display().to_string(),
        output: args.output.display().to_string(),
        model_fingerprint: fp32.fingerprint().to_owned(),
        output_fingerprint: int8.fingerprint().to_owned(),
        model_bytes: file_size(&config.model_path),
        output_bytes: file_size(&args.output),
        calibrate: folder.url().to_owned(),
        listed: sample.listed,
        calibration_images: sample.len(),
        undecodable: sample.undecodable.len(),
        cosine,
        folds,
        probe_fp32,
        probe_int8,
        tool: report,
        seconds: started.elapsed().as_secs_f64(),
    };
    if text {
        print(&summary);
    }
    Ok(summary)
}

/// The output must be a file of its own: writing over the fp32 model would lose it.
fn check_output(model: &Path, output: &Path) -> Result<()> {
    let same = match (model.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => model == output,
    };
    ensure!(!same, "--output {} is the model itself: name a new file for the int8 model", output.display());
    ensure!(
        !output.is_dir(),
        "--output {} is a folder: name the int8 model's file (say model-int8.onnx)",
        output.display()
    );
    Ok(())
}

/// Writes the calibration tensors and runs the tool on them (blocking: a child process).
fn quantize(
    tool: &Tool,
    config: &ModelConfig,
    sample: &Calibration,
    quantized: &Path,
    scratch: &Path,
) -> Result<ToolReport> {
    let tensors = scratch.join("calibration.npy");
    python::write_npy(&tensors, &config.input.shape(sample.len()), &sample.tensors)?;
    tokio::task::block_in_place(|| tool.quantize(&config.model_path, &tensors, &config.input_name, quantized, scratch))
}

/// Moves the written model to `output` whole: copied beside it, then renamed over it, so that a
/// reader never sees half a model.
fn place(quantized: &Path, output: &Path) -> Result<()> {
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut partial = output.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    std::fs::copy(quantized, &partial).with_context(|| format!("cannot write {}", partial.display()))?;
    if let Err(e) = std::fs::rename(&partial, output) {
        let _ = std::fs::remove_file(&partial);
        bail!("cannot write {}: {e}", output.display());
    }
    Ok(())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn print(s: &QuantizeSummary) {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    println!(
        "wrote {} ({:.1} MB, fp32 {:.1} MB) in {:.1} s: static int8 (QDQ, per-channel int8 weights, uint8 \
         activations), onnxruntime {}",
        s.output,
        mb(s.output_bytes),
        mb(s.model_bytes),
        s.seconds,
        s.tool.onnxruntime
    );
    println!("  fingerprint {}", s.output_fingerprint);
    println!(
        "  feature cosine against fp32 on the {} images: min {:.4}, median {:.4}, mean {:.4}",
        s.calibration_images, s.cosine.min, s.cosine.median, s.cosine.mean
    );
    match (s.probe_fp32.accuracy(), s.probe_int8.accuracy()) {
        (Some(fp32), Some(int8)) => {
            println!("  {}-fold linear probe accuracy: fp32 {fp32:.4}, int8 {int8:.4}", s.folds)
        }
        _ => {
            for probe in [&s.probe_fp32, &s.probe_int8] {
                if let Probe::NotRun { error } = probe {
                    println!("  {error}");
                }
            }
        }
    }
}
