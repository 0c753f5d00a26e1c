//! `fruits`: the client. Runs the featurize job and ad-hoc SQL on DataFusion Ballista.

mod bench;
mod cli;
mod engine;
mod job;
mod output;
mod progress;
mod sql;
mod upload;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Command};
use engine::Engine;

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
            let summary = job::run(&engine, &args.input.input, &args.output, cli.quiet).await?;
            if !cli.quiet {
                job::print_summary(&summary);
            }
        }
        Command::Sql(args) => {
            let engine = Engine::start(&args.engine, &args.model).await?;
            engine.register_images(&args.input.input, args.input.scan_options())?;
            sql::run(&engine, &args.query, args.output.as_deref()).await?;
        }
        Command::Bench(args) => bench::run(&args).await?,
        Command::Upload(args) => upload::run(&args, cli.quiet).await?,
    }
    Ok(())
}
