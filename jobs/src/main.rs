//! `fruits`: the client. Runs the featurize job and ad-hoc SQL on DataFusion Ballista.

mod bench;
mod cli;
mod engine;
mod job;
mod output;
mod pca;
mod progress;
mod sql;
mod upload;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command};
use datafusion::prelude::{SessionConfig, SessionContext};
use engine::Engine;
use fruits_udfs::ObjectStores;
use output::{OutputDir, to_json};

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
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            let engine = Engine::start(&args.engine, &args.model).await?;
            engine.register_images(&args.input.input, args.input.scan_options())?;
            let mut summary = job::run(&engine, &args.input.input, &args.output, cli.quiet).await?;
            if !cli.quiet {
                job::print_summary(&summary);
            }
            if !args.no_pca {
                let output = OutputDir::resolve(&args.output, &engine.ctx.runtime_env())?;
                let features = output.child_url(job::FEATURES_DIR);
                let pca = pca::run(&engine.ctx, &features, &output, args.pca.pca_k as usize, args.pca.csv).await?;
                if !cli.quiet {
                    pca::print_summary(&pca);
                }
                summary.pca = Some(pca);
                output.put(job::SUMMARY_FILE, to_json(&summary)?).await?;
            }
        }
        Command::Sql(args) => {
            let engine = Engine::start(&args.engine, &args.model).await?;
            engine.register_images(&args.input.input, args.input.scan_options())?;
            sql::run(&engine, &args.query, args.output.as_deref()).await?;
        }
        Command::Bench(args) => bench::run(&args).await?,
        Command::Upload(args) => upload::run(&args, cli.quiet).await?,
        Command::Pca(args) => {
            let ctx = SessionContext::new_with_config_rt(
                SessionConfig::new(),
                ObjectStores::new(args.s3.options()).runtime_env()?,
            );
            let output = OutputDir::parent_of(&args.features, &ctx.runtime_env())?;
            let pca = pca::run(&ctx, &args.features, &output, args.pca.pca_k as usize, args.pca.csv).await?;
            if !cli.quiet {
                pca::print_summary(&pca);
            }
            // The run's summary gains (or replaces) its `pca` part.
            let mut summary = match output.get(job::SUMMARY_FILE).await? {
                Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({})),
                None => serde_json::json!({}),
            };
            summary["pca"] = serde_json::to_value(&pca)?;
            output.put(job::SUMMARY_FILE, to_json(&summary)?).await?;
        }
    }
    Ok(())
}
