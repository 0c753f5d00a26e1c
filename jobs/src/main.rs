//! `fruits`: the client. Runs the featurize job and ad-hoc SQL on DataFusion Ballista.

mod bench;
mod cli;
mod download;
mod engine;
mod job;
mod output;
mod pca;
mod progress;
mod sql;
mod upload;

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;

use cli::{Cli, Command};
use datafusion::prelude::{SessionConfig, SessionContext};
use engine::Engine;
use fruits_udfs::{Backend, ObjectStores};
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

async fn dispatch(cli: Cli) -> Result<()> {
    // Text for people on stdout unless asked for silence or for JSON.
    let text = !cli.quiet && !cli.json;
    if cli.json && !matches!(cli.command, Command::Run(_) | Command::Pca(_)) {
        bail!("--json is supported by `fruits run` and `fruits pca`");
    }
    match cli.command {
        Command::Run(args) => {
            let engine = Engine::start(&args.engine, &args.model).await?;
            engine.register_images(&args.input.input, args.input.scan_options())?;
            let pca_options = args.pca.options();
            let pca_mode = (!args.no_pca).then_some(pca_options.mode);
            let job::Outcome { mut summary, moments } =
                job::run(&engine, &args.input.input, &args.output, pca_mode, cli.quiet).await?;
            if text {
                job::print_summary(&summary);
            }
            if !args.no_pca {
                let output = OutputDir::resolve(&args.output, &engine.ctx.runtime_env())?;
                let features = output.child_url(job::FEATURES_DIR);
                let pca = pca::run(&engine.ctx, &features, &output, pca_options, moments).await?;
                if text {
                    pca::print_summary(&pca);
                }
                summary.pca = Some(pca);
                output.put(job::SUMMARY_FILE, to_json(&summary)?).await?;
            }
            if cli.json {
                println!("{}", serde_json::to_string(&summary)?);
            }
        }
        Command::Sql(args) => {
            let engine = Engine::start(&args.engine, &args.model).await?;
            engine.register_images(&args.input.input, args.input.scan_options())?;
            sql::run(&engine, &args.query, args.output.as_deref()).await?;
        }
        Command::Bench(args) => bench::run(&args).await?,
        Command::Upload(args) => upload::run(&args, cli.quiet).await?,
        Command::Download(args) => download::run(&args, cli.quiet).await?,
        Command::Pca(args) => {
            let ctx = SessionContext::new_with_config_rt(
                SessionConfig::new(),
                ObjectStores::new(args.s3.options()).runtime_env()?,
            );
            fruits_udfs::register(&ctx, &Backend::PlanningOnly);
            let output = OutputDir::parent_of(&args.features, &ctx.runtime_env())?;
            let pca = pca::run(&ctx, &args.features, &output, args.pca.options(), None).await?;
            if text {
                pca::print_summary(&pca);
            }
            // The run's summary gains (or replaces) its `pca` part.
            let mut summary = match output.get(job::SUMMARY_FILE).await? {
                Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({})),
                None => serde_json::json!({}),
            };
            summary["pca"] = serde_json::to_value(&pca)?;
            output.put(job::SUMMARY_FILE, to_json(&summary)?).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&summary)?);
            }
        }
    }
    Ok(())
}
