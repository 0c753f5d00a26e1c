//! `fruits run`: featurize, PCA, commit, then the views of the committed run.
//!
//! The order is what keeps the previous result safe:
//! 1. take the output's lease (a second run into the same output refuses);
//! 2. write this run's feature files and PCA projections under its own names, beside the
//!    previous result, which readers keep seeing;
//! 3. withdraw the views (`summary.json`, `pca.png`, `features.csv`) of the previous run, then
//!    commit this run's manifest in one write, then write this run's views: a reader never
//!    sees a view of one run beside the features of another;
//! 4. delete what fruits wrote for earlier runs and failed attempts (files, unfinished S3
//!    multipart uploads, local staging files), and nothing else.
//!
//! Killed before step 3, the previous result is untouched; killed inside it, the previous
//! result or this one is committed, with its views missing until the next run. Leftovers of a
//! killed run are deleted by the next run that commits.

use anyhow::{Context, Result, bail};
use fruits_udfs::{FeaturesDir, Lease, Location, MANIFEST_FILE, PartFile, RunId};

use crate::cli::RunArgs;
use crate::engine::Engine;
use crate::featurize::{self, FEATURES_DIR, Featurized};
use crate::pca_stage::{self, CSV_FILE, PLOT_FILE};
use crate::summary::{SUMMARY_FILE, Summary, to_json};

/// `text`: print the summary for people; `quiet`: no progress bar either.
pub async fn run(args: &RunArgs, text: bool, quiet: bool) -> Result<Summary> {
    let engine = Engine::start(&args.engine, &args.model).await?;
    let input = &args.input.input;
    engine.register_images(input, args.input.scan_options())?;
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
    let features = FeaturesDir::new(output.child(FEATURES_DIR)?);
    features.begin(lease).await?;
    let pca = args.pca.options();
    let pca_mode = (!args.no_pca).then_some(pca.mode);

    let Featurized { mut summary, files, moments } =
        featurize::run(engine, &args.input.input, output, &features, run_id, pca_mode, quiet).await?;
    if text {
        summary.print(FEATURES_DIR);
    }
    // Fitted before the commit, so that the run commits with its projections in place.
    let fitted = match pca_mode {
        Some(_) => Some(pca_stage::fit(&engine.ctx, &files, output, pca, moments).await),
        None => None,
    };

    for view in [SUMMARY_FILE, PLOT_FILE, CSV_FILE] {
        output.delete(view).await?;
    }
    features.commit(&files.manifest, lease).await?;
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

    let mut removed = features.remove_leftovers(lease).await?;
    removed.extend(pca_stage::remove_leftovers(output, run_id.as_str()).await?);
    // This run's uploads are all complete and it holds the lease: any unfinished one of fruits'
    // names (a part file, a manifest, a view; on a local disk each write is staged) is a killed
    // run's.
    let owned = |name: &str| {
        [SUMMARY_FILE, PLOT_FILE, CSV_FILE].contains(&name)
            || name.strip_prefix(FEATURES_DIR).is_some_and(|f| f == MANIFEST_FILE || PartFile::parse(f).is_some())
            || name.strip_prefix("pca/part-").and_then(|f| f.strip_suffix(".parquet")).is_some_and(|r| RunId::parse(r).is_some())
    };
    removed.extend(engine.stores.abort_incomplete_uploads(output, owned).await?);
    if !removed.is_empty() {
        log::info!("removed {} leftovers of earlier runs and failed attempts: {}", removed.len(), removed.join(", "));
    }
    match pca_error {
        Some(e) => {
            Err(e.context(format!("the features are committed in {}{FEATURES_DIR}, but the PCA failed", output.url())))
        }
        None => Ok(summary),
    }
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
