//! `fruits-executor`: Ballista's executor with the model loaded, running fruits tasks.
//!
//! It takes every flag of Ballista's own executor, plus the model, ONNX Runtime and S3
//! settings. The model is loaded and checked before the executor registers with the scheduler,
//! so a node with a missing or wrong model never receives a task.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::config::Config as BallistaConfig;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::health::spawn_health_server;
use clap::Parser;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use fruits_process::logging::{self, LogSettings};
use fruits_process::{ModelArgs, S3Args};
use fruits_udfs::{
    Backend, Classifier, Featurizer, FruitsLogicalCodec, FruitsPhysicalCodec, Location, ObjectStores, Parallelism,
};

#[derive(Debug, Parser)]
#[command(name = "fruits-executor", version, about = "Ballista executor for fruits jobs: featurizes images")]
struct Cli {
    #[command(flatten)]
    ballista: BallistaConfig,

    #[command(flatten)]
    model: ModelArgs,

    /// Threads of each inference session (default: the cores divided among the task slots).
    #[arg(long, env = "FRUITS_INFERENCE_THREADS")]
    inference_threads: Option<NonZeroUsize>,

    /// A classifier for the SQL function `predict`: a model directory written by `fruits train`
    /// (local or s3://), trained on this model's features; loaded and checked before the
    /// executor registers. Without it `predict` fails on this executor.
    #[arg(long, env = "FRUITS_CLASSIFIER")]
    classifier: Option<String>,

    #[command(flatten)]
    s3: S3Args,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bind_host = cli.ballista.bind_host.clone();
    let health_port = cli.ballista.bind_health_port;
    let mut config: ExecutorProcessConfig = cli.ballista.try_into().context("invalid executor configuration")?;
    logging::init(&LogSettings {
        filter: &config.special_mod_log_level,
        dir: config.log_dir.as_deref(),
        file_prefix: config.log_file_name_prefix(),
        rotation: config.log_rotation_policy,
        thread_info: config.print_thread_info,
    });

    let Some(model) = cli.model.config() else {
        bail!("no model: pass --model PATH.onnx or set FRUITS_MODEL (the executor featurizes images with it)");
    };
    let mut parallelism = Parallelism::for_task_slots(config.vcores);
    if let Some(threads) = cli.inference_threads {
        parallelism = parallelism.with_threads_per_session(threads);
    }
    let featurizer = Featurizer::load(model, parallelism).context("cannot start the executor")?;
    log::info!(
        "model {} loaded: {} features, {} sessions x {} threads",
        featurizer.config().model_path.display(),
        featurizer.feature_dim(),
        parallelism.sessions(),
        parallelism.threads_per_session()
    );
    let stores = ObjectStores::new(cli.s3.options());
    let classifier = match &cli.classifier {
        Some(dir) => {
            let location = Location::parse(dir, &*stores.runtime_env()?)?;
            let classifier = Classifier::load(&location).await.context("cannot start the executor")?;
            classifier.check_backbone(&featurizer).context("cannot start the executor")?;
            log::info!("classifier {} loaded: {} labels", classifier.url(), classifier.model().labels.len());
            Some(Arc::new(classifier))
        }
        None => None,
    };
    let backend = Backend::Model { featurizer: Arc::new(featurizer), classifier };

    let state = fruits_udfs::session_state(SessionConfig::new(), stores.runtime_env()?, &backend);
    config.override_function_registry = Some(Arc::new(BallistaFunctionRegistry::from(&state)));
    let work_dir = config.work_dir.clone();
    config.override_runtime_producer = Some(Arc::new(move |_: &SessionConfig| {
        let mut runtime = RuntimeEnvBuilder::new().with_object_store_registry(Arc::clone(&stores) as _);
        if let Some(dir) = &work_dir {
            runtime = runtime.with_temp_file_path(dir.clone());
        }
        Ok(Arc::new(runtime.build()?))
    }));
    config.override_logical_codec = Some(Arc::new(FruitsLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(FruitsPhysicalCodec::default()));

    // The health endpoint: `/healthz` while the process lives, `/readyz` once registered with
    // the scheduler and heartbeating.
    let health_addr: SocketAddr = format!("{bind_host}:{health_port}")
        .parse()
        .with_context(|| format!("invalid --bind-host/--bind-health-port {bind_host}:{health_port}"))?;
    let (stop_health, health_stopped) = tokio::sync::oneshot::channel();
    let health = spawn_health_server(health_addr, config.health.clone(), health_stopped);

    let result = start_executor_process(Arc::new(config)).await;
    let _ = stop_health.send(());
    if let Err(e) = health.await {
        log::warn!("health endpoint did not shut down cleanly: {e}");
    }
    result.context("executor stopped")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn ballista_flags_and_ours_do_not_clash() {
        super::Cli::command().debug_assert();
    }
}
