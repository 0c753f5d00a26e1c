//! `fruits run`: featurize every image under a location, write the features where they belong
//! and commit them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::dataframe::DataFrame;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionStateBuilder;
use datafusion::functions::expr_fn::named_struct;
use datafusion::functions_aggregate::expr_fn::array_agg;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, lit};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext, col};
use fruits_pca::Moments;
use fruits_udfs::sink::write_report_schema;
use fruits_udfs::{
    FEATURIZE_OR_ERROR, FeaturesDir, IMAGES_TABLE, MERGE_FEATURE_MOMENTS, Manifest, WriteFeatures, decode_moments,
};
use indicatif::ProgressBar;

use crate::engine::{Engine, Mode};
use crate::output::{FailedImage, OutputDir, Summary, to_json};
use crate::pca::PcaMode;
use crate::progress::{counting_bar, track_cluster_job};

/// Name of the features folder inside the output.
pub const FEATURES_DIR: &str = "features/";
/// Name of the run summary inside the output.
pub const SUMMARY_FILE: &str = "summary.json";

/// Fewest images per task when tasks return feature moments. A task's moments are a fixed 6.6 MB
/// (1,280 features), against 5 KB of features per image: below about 1,300 images a task's
/// moments outweigh the features they summarise, and the final merge receives all of them.
/// Measured at 50,000 images on the embedded engine: 256 images per task (196 tasks) peaked at
/// 2.2 GB, 2,048 (26 tasks) at 0.72 GB, in the same job time.
const MIN_FILES_PER_MOMENTS_TASK: usize = 2048;

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

/// What a committed run returns.
pub struct Outcome {
    pub summary: Summary,
    /// The feature moments the executors aggregated, when the PCA is to be distributed.
    pub moments: Option<Moments>,
}

/// Runs the job over the images registered on `engine`: each task writes its partition's
/// Parquet file into `output/features/`, then this process commits the run with
/// `features/_SUCCESS` and writes `output/summary.json`.
///
/// With `pca` resolving to [`PcaMode::Distributed`] for the number of images, every task also
/// returns the moments of its features and a final aggregate of the same job merges them.
pub async fn run(engine: &Engine, input: &str, output: &str, pca: Option<PcaMode>, quiet: bool) -> Result<Outcome> {
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
    let with_moments = pca.is_some_and(|mode| mode.resolve(total) == PcaMode::Distributed);
    if with_moments {
        engine.widen_image_tasks(input, MIN_FILES_PER_MOMENTS_TASK).await?;
    }
    let plan = job_plan(engine, features.url(), &run_id, with_moments).await?;
    let bar = counting_bar(total, "images", quiet);
    let ticker = track_progress(engine, &bar, &run_id);
    // The run id names the Ballista job, so its progress can be found on the scheduler.
    let state = SessionStateBuilder::new_from_existing(engine.ctx.state())
        .with_config(engine.ctx.copied_config().with_ballista_job_name(&job_name(&run_id)))
        .build();
    let result = DataFrame::new(state, plan).collect().await;
    ticker.abort();
    bar.finish_and_clear();
    let result = result.context("the featurize job failed; nothing was committed")?;
    let (reports, moments) = if with_moments { split_aggregate(&result)? } else { (result, None) };

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
    Ok(Outcome { summary, moments })
}

/// The features write over `SELECT path, label, featurize_or_error(content)`; with `moments`,
/// under one aggregate that gathers the write reports and merges the tasks' moments, so a single
/// row comes back: `reports` (a list of report structs) and `moments`.
async fn job_plan(engine: &Engine, features: &str, run_id: &str, moments: bool) -> Result<LogicalPlan> {
    let query = format!("SELECT path, label, {FEATURIZE_OR_ERROR}(content) AS result FROM {IMAGES_TABLE}");
    let select = engine.ctx.sql(&query).await?.into_unoptimized_plan();
    let write = WriteFeatures::try_new(select, features, run_id)?.with_moments(moments).into_plan();
    if !moments {
        return Ok(write);
    }
    let report: Vec<Expr> = write_report_schema()
        .fields()
        .iter()
        .filter(|f| f.name() != "moments")
        .flat_map(|f| [lit(f.name().as_str()), col(f.name())])
        .collect();
    let merge = engine.ctx.udaf(MERGE_FEATURE_MOMENTS)?;
    Ok(LogicalPlanBuilder::from(write)
        .aggregate(
            Vec::<Expr>::new(),
            vec![array_agg(named_struct(report)).alias("reports"), merge.call(vec![col("moments")]).alias("moments")],
        )?
        .build()?)
}

/// The reports and the merged moments out of the aggregate's single row.
fn split_aggregate(result: &[RecordBatch]) -> Result<(Vec<RecordBatch>, Option<Moments>)> {
    let row = result.iter().find(|b| b.num_rows() > 0).context("the featurize job returned no result")?;
    let reports = row.column(0).as_list_opt::<i32>().context("reports is not a list")?.value(0);
    let reports = reports.as_struct_opt().context("reports are not structs")?;
    let moments = row.column(1).as_binary_opt::<i32>().context("moments is not binary")?;
    let moments = moments.is_valid(0).then(|| decode_moments(moments.value(0))).transpose()?;
    Ok((vec![RecordBatch::from(reports.clone())], moments))
}

/// The Ballista job name of run `run_id`.
fn job_name(run_id: &str) -> String {
    format!("fruits run {run_id}")
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
/// seen; on a cluster the scheduler's job status says which tasks are done and how many images
/// they read (Ballista hands results back only when the job ends).
fn track_progress(engine: &Engine, bar: &ProgressBar, run_id: &str) -> tokio::task::JoinHandle<()> {
    match &engine.mode {
        Mode::Embedded { featurizer, .. } => {
            let (bar, featurizer) = (bar.clone(), Arc::clone(featurizer));
            tokio::spawn(async move {
                let start = featurizer.images_seen();
                let mut interval = tokio::time::interval(Duration::from_millis(200));
                loop {
                    interval.tick().await;
                    let seen = featurizer.images_seen().saturating_sub(start);
                    bar.set_position(seen.min(bar.length().unwrap_or(u64::MAX)));
                }
            })
        }
        Mode::Cluster { address, .. } => {
            tokio::spawn(track_cluster_job(address.clone(), job_name(run_id), bar.clone()))
        }
    }
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
