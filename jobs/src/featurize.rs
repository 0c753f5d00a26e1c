//! The featurize job: every image under the input embedded and written by the engine's tasks
//! into `OUTPUT/features/`, next to the result committed there before, which it leaves alone.
//! The commit is the caller's (see `commands::run`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use fruits_pca::Moments;
use fruits_udfs::{
    FEATURIZE_OR_ERROR, FeaturesDir, IMAGES_TABLE, Location, READ_ERROR, RunId, WriteFeatures, WriteResult,
};
use indicatif::ProgressBar;

use crate::cli::PcaMode;
use crate::committed::FeatureFiles;
use crate::engine::{Engine, Mode};
use crate::progress::{counting_bar, track_cluster_job};
use crate::summary::Summary;

/// Name of the features folder inside the output.
pub const FEATURES_DIR: &str = "features/";

/// Fewest images per task when tasks return feature moments. A task's moments are a fixed 6.6 MB
/// (1,280 features), against 5 KB of features per image: below about 1,300 images a task's
/// moments outweigh the features they summarise, and the final merge receives all of them.
/// Measured at 50,000 images on the embedded engine: 256 images per task (196 tasks) peaked at
/// 2.2 GB, 2,048 (26 tasks) at 0.72 GB, in the same job time.
const MIN_FILES_PER_MOMENTS_TASK: usize = 2048;

/// A run whose feature files are written, not yet committed.
pub struct Featurized {
    /// What the run did (its `pca` part still empty); not written yet.
    pub summary: Summary,
    /// The files written, and the manifest that will commit them.
    pub files: FeatureFiles,
    /// The feature moments the executors aggregated, when the PCA is to be distributed.
    pub moments: Option<Moments>,
}

/// Runs the job over the images registered on `engine`, writing run `run_id`'s files into
/// `features` (the features folder of `output`). Nothing is committed or withdrawn: until the
/// caller commits, readers keep seeing the previous result.
///
/// With `pca` resolving to [`PcaMode::Distributed`] for the number of images, every task also
/// returns the moments of its features and a final aggregate of the same job merges them.
pub async fn run(
    engine: &Engine,
    input: &str,
    output: &Location,
    features: &FeaturesDir,
    run_id: &RunId,
    pca: Option<PcaMode>,
    quiet: bool,
) -> Result<Featurized> {
    let started = Instant::now();
    let read_before = bytes_read();

    let total = count_images(engine).await.with_context(|| format!("cannot list the images under {input}"))?;
    if total == 0 {
        bail!("no image files (.jpg, .jpeg, .png) found under {input}");
    }
    let with_moments = pca.is_some_and(|mode| mode.resolve(total) == PcaMode::Distributed);
    if with_moments {
        engine.widen_image_tasks(input, MIN_FILES_PER_MOMENTS_TASK).await?;
    }
    let query = format!(
        "SELECT path, label, {FEATURIZE_OR_ERROR}(content, {READ_ERROR}) AS result FROM {IMAGES_TABLE}"
    );
    let select = engine.ctx.sql(&query).await?.into_unoptimized_plan();
    let write = WriteFeatures::try_new(select, features.url(), run_id)?.with_moments(with_moments);

    let bar = counting_bar(total, "images", quiet);
    let ticker = track_progress(engine, &bar, run_id);
    // The run id names the Ballista job, so its progress can be found on the scheduler.
    let state = SessionStateBuilder::new_from_existing(engine.ctx.state())
        .with_config(engine.ctx.copied_config().with_ballista_job_name(&job_name(run_id)))
        .build();
    let result = DataFrame::new(state, write.to_plan()?).collect().await;
    ticker.abort();
    bar.finish_and_clear();
    let result = result.context("the featurize job failed; nothing was committed")?;
    let WriteResult { manifest, moments } = write.read_result(&result)?;

    if manifest.rows != total {
        bail!(
            "the job wrote {} rows for {total} listed images (did the input change while it ran?); nothing was committed",
            manifest.rows
        );
    }
    let files = FeatureFiles { folder: features.clone(), manifest };
    let failed = files.failures(&engine.ctx).await?;
    let seconds = started.elapsed().as_secs_f64();
    let manifest = &files.manifest;
    let summary = Summary {
        input: input.to_owned(),
        output: output.url().to_owned(),
        model: engine.featurizer().map(|f| f.config().model_path.display().to_string()),
        engine: engine.describe(),
        run_id: run_id.to_string(),
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
    Ok(Featurized { summary, files, moments })
}

/// Number of image files under the registered `images` table (from the listing's exact
/// statistics: nothing is read).
async fn count_images(engine: &Engine) -> Result<u64> {
    let batches = engine.ctx.sql(&format!("SELECT count(*) FROM {IMAGES_TABLE}")).await?.collect().await?;
    let count = batches
        .first()
        .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
        .map(|c| c.value(0))
        .context("count(*) returned no value")?;
    Ok(u64::try_from(count)?)
}

/// The Ballista job name of run `run_id`.
fn job_name(run_id: &RunId) -> String {
    format!("fruits run {run_id}")
}

/// Bytes this process has read so far through `read`/`pread` calls, from `/proc/self/io`
/// (Linux only). Socket reads by `recv` are not counted.
fn bytes_read() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|line| line.strip_prefix("rchar:"))?.trim().parse().ok()
}

/// Moves `bar` while the job runs. On the embedded engine the model counts the images it has
/// seen; on a cluster the scheduler's job status says which tasks are done and how many images
/// they read (Ballista hands results back only when the job ends).
fn track_progress(engine: &Engine, bar: &ProgressBar, run_id: &RunId) -> tokio::task::JoinHandle<()> {
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
        Mode::Cluster { address, secret, .. } => {
            tokio::spawn(track_cluster_job(address.clone(), secret.clone(), job_name(run_id), bar.clone()))
        }
    }
}
