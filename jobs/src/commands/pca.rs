//! `fruits pca`: the PCA stage alone on committed features; its outputs and the `pca` part of
//! `summary.json` go next to them.

use anyhow::{Context, Result};
use datafusion::prelude::{SessionConfig, SessionContext};
use fruits_udfs::{Backend, FeaturesDir, Location, ObjectStores};

use crate::cli::PcaCommandArgs;
use crate::committed::CommittedFeatures;
use crate::pca_stage;
use crate::summary::{SUMMARY_FILE, to_json};

/// Returns the updated summary (the run's, with its `pca` part replaced).
pub async fn run(args: &PcaCommandArgs, text: bool) -> Result<serde_json::Value> {
    let ctx =
        SessionContext::new_with_config_rt(SessionConfig::new(), ObjectStores::new(args.s3.options()).runtime_env()?);
    fruits_udfs::register(&ctx, &Backend::PlanningOnly);
    let features = Location::parse(&args.features, &ctx.runtime_env())?;
    let output = features.parent().with_context(|| format!("{} is not inside a run's output folder", args.features))?;
    let committed = CommittedFeatures::open(FeaturesDir::new(features)).await?;

    let pca = pca_stage::run(&ctx, &committed, &output, args.pca.options(), None).await?;
    if text {
        pca.print();
    }
    let mut summary = match output.get(SUMMARY_FILE).await? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({})),
        None => serde_json::json!({}),
    };
    summary["pca"] = serde_json::to_value(&pca)?;
    output.put(SUMMARY_FILE, to_json(&summary)?).await?;
    Ok(summary)
}
