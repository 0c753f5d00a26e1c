//! `fruits`: the client. Runs the featurize job, ad-hoc SQL and the PCA on DataFusion Ballista,
//! trains and applies the fruit classifier, and quantizes the model to int8.
//!
//! Read top-down: [`cli`] holds the options, [`commands`] one pipeline per command, and the
//! other modules the parts those pipelines are made of (the engine and its scheduler's REST API,
//! the featurize job, the reader of committed features, the PCA and training stages, the
//! summary, progress, transfers).

mod cli;
mod commands;
mod committed;
mod engine;
mod featurize;
mod increment;
mod pca_stage;
mod progress;
mod python;
mod quantize;
mod scheduler_api;
mod summary;
mod train_stage;
mod transfer;

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ballista's client logs a failed job before returning the same error, which we print.
    let default_level = if cli.quiet { "error" } else { "warn,ballista_core::execution_plans::distributed_query=off" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level)).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if json {
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; with `--json`, prints its summary as one line.
async fn dispatch(cli: Cli) -> Result<()> {
    // Text for people on stdout unless asked for silence or for JSON.
    let text = !cli.quiet && !cli.json;
    let summary = match &cli.command {
        Command::Run(args) => Some(serde_json::to_value(commands::run::run(args, text, cli.quiet).await?)?),
        Command::Pca(args) => Some(commands::pca::run(args, text).await?),
        Command::Train(args) => Some(serde_json::to_value(commands::train::run(args, text).await?)?),
        Command::Quantize(args) => Some(serde_json::to_value(commands::quantize::run(args, text).await?)?),
        Command::Predict(args) => {
            // Prints its own lines, one per image.
            commands::predict::run(args, cli.json, cli.quiet).await?;
            None
        }
        Command::Bench(args) => Some(serde_json::to_value(commands::bench::run(args, text).await?)?),
        _ if cli.json => {
            bail!("--json is supported by `fruits run`, `pca`, `train`, `quantize`, `bench` and `predict`")
        }
        Command::Sql(args) => {
            commands::sql::run(args).await?;
            None
        }
        Command::Upload(args) => {
            commands::upload::run(args, cli.quiet).await?;
            None
        }
        Command::Download(args) => {
            commands::download::run(args, cli.quiet).await?;
            None
        }
    };
    if let (true, Some(summary)) = (cli.json, summary) {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}
