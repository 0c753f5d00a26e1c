//! `fruits run`: featurize and commit, then the PCA, then the summary, written once.

use anyhow::Result;
use fruits_udfs::Location;

use crate::cli::RunArgs;
use crate::engine::Engine;
use crate::featurize::{self, FEATURES_DIR, Featurized};
use crate::pca_stage;
use crate::summary::{SUMMARY_FILE, Summary, to_json};

/// `text`: print the summary for people; `quiet`: no progress bar either.
pub async fn run(args: &RunArgs, text: bool, quiet: bool) -> Result<Summary> {
    let engine = Engine::start(&args.engine, &args.model).await?;
    engine.register_images(&args.input.input, args.input.scan_options())?;
    let output = Location::create(&args.output, &engine.ctx.runtime_env())?;
    let pca = args.pca.options();
    let pca_mode = (!args.no_pca).then_some(pca.mode);

    let Featurized { mut summary, committed, moments } =
        featurize::run(&engine, &args.input.input, &output, pca_mode, quiet).await?;
    if text {
        summary.print(FEATURES_DIR);
    }
    let stage = match pca_mode {
        Some(_) => pca_stage::run(&engine.ctx, &committed, &output, pca, moments).await.map(Some),
        None => Ok(None),
    };
    match stage {
        Ok(pca) => {
            if let (true, Some(pca)) = (text, &pca) {
                pca.print();
            }
            summary.pca = pca;
            output.put(SUMMARY_FILE, to_json(&summary)?).await?;
            Ok(summary)
        }
        Err(e) => {
            // The features are committed: their summary is written all the same.
            output.put(SUMMARY_FILE, to_json(&summary)?).await?;
            Err(e.context(format!("the features are committed in {}{FEATURES_DIR}, but the PCA failed", output.url())))
        }
    }
}
