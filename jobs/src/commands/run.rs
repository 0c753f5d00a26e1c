//! `fruits run`: featurize, PCA, commit, then the views of the committed run.
//!
//! The order is what keeps the previous result safe:
//! 1. take the output's lease (a second run into the same output refuses);
//! 2. list the input once, comparing each entry with the committed result as it comes (see
//!    `increment`): a result of the same model is brought up to date, featurizing only new and
//!    changed images;
//!    write this run's feature files (new ones, and rewrites of committed files that lose
//!    rows) and PCA projections under its own names, beside the previous result, which readers
//!    keep seeing;
//! 3. withdraw the views (`summary.json`, `pca.png`, `features.csv`) of the previous run, then
//!    commit this run's manifest in one write, then write this run's views: a reader never
//!    sees a view of one run beside the features of another;
//! 4. delete what fruits wrote for earlier runs and failed attempts (files, unfinished S3
//!    multipart uploads, local staging files), and nothing else.
//!
//! Killed before step 3, the previous result is untouched; killed inside it, the previous
//! result or this one is committed, with its views missing until the next run. Leftovers of a
//! killed run are deleted by the next run that commits.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use fruits_udfs::{FeaturesDir, Lease, Location, MANIFEST_FILE, Manifest, PartFile, RunId, is_worklist};

use crate::cli::{PcaMode, PcaOptions, RunArgs};
use crate::committed::FeatureFiles;
use crate::engine::{self, Engine};
use crate::featurize::{self, FEATURES_DIR};
use crate::increment::{self, Decision};
use crate::pca_stage::{self, CSV_FILE, PLOT_FILE};
use crate::summary::{Incremental, SUMMARY_FILE, Stages, Summary, WrittenSummary, to_json};

/// `text`: print the summary for people; `quiet`: no progress bar either.
pub async fn run(args: &RunArgs, text: bool, quiet: bool) -> Result<Summary> {
    let engine = Engine::start(&args.engine, &args.model).await?;
    let input = &args.input.input;
    // This process lists the input, on a cluster too.
    engine::check_input(input)?;
    let output = Location::create(&args.output, &engine.ctx.runtime_env())?;
    refuse_output_inside_input(input, &output, &engine)?;

    let run_id = RunId::new();
    let lease = Lease::acquire(&output, run_id.as_str()).await?;
    let result = run_holding(&engine, args, &output, &run_id, &lease, text, quiet).await;
    if let Err(e) = lease.release().await {
        log::warn!("cannot release the lease on {}: {e}", output.url());
    }
    result
}

async fn run_holding(
    engine: &Engine,
    args: &RunArgs,
    output: &Location,
    run_id: &RunId,
    lease: &Lease,
    text: bool,
    quiet: bool,
) -> Result<Summary> {
    let mut meter = Meter::start();
    let input = &args.input.input;
    let features = FeaturesDir::new(output.child(FEATURES_DIR)?);
    features.begin(lease).await?;
    let model = featurize::model_fingerprint(engine).await?;
    meter.lap();
    let mut comparison = increment::compare_with(&features, &model, args.full).await?;
    meter.stages.compare = meter.lap();
    let work =
        featurize::list(engine, input, &features, run_id, |input, entry| comparison.featurize(input, entry)).await?;
    meter.stages.listing = meter.lap();
    let rows_in = work.listed.rows();
    let decision = comparison.decide();
    let pca = (!args.no_pca).then(|| args.pca.options());

    // Nothing new, changed or deleted: the committed run stands, and so do its views when they
    // are there and describe it.
    if let Decision::Incremental(increment) = &decision {
        let committed = &increment.previous.run_id;
        if increment.is_empty()
            && let Some(views) = current_views(output, committed, pca).await?
        {
            work.discard(&features).await;
            let files = FeatureFiles { folder: features.clone(), manifest: increment.previous.clone() };
            let history = (Some(increment.counts.clone()), None);
            let mut summary = summarize(engine, args, output, &files, rows_in, history, 0, &meter).await?;
            summary.pca = views.pca;
            if text {
                summary.print(FEATURES_DIR);
                println!("  up to date: run {committed} stays committed, with its {SUMMARY_FILE} and {PLOT_FILE}");
            }
            remove_leftovers(engine, output, &features, lease, committed).await?;
            return Ok(summary);
        }
    }

    // A full job sees every row, so its tasks can return the moments of the whole result.
    let with_moments = matches!(decision, Decision::Full { .. })
        && pca.is_some_and(|pca| pca.mode.resolve(rows_in) == PcaMode::Distributed);
    let job = featurize::run(engine, &args.input, &work, &features, run_id, &model, with_moments, quiet).await?;
    let featurized_this_run = job.manifest.rows;
    meter.stages.featurize = meter.lap();
    let (files, incremental, full_run_reason) = match decision {
        Decision::Full { reason } => (job.manifest.files, None, reason),
        Decision::Incremental(increment) => {
            let counts = increment.counts.clone();
            let mut files = increment.carry_over(&features, run_id).await?;
            files.extend(job.manifest.files);
            (files, Some(counts), None)
        }
    };
    meter.stages.carry_over = meter.lap();
    let files =
        FeatureFiles { folder: features.clone(), manifest: Manifest::of_files(run_id.as_str(), Some(model), files)? };
    let history = (incremental, full_run_reason);
    let mut summary = summarize(engine, args, output, &files, rows_in, history, featurized_this_run, &meter).await?;
    if text {
        summary.print(FEATURES_DIR);
    }
    // Fitted before the commit, so that the run commits with its projections in place.
    let fitted = match pca {
        Some(pca) => Some(pca_stage::fit(&engine.ctx, &files, output, pca, job.moments).await),
        None => None,
    };
    meter.lap();

    for view in [SUMMARY_FILE, PLOT_FILE, CSV_FILE] {
        output.delete(view).await?;
    }
    features.commit(&files.manifest, lease).await?;
    summary.stages.commit = meter.lap();
    log::info!("committed run {run_id}: {} files", files.manifest.files.len());

    let published = match fitted {
        Some(Ok(fitted)) => fitted.publish(&engine.ctx, &files, output).await.map(|()| Some(fitted.summary)),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    };
    let pca_error = match published {
        Ok(pca) => {
            if let (true, Some(pca)) = (text, &pca) {
                pca.print();
            }
            summary.pca = pca;
            None
        }
        Err(e) => Some(e),
    };
    output.put(SUMMARY_FILE, to_json(&summary)?).await?;

    remove_leftovers(engine, output, &features, lease, run_id.as_str()).await?;
    match pca_error {
        Some(e) => {
            Err(e.context(format!("the features are committed in {}{FEATURES_DIR}, but the PCA failed", output.url())))
        }
        None => Ok(summary),
    }
}

/// Deletes what fruits wrote for runs other than the committed `run` and for failed attempts
/// (files, unfinished S3 multipart uploads, local staging files), and nothing else.
async fn remove_leftovers(
    engine: &Engine,
    output: &Location,
    features: &FeaturesDir,
    lease: &Lease,
    run: &str,
) -> Result<()> {
    let mut removed = features.remove_leftovers(lease).await?;
    removed.extend(pca_stage::remove_leftovers(output, run).await?);
    // This process's uploads are all complete and it holds the lease: any unfinished one of fruits'
    // names (a part file, a manifest, a view; on a local disk each write is staged) is a killed
    // run's.
    let owned = |name: &str| {
        [SUMMARY_FILE, PLOT_FILE, CSV_FILE].contains(&name)
            || name
                .strip_prefix(FEATURES_DIR)
                .is_some_and(|f| f == MANIFEST_FILE || PartFile::parse(f).is_some() || is_worklist(f))
            || pca_stage::is_projections_file(name)
    };
    removed.extend(engine.stores.abort_incomplete_uploads(output, owned).await?);
    if !removed.is_empty() {
        log::info!("removed {} leftovers of earlier runs and failed attempts: {}", removed.len(), removed.join(", "));
    }
    Ok(())
}

/// What a run has cost so far: its time, stage by stage, and what this process read.
struct Meter {
    started: Instant,
    read_before: Option<u64>,
    lap: Instant,
    stages: Stages,
}

impl Meter {
    fn start() -> Self {
        let now = Instant::now();
        Self { started: now, read_before: featurize::bytes_read(), lap: now, stages: Stages::default() }
    }

    /// Seconds since the last lap.
    fn lap(&mut self) -> f64 {
        let seconds = self.lap.elapsed().as_secs_f64();
        self.lap = Instant::now();
        seconds
    }
}

/// What a run did, once its result is known (the PCA part still empty). `history`: the
/// incremental counts, or why the run was full.
#[allow(clippy::too_many_arguments)]
async fn summarize(
    engine: &Engine,
    args: &RunArgs,
    output: &Location,
    files: &FeatureFiles,
    rows_in: u64,
    (incremental, full_run_reason): (Option<Incremental>, Option<String>),
    featurized_this_run: u64,
    meter: &Meter,
) -> Result<Summary> {
    let seconds = meter.started.elapsed().as_secs_f64();
    let manifest = &files.manifest;
    Ok(Summary {
        input: args.input.input.clone(),
        output: output.url().to_owned(),
        model: engine.featurizer().map(|f| f.config().model_path.display().to_string()),
        engine: engine.describe(),
        run_id: manifest.run_id.clone(),
        rows_in,
        rows_out: manifest.rows,
        featurized: manifest.rows - manifest.failed,
        failed: files.failures(&engine.ctx).await?,
        files: manifest.files.iter().map(|f| f.file.clone()).collect(),
        incremental,
        full_run_reason,
        featurized_this_run,
        seconds,
        images_per_second: featurized_this_run as f64 / seconds,
        client_bytes_read: featurize::bytes_read()
            .zip(meter.read_before)
            .map(|(after, before)| after.saturating_sub(before)),
        stages: meter.stages,
        pca: None,
    })
}

/// The views in `output` when they describe run `run`, with the PCA `pca` asks for, if any.
async fn current_views(output: &Location, run: &str, pca: Option<PcaOptions>) -> Result<Option<WrittenSummary>> {
    let Some(bytes) = output.get(SUMMARY_FILE).await? else {
        return Ok(None);
    };
    // An unreadable summary is no view of the run: the run commits and writes a new one.
    let Ok(written) = serde_json::from_slice::<WrittenSummary>(&bytes) else {
        return Ok(None);
    };
    let pca_current = match (pca, &written.pca) {
        (None, _) => true,
        (Some(wanted), Some(written)) => {
            written.components == wanted.k && (!wanted.csv || written.files.iter().any(|f| f == CSV_FILE))
        }
        (Some(_), None) => false,
    };
    let current = written.run_id == run && pca_current;
    Ok(current.then_some(written))
}

/// An output inside the input would be read back as input by the next run (`pca.png` as an
/// image labelled `out`): refuse it while nothing is written.
fn refuse_output_inside_input(input: &str, output: &Location, engine: &Engine) -> Result<()> {
    let input = Location::parse(&canonical(input), &engine.ctx.runtime_env())
        .with_context(|| format!("invalid input location {input}"))?;
    if output.url().starts_with(input.url()) {
        bail!(
            "the output {} is inside the input {}: the next run would read its plots as images; \
             choose an output folder outside the input",
            output.url(),
            input.url()
        );
    }
    Ok(())
}

/// A local input by its canonical path (so `./photos/../photos` is `photos`); URLs as given.
fn canonical(input: &str) -> String {
    if fruits_udfs::is_url(input) {
        return input.to_owned();
    }
    std::fs::canonicalize(input).map_or_else(|_| input.to_owned(), |p| p.display().to_string())
}
