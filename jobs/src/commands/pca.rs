//! `fruits pca`: the PCA stage alone on committed features; its outputs and the `pca` part of
//! `summary.json` go next to them, for the same run, under the output's lease.

use anyhow::{Context, Result};
use datafusion::prelude::{SessionConfig, SessionContext};
use fruits_udfs::{Backend, FeaturesDir, Lease, Location, ObjectStores, RunId};

use crate::cli::PcaCommandArgs;
use crate::committed::FeatureFiles;
use crate::pca_stage;
use crate::summary::{SUMMARY_FILE, to_json};

/// Returns the updated summary (the run's, with its `pca` part replaced).
pub async fn run(args: &PcaCommandArgs, text: bool) -> Result<serde_json::Value> {
    let ctx =
        SessionContext::new_with_config_rt(SessionConfig::new(), ObjectStores::new(args.s3.options()).runtime_env()?);
    fruits_udfs::register(&ctx, &Backend::PlanningOnly);
    let features = Location::parse(&args.features, &ctx.runtime_env())?;
    let output = features.parent().with_context(|| format!("{} is not inside a run's output folder", args.features))?;
    // The lease names this command, not a run: it writes views of the committed run.
    let lease = Lease::acquire(&output, RunId::new().as_str()).await?;
    let result = fit_and_publish(&ctx, args, features, &output, text).await;
    if let Err(e) = lease.release().await {
        log::warn!("cannot release the lease on {}: {e}", output.url());
    }
    result
}

async fn fit_and_publish(
    ctx: &SessionContext,
    args: &PcaCommandArgs,
    features: Location,
    output: &Location,
    text: bool,
) -> Result<serde_json::Value> {
    let committed = FeatureFiles::open(FeaturesDir::new(features)).await?;
    let fitted = pca_stage::fit(ctx, &committed, output, args.pca.options(), None).await?;
    fitted.publish(ctx, &committed, output).await?;
    if text {
        fitted.summary.print();
    }
    let run_id = &committed.manifest.run_id;
    let mut summary = match output.get(SUMMARY_FILE).await? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({})),
        None => serde_json::json!({}),
    };
    // A summary of another run (or none) is replaced by one that names the committed run.
    if summary.get("run_id").and_then(|r| r.as_str()) != Some(run_id.as_str()) {
        summary = serde_json::json!({ "run_id": run_id });
    }
    summary["pca"] = serde_json::to_value(&fitted.summary)?;
    output.put(SUMMARY_FILE, to_json(&summary)?).await?;
    pca_stage::remove_leftovers(output, run_id).await?;
    Ok(summary)
}
