//! `fruits train`: the classifier on committed features, composed with the backbone into the
//! model directory an app ships.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use fruits_classifier::{
    CONFUSION_FILE, ComposeOptions, HEAD_FILE, LeaveOutReport, MANIFEST_FILE, METRICS_FILE, ONNX_FILE, ScoreKind,
    TrainOptions, confusion_png, measure_latency, model_files,
};
use fruits_udfs::{FeaturesDir, Lease, Location, ObjectStores, RunId, inference_session};

use crate::cli::TrainArgs;
use crate::committed::FeatureFiles;
use crate::train_stage::{self, TrainSummary};

/// Timed inference calls for the latency `fruits train` prints (after one warm-up).
const LATENCY_RUNS: usize = 20;

/// Trains on `args.features` and writes the model directory under a lease on it, so that two
/// trainings never mix their files.
pub async fn run(args: &TrainArgs, text: bool) -> Result<TrainSummary> {
    let runtime = ObjectStores::new(args.s3.options()).runtime_env()?;
    let output = Location::create(&args.output, &runtime)?;
    let lease = Lease::acquire(&output, RunId::new().as_str()).await?;
    let result = train_holding(args, &runtime, &output, &lease, text).await;
    if let Err(e) = lease.release().await {
        log::warn!("cannot release the lease on {}: {e}", output.url());
    }
    result
}

async fn train_holding(
    args: &TrainArgs,
    runtime: &Arc<RuntimeEnv>,
    output: &Location,
    lease: &Lease,
    text: bool,
) -> Result<TrainSummary> {
    let started = Instant::now();
    let backbone = args.model.config().context(
        "no backbone: pass --model PATH.onnx or set FRUITS_MODEL (the featurize model the features came from; \
         fruits-classifier.onnx contains it)",
    )?;
    let preprocessing = fruits_udfs::preprocessing(&backbone.input).with_context(|| {
        format!(
            "model.json can describe only one scale and offset for every channel, not --model-scaling {}",
            args.model.model_scaling
        )
    })?;
    let backbone_bytes = tokio::fs::read(&backbone.model_path)
        .await
        .with_context(|| format!("cannot read the backbone {}", backbone.model_path.display()))?;

    let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), Arc::clone(runtime));
    let committed = FeatureFiles::open(FeaturesDir::new(Location::parse(&args.features, runtime)?)).await?;
    let options = TrainOptions {
        seed: args.seed,
        validation_fraction: args.validation_fraction,
        extra_scores: ScoreKind::candidates(),
        ..TrainOptions::default()
    };
    let mut stage = train_stage::train(&ctx, &committed, options, args.leave_out.hold_out()).await?;
    // Every candidate score was evaluated on the same rows; ship the one that rejected the
    // left-out classes best (without a leave-out evaluation, the default score stays).
    if let Some(best) = stage.leave_out.as_ref().and_then(LeaveOutReport::best) {
        stage.trained.ship(&best.score).context("cannot ship the best unknown score")?;
    }
    let (model, metrics) = (&stage.trained.model, &stage.trained.metrics);

    let compose = ComposeOptions { features_output: backbone.output_name.clone(), keep_features: true };
    let files = model_files(model, &backbone_bytes, &compose, preprocessing)?;
    let mut session = inference_session(&files.onnx, backbone.ort_library.as_deref(), NonZeroUsize::MIN)?;
    let [_, a, b, c] = backbone.input.shape(1);
    let latency = measure_latency(&mut session, &files.manifest.input.name, [a, b, c], 1, LATENCY_RUNS)?;

    // model.json, which apps and `fruits predict` open first, is withdrawn before the other
    // files are replaced and written after them: a training killed in between leaves a folder
    // that every reader refuses, never one that mixes two trainings.
    lease.check().await?;
    output.delete(MANIFEST_FILE).await?;
    let onnx_bytes = files.onnx.len() as u64;
    output.put(ONNX_FILE, files.onnx).await?;
    output.put(HEAD_FILE, files.head_json).await?;
    output.put(METRICS_FILE, metrics.to_json()?).await?;
    output.put(CONFUSION_FILE, confusion_png(&metrics.confusion, 1200, 900)?).await?;
    lease.check().await?;
    output.put(MANIFEST_FILE, files.manifest_json).await?;

    let summary = TrainSummary {
        features: committed.folder.url().to_owned(),
        output: output.url().to_owned(),
        rows: stage.rows,
        rows_without_features: stage.rows_without_features,
        passes: stage.passes,
        labels: model.labels.clone(),
        training_rows: metrics.training_rows,
        validation_rows: metrics.validation_rows,
        accuracy: metrics.accuracy,
        unknown_score: metrics.unknown.score.clone(),
        unknown_threshold: metrics.unknown.threshold,
        known_kept: metrics.unknown.kept,
        scores: stage.trained.scores.clone(),
        leave_out: stage.leave_out,
        onnx_file: output.child_url(ONNX_FILE),
        onnx_bytes,
        latency_ms_per_image: latency.per_image.as_secs_f64() * 1e3,
        seconds: started.elapsed().as_secs_f64(),
    };
    if text {
        summary.print();
    }
    Ok(summary)
}
