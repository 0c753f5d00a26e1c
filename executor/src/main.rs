//! `fruits-executor`: Ballista's executor with the model loaded, running fruits tasks.
//!
//! It takes every flag of Ballista's own executor, plus the model, ONNX Runtime and S3
//! settings. The model is loaded and checked before the executor registers with the scheduler,
//! so a node with a missing or wrong model never receives a task.
//!
//! With a cluster secret (`FRUITS_SECRET_FILE`, see `fruits_process::auth`) it carries the secret
//! on every call and requires it on its Flight server; without one it only listens on loopback
//! addresses, unless `--allow-unauthenticated`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::error::BallistaError;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
use ballista_executor::ArrowFlightServerProvider;
use ballista_executor::config::Config as BallistaConfig;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::health::spawn_health_server;
use ballista_executor::shutdown::Shutdown;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use fruits_process::auth::{self, ListenArgs, RequireSecretLayer, Secret};
use fruits_process::logging::{self, LogSettings};
use fruits_process::{ModelArgs, S3Args};
use fruits_udfs::{
    Backend, Classifier, Featurizer, FruitsLogicalCodec, FruitsPhysicalCodec, ObjectStores, Parallelism,
};

#[derive(Debug, Parser)]
#[command(name = "fruits-executor", version, about = "Ballista executor for fruits jobs: featurizes images")]
struct Cli {
    #[command(flatten)]
    ballista: BallistaConfig,

    #[command(flatten)]
    listen: ListenArgs,

    #[command(flatten)]
    model: ModelArgs,

    /// Threads of each inference session; there is one session per task slot (default 1, so
    /// inference uses as many cores as the executor has task slots, `--vcores`).
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
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let explicit_policy =
        matches.value_source("task_scheduling_policy").is_some_and(|s| s != ValueSource::DefaultValue);
    let bind_host = cli.ballista.bind_host.clone();
    let health_port = cli.ballista.bind_health_port;
    let secret = Secret::from_env()?;
    if secret.is_some() {
        cli.ballista.task_scheduling_policy =
            auth::authenticated_policy(cli.ballista.task_scheduling_policy, explicit_policy)?;
    }
    let mut config: ExecutorProcessConfig = cli.ballista.try_into().context("invalid executor configuration")?;
    logging::init(&LogSettings {
        filter: &config.special_mod_log_level,
        dir: config.log_dir.as_deref(),
        file_prefix: config.log_file_name_prefix(),
        rotation: config.log_rotation_policy,
        thread_info: config.print_thread_info,
    });
    cli.listen.check(&bind_host, secret.as_ref())?;

    let Some(model) = cli.model.config() else {
        bail!("no model: pass --model PATH.onnx or set FRUITS_MODEL (the executor featurizes images with it)");
    };
    // Ballista reads `--vcores 0` as "every core"; resolved here too, so that each task slot
    // gets its own session.
    if config.vcores == 0 {
        config.vcores = fruits_udfs::available_cores().get();
    }
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
            let classifier = Classifier::open(dir, &*stores.runtime_env()?, &featurizer)
                .await
                .context("cannot start the executor")?;
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
    if let Some(secret) = &secret {
        authenticate(&mut config, secret);
    }
    // A scheduler that refuses this executor (no secret, or another one) says so now: stop with
    // its reason rather than retry it forever.
    let scheduler = format!("http://{}:{}", config.scheduler_host, config.scheduler_port);
    let wait = Duration::from_secs(config.scheduler_connect_timeout_seconds.into());
    auth::check_scheduler(&scheduler, secret.as_ref(), "executor", wait).await?;

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

/// Makes every call of the executor carry the secret (to the scheduler, and to other executors
/// for shuffle data through the tasks' session config) and its Flight server, which serves
/// shuffle partitions and results, require it.
fn authenticate(config: &mut ExecutorProcessConfig, secret: &Secret) {
    let endpoint = secret.endpoint_override();
    config.override_create_grpc_client_endpoint = Some(Arc::clone(&endpoint));
    config.override_config_producer = Some(Arc::new(move || {
        SessionConfig::new_with_ballista().with_ballista_override_create_grpc_client_endpoint(Arc::clone(&endpoint))
    }));
    let (max_decoding, max_encoding) =
        (config.grpc_max_decoding_message_size as usize, config.grpc_max_encoding_message_size as usize);
    let layer = RequireSecretLayer::new(secret.clone(), &[]);
    let flight: Arc<ArrowFlightServerProvider> =
        Arc::new(move |work_dir: String, address: SocketAddr, mut shutdown: Shutdown, grpc: GrpcServerConfig| {
            let layer = layer.clone();
            tokio::spawn(async move {
                log::info!("Flight server listening on {address}, requiring the cluster secret");
                let service = FlightServiceServer::new(BallistaFlightService::new(work_dir))
                    .max_decoding_message_size(max_decoding)
                    .max_encoding_message_size(max_encoding);
                create_grpc_server(&grpc)
                    .layer(layer)
                    .add_service(service)
                    .serve_with_shutdown(address, shutdown.recv())
                    .await
                    .map_err(BallistaError::TonicError)
            })
        });
    config.override_arrow_flight_service = Some(flight);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn ballista_flags_and_ours_do_not_clash() {
        super::Cli::command().debug_assert();
    }
}
