//! `fruits run`: featurize every image under a location, write the features where they belong
//! and commit them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, col};
use fruits_udfs::{FEATURIZE_OR_ERROR, FeaturesDir, IMAGES_TABLE, Manifest, WriteFeatures};
use indicatif::ProgressBar;

use crate::engine::Engine;
use crate::output::{FailedImage, OutputDir, Summary, to_json};
use crate::progress::images_bar;

/// Name of the features folder inside the output.
pub const FEATURES_DIR: &str = "features/";
/// Name of the run summary inside the output.
pub const SUMMARY_FILE: &str = "summary.json";

/// Number of image files under the registered `images` table (from the listing's exact
/// statistics: nothing is read).
pub async fn count_images(engine: &Engine) -> Result<u64> {
    let batches = engine.ctx.sql(&format!("SELECT count(*) FROM {IMAGES_TABLE}")).await?.collect().await?;
    let count = batches
        .first()
        .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
        .map(|c| c.value(0))
        .context("count(*) returned no value")?;
    Ok(u64::try_from(count)?)
}

/// Runs the job over the images registered on `engine`: each task writes its partition's
/// Parquet file into `output/features/`, then this process commits the run with
/// `features/_SUCCESS` and writes `output/summary.json`.
pub async fn run(engine: &Engine, input: &str, output: &str, quiet: bool) -> Result<Summary> {
    let started = Instant::now();
    let read_before = bytes_read();
    let runtime = engine.ctx.runtime_env();
    let output = OutputDir::resolve(output, &runtime)?;
    let features = FeaturesDir::open(&runtime, &output.child_url(FEATURES_DIR))?;

    let total = count_images(engine).await.with_context(|| format!("cannot list the images under {input}"))?;
    if total == 0 {
        bail!("no image files (.jpg, .jpeg, .png) found under {input}");
    }

    // Until this run commits, the output holds no finished result.
    features.begin().await?;
    output.delete(SUMMARY_FILE).await?;

    let run_id = new_run_id();
    let query = format!("SELECT path, label, {FEATURIZE_OR_ERROR}(content) AS result FROM {IMAGES_TABLE}");
    let select = engine.ctx.sql(&query).await?.into_unoptimized_plan();
    let write = WriteFeatures::try_new(select, features.url(), &run_id)?.into_plan();
    let bar = images_bar(total, quiet);
    let ticker = track_progress(engine, &bar);
    let reports = DataFrame::new(engine.ctx.state(), write).collect().await;
    ticker.abort();
    bar.finish_and_clear();
    let reports = reports.context("the featurize job failed; nothing was committed")?;

    let manifest = Manifest::from_reports(&run_id, &reports)?;
    if manifest.rows != total {
        bail!(
            "the job wrote {} rows for {total} listed images (did the input change while it ran?); nothing was committed",
            manifest.rows
        );
    }
    let removed = features.commit(&manifest).await?;
    log::info!("committed run {run_id}: {} files, {removed} stale files removed", manifest.files.len());

    let failed = read_failures(&features, &manifest, &engine.ctx).await?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        input: input.to_owned(),
        output: output.child_url(""),
        model: engine.featurizer().map(|f| f.config().model_path.display().to_string()),
        engine: engine.describe(),
        run_id,
        rows_in: total,
        rows_out: manifest.rows,
        featurized: manifest.rows - manifest.failed,
        failed,
        files: manifest.files.iter().map(|f| f.file.clone()).collect(),
        seconds,
        images_per_second: total as f64 / seconds,
        client_bytes_read: bytes_read().zip(read_before).map(|(after, before)| after.saturating_sub(before)),
        pca: None,
    };
    output.put(SUMMARY_FILE, to_json(&summary)?).await?;
    Ok(summary)
}

/// Bytes this process has read so far, from files and sockets alike (Linux only).
fn bytes_read() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|line| line.strip_prefix("rchar:"))?.trim().parse().ok()
}

/// `<unix seconds>-<random>`: sorts by time, unique across clients.
fn new_run_id() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{seconds}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// Moves `bar` while the job runs. On the embedded engine the model counts the images it has
/// seen; Ballista hands results back only when the job ends.
fn track_progress(engine: &Engine, bar: &ProgressBar) -> tokio::task::JoinHandle<()> {
    let bar = bar.clone();
    let featurizer = engine.featurizer().map(Arc::clone);
    tokio::spawn(async move {
        let start = featurizer.as_ref().map_or(0, |f| f.images_seen());
        let mut interval = tokio::time::interval(Duration::from_millis(200));
        loop {
            interval.tick().await;
            match &featurizer {
                Some(f) => {
                    bar.set_position(f.images_seen().saturating_sub(start).min(bar.length().unwrap_or(u64::MAX)))
                }
                None => bar.tick(),
            }
        }
    })
}

/// Committed features files as a frame of a local DataFusion session on `ctx`'s stores: the
/// client reads them back (failures, PCA) without a round trip through the cluster.
pub async fn read_committed(ctx: &SessionContext, files: Vec<String>) -> Result<DataFrame> {
    let local = SessionContext::new_with_config_rt(SessionConfig::new(), ctx.runtime_env());
    Ok(local.read_parquet(files, ParquetReadOptions::default()).await?)
}

/// Column `i` of `batch` as Utf8: Parquet strings may come back as string views.
pub fn utf8_column(batch: &RecordBatch, i: usize) -> Result<ArrayRef> {
    Ok(cast(batch.column(i), &DataType::Utf8)?)
}

/// The images that could not be featurized, read back from the committed files that have any.
async fn read_failures(features: &FeaturesDir, manifest: &Manifest, ctx: &SessionContext) -> Result<Vec<FailedImage>> {
    let files: Vec<String> =
        manifest.files.iter().filter(|f| f.failed > 0).map(|f| features.file_url(&f.file)).collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let batches = read_committed(ctx, files)
        .await?
        .filter(col("error").is_not_null())?
        .select_columns(&["path", "label", "error"])?
        .sort(vec![col("path").sort(true, false)])?
        .collect()
        .await
        .context("cannot read the failed images back from the committed files")?;
    let mut failed = Vec::new();
    for batch in &batches {
        let (paths, labels, errors) = (utf8_column(batch, 0)?, utf8_column(batch, 1)?, utf8_column(batch, 2)?);
        let (paths, labels, errors) = (paths.as_string::<i32>(), labels.as_string::<i32>(), errors.as_string::<i32>());
        for row in 0..batch.num_rows() {
            failed.push(FailedImage {
                path: paths.value(row).to_owned(),
                label: labels.is_valid(row).then(|| labels.value(row).to_owned()),
                error: errors.value(row).to_owned(),
            });
        }
    }
    Ok(failed)
}

/// The human summary printed at the end of `fruits run`.
pub fn print_summary(summary: &Summary) {
    println!(
        "{} images from {} -> {}{FEATURES_DIR} ({} file{}, committed)",
        summary.rows_in,
        summary.input,
        summary.output,
        summary.files.len(),
        if summary.files.len() == 1 { "" } else { "s" }
    );
    println!("  featurized {}, failed {}", summary.featurized, summary.failed.len());
    for failure in summary.failed.iter().take(10) {
        println!("    {}: {}", failure.path, failure.error);
    }
    if summary.failed.len() > 10 {
        println!("    ... and {} more in {}{SUMMARY_FILE}", summary.failed.len() - 10, summary.output);
    }
    println!("  {:.1} s, {:.1} images/s ({})", summary.seconds, summary.images_per_second, summary.engine);
}
