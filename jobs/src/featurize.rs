//! The featurize job: the images of a run's work list embedded and written by the engine's
//! tasks into `OUTPUT/features/`, next to the result committed there before, which it leaves
//! alone. The commit is the caller's (see `commands::run`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use fruits_pca::Moments;
use fruits_udfs::{
    Entry, FEATURIZE_OR_ERROR, FeaturesDir, IMAGES_TABLE, Location, MODEL_FINGERPRINT, Manifest, READ_ERROR, RunId,
    ScanOptions, WorklistCounts, WorklistWriter, WriteFeatures, WriteResult, list_entries, worklist_name,
};
use futures::TryStreamExt;
use indicatif::ProgressBar;

use crate::cli::InputArgs;
use crate::engine::{Engine, Mode};
use crate::progress::{counting_bar, track_cluster_job};

/// Name of the features folder inside the output.
pub const FEATURES_DIR: &str = "features/";

/// Fewest images per task when tasks return feature moments. A task's moments are a fixed 6.6 MB
/// (1,280 features), against 5 KB of features per image: below about 1,300 images a task's
/// moments outweigh the features they summarise, and the final merge receives all of them.
/// Measured at 50,000 images on the embedded engine: 256 images per task (196 tasks) peaked at
/// 2.2 GB, 2,048 (26 tasks) at 0.72 GB, in the same job time.
const MIN_FILES_PER_MOMENTS_TASK: usize = 2048;

/// Most tasks of a job that returns feature moments, so that the final merge stays bounded
/// whatever the number of images: its task receives every state (one row of 6.6 MB each) and
/// DataFusion gathers rows into batches by count, not bytes. Measured with `make bench-scale`:
/// 49 states (10^5 images) peaked at 813 MB in the merging executor. Past 64 x 2,048 images the
/// tasks grow instead (15,625 images each at 10^6).
const MAX_MOMENTS_TASKS: usize = 64;

/// What a featurize job wrote, not yet committed.
pub struct Job {
    /// The files the job wrote (none when it had nothing to read).
    pub manifest: Manifest,
    /// The feature moments the executors aggregated, when asked for.
    pub moments: Option<Moments>,
}

/// The entries a run featurizes: its work list in the features folder (see [`list`]).
pub struct Work {
    name: String,
    url: String,
    /// What the work list holds.
    pub counts: WorklistCounts,
    /// What the listing found, featurized or not.
    pub listed: WorklistCounts,
}

impl Work {
    /// Removes the work list: only the job reads it.
    pub async fn discard(&self, features: &FeaturesDir) {
        if let Err(e) = features.location().delete(&self.name).await {
            log::warn!("cannot remove the work list {}: {e}", self.url);
        }
    }
}

/// Lists the images under `input` once, for the whole run, and writes the entries `keep`
/// wants into run `run_id`'s work list as the listing goes. The scan (planned on the scheduler
/// in a cluster) reads the work list, not a new listing; neither side holds all of it.
pub async fn list(
    engine: &Engine,
    input: &str,
    features: &FeaturesDir,
    run_id: &RunId,
    mut keep: impl FnMut(&Location, &Entry) -> bool,
) -> Result<Work> {
    let location =
        Location::parse(input, &engine.ctx.runtime_env()).with_context(|| format!("invalid input location {input}"))?;
    let name = worklist_name(run_id);
    let mut writer = WorklistWriter::create(features.location(), &name)?;
    let mut listed = WorklistCounts::default();
    let mut entries = list_entries(&location);
    while let Some(entry) = entries.try_next().await.with_context(|| format!("cannot list the images under {input}"))? {
        match &entry {
            Entry::Image(_) => listed.images += 1,
            Entry::Skipped(skipped) => {
                listed.skipped += 1;
                log::warn!("skipped {}: {}", location.url_of(&skipped.location), skipped.reason);
            }
        }
        if keep(&location, &entry) {
            writer.push(entry).await?;
        }
    }
    let (counts, url) =
        writer.finish().await.with_context(|| format!("cannot write the work list {}", features.file_url(&name)))?;
    let work = Work { name, url, counts, listed };
    if listed.images == 0 {
        work.discard(features).await;
        bail!("no image files (.jpg, .jpeg, .png) found under {input}");
    }
    Ok(work)
}

/// Runs the job over the entries of `work` (listed under `input.input`), writing run `run_id`'s
/// files into `features` with the features of `model` (the fingerprint the engine's
/// executors must have), then removes the work list. Nothing is committed or withdrawn: until
/// the caller commits, readers keep seeing the previous result.
///
/// With `with_moments`, every task also returns the moments of its features and a final
/// aggregate of the same job merges them.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    engine: &Engine,
    input: &InputArgs,
    work: &Work,
    features: &FeaturesDir,
    run_id: &RunId,
    model: &str,
    with_moments: bool,
    quiet: bool,
) -> Result<Job> {
    let total = work.counts.rows();
    if total == 0 {
        work.discard(features).await;
        return Ok(Job { manifest: Manifest::of_files(run_id.as_str(), None, Vec::new())?, moments: None });
    }
    let options = input.scan_options();
    let options = match with_moments {
        true => {
            let files_per_partition = options
                .files_per_partition
                .max(MIN_FILES_PER_MOMENTS_TASK)
                .max((total as usize).div_ceil(MAX_MOMENTS_TASKS));
            ScanOptions { files_per_partition, ..options }
        }
        false => options,
    };
    engine.register_images(&input.input, options, Some(&work.url))?;
    let result = write(engine, features, run_id, total, with_moments, quiet).await;
    work.discard(features).await;
    let WriteResult { manifest, moments } = result?;
    if manifest.rows != total {
        bail!(
            "the job wrote {} rows for {total} listed images (did the input change while it ran?); nothing was committed",
            manifest.rows
        );
    }
    if let Some(written) = manifest.model.as_deref().filter(|written| *written != model) {
        bail!(
            "the executors featurized with {written}, not with {model} as they said before the job; nothing was committed"
        );
    }
    Ok(Job { manifest, moments })
}

/// The featurize query over the registered `images`, under the features write.
async fn write(
    engine: &Engine,
    features: &FeaturesDir,
    run_id: &RunId,
    total: u64,
    with_moments: bool,
    quiet: bool,
) -> Result<WriteResult> {
    let query = format!(
        "SELECT path, label, size, modified, etag, {FEATURIZE_OR_ERROR}(content, {READ_ERROR}) AS result, \
         {MODEL_FINGERPRINT}() AS model FROM {IMAGES_TABLE}"
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
    Ok(write.read_result(&result)?)
}

/// The fingerprint of the model the engine featurizes with: the embedded one's, or, on a
/// cluster, the one an executor reports (each file of the job records its own, checked at the
/// commit).
pub async fn model_fingerprint(engine: &Engine) -> Result<String> {
    if let Some(featurizer) = engine.featurizer() {
        return Ok(featurizer.fingerprint().to_owned());
    }
    let batches = engine
        .ctx
        .sql(&format!("SELECT {MODEL_FINGERPRINT}()"))
        .await?
        .collect()
        .await
        .context("cannot ask the executors which model they run")?;
    let column = batches.first().map(|b| cast(b.column(0), &DataType::Utf8)).transpose()?;
    column
        .as_ref()
        .and_then(|c| c.as_string_opt::<i32>())
        .filter(|c| !c.is_empty() && c.is_valid(0))
        .map(|c| c.value(0).to_owned())
        .context("the executors did not name their model")
}

/// The Ballista job name of run `run_id`.
fn job_name(run_id: &RunId) -> String {
    format!("fruits run {run_id}")
}

/// Bytes this process has read so far through `read`/`pread` calls, from `/proc/self/io`
/// (Linux only). Socket reads by `recv` are not counted.
pub fn bytes_read() -> Option<u64> {
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
        Mode::Cluster { api, .. } => tokio::spawn(track_cluster_job(api.clone(), job_name(run_id), bar.clone())),
    }
}
