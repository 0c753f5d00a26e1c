//! `fruits-scheduler`: Ballista's scheduler, planning fruits queries.
//!
//! It takes every flag of Ballista's own scheduler, plus the S3 settings it needs to list the
//! images when it plans a scan. It never loads the model: `featurize` runs on the executors.
//!
//! With a cluster secret (`FRUITS_SECRET_FILE`, see `fruits_process::auth`) every gRPC and REST
//! call but the health probes must carry it; without one it only listens on loopback addresses,
//! unless `--allow-unauthenticated`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_flight::flight_service_server::FlightServiceServer;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use ballista_core::extension::BallistaConfigGrpcEndpoint;
use ballista_core::flight_proxy_service::BallistaFlightProxyService;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_scheduler::api::get_routes;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{Config as BallistaConfig, SchedulerConfig};
use ballista_scheduler::scheduler_process::{create_scheduler, start_server};
use ballista_scheduler::scheduler_server::SchedulerServer;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use fruits_process::S3Args;
use fruits_process::auth::{self, ListenArgs, RequireSecretLayer, Secret};
use fruits_process::logging::{self, LogSettings};
use fruits_udfs::{Backend, FruitsLogicalCodec, FruitsPhysicalCodec, ObjectStores};

#[derive(Debug, Parser)]
#[command(name = "fruits-scheduler", version, about = "Ballista scheduler for fruits jobs")]
struct Cli {
    #[command(flatten)]
    ballista: BallistaConfig,

    #[command(flatten)]
    listen: ListenArgs,

    #[command(flatten)]
    s3: S3Args,
}

type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

fn main() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Whether the policy was asked for, rather than Ballista's default (see `serve`).
    let explicit_policy = matches.value_source("scheduler_policy").is_some_and(|s| s != ValueSource::DefaultValue);
    // Ballista's own scheduler binary runs on 32 MB stacks: planning recurses deeply.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cli, explicit_policy))
}

async fn serve(cli: Cli, explicit_policy: bool) -> Result<()> {
    let mut opt = cli.ballista;
    logging::init(&LogSettings {
        filter: &opt.log_level_setting,
        dir: opt.log_dir.as_deref(),
        file_prefix: format!("scheduler_{}_{}_{}", opt.namespace, opt.external_host, opt.bind_port),
        rotation: opt.log_rotation_policy,
        thread_info: opt.print_thread_info,
    });
    let addr: SocketAddr = format!("{}:{}", opt.bind_host, opt.bind_port)
        .parse()
        .with_context(|| format!("invalid --bind-host/--bind-port {}:{}", opt.bind_host, opt.bind_port))?;
    let secret = Secret::from_env()?;
    cli.listen.check(&opt.bind_host, secret.as_ref())?;
    if secret.is_some() {
        opt.scheduler_policy = auth::authenticated_policy(opt.scheduler_policy, explicit_policy)?;
    }

    let stores = ObjectStores::new(cli.s3.options());
    let config: SchedulerConfig = opt.try_into().context("invalid scheduler configuration")?;
    let mut config = config.with_override_session_builder(Arc::new(move |session: SessionConfig| {
        Ok(fruits_udfs::session_state(session, stores.runtime_env()?, &Backend::PlanningOnly))
    }));
    config.override_logical_codec = Some(Arc::new(FruitsLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(FruitsPhysicalCodec::default()));
    // The scheduler's own calls to executors (its embedded Flight proxy's) carry the secret too.
    if let Some(secret) = &secret {
        config.override_create_grpc_client_endpoint = Some(secret.endpoint_override());
    }

    let cluster = BallistaCluster::new_from_config(&config).await.context("cannot set up the scheduler's state")?;
    let config = Arc::new(config);
    let served = match secret {
        None => {
            log::info!("fruits-scheduler listening on {addr}, without authentication");
            start_server(cluster, addr, config).await
        }
        Some(secret) => {
            log::info!(
                "fruits-scheduler listening on {addr}; every call but /healthz and /readyz needs the cluster secret"
            );
            serve_authenticated(cluster, addr, config, secret).await
        }
    };
    served.with_context(|| format!("scheduler on {addr} stopped"))
}

/// Ballista's `start_server` with the cluster secret required on every route but the health
/// probes. Ballista's `start_grpc_service_with_listener` composes its router and serves it in one
/// call, leaving no place for a check, so the same public pieces are composed here: the
/// scheduler's gRPC service, the embedded Flight proxy when enabled, and the REST API.
async fn serve_authenticated(
    cluster: BallistaCluster,
    addr: SocketAddr,
    config: Arc<SchedulerConfig>,
    secret: Secret,
) -> ballista_core::error::Result<()> {
    config.validate()?;
    let scheduler: Scheduler = create_scheduler(cluster, Arc::clone(&config)).await?;
    let (max_decoding, max_encoding) =
        (config.grpc_server_max_decoding_message_size as usize, config.grpc_server_max_encoding_message_size as usize);

    let mut grpc = tonic::service::RoutesBuilder::default();
    grpc.add_service(
        SchedulerGrpcServer::new(scheduler.clone())
            .max_decoding_message_size(max_decoding)
            .max_encoding_message_size(max_encoding),
    );
    if config.enable_embedded_flight_proxy {
        let endpoint = config.override_create_grpc_client_endpoint.clone().map(BallistaConfigGrpcEndpoint::new);
        let proxy = BallistaFlightProxyService::new(max_decoding, max_encoding, config.use_tls, endpoint.map(Arc::new));
        grpc.add_service(
            FlightServiceServer::new(proxy)
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding),
        );
    }
    let scheduler = Arc::new(scheduler);
    let protected = get_routes(Arc::clone(&scheduler))
        .merge(grpc.routes().into_axum_router())
        .layer(RequireSecretLayer::new(secret, &[]));
    // Probes stay open: they tell only whether the scheduler is up and has executors.
    let health =
        Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz)).with_state(scheduler);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = protected.merge(health).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}

/// Ready once enough executors have registered (`--min-ready-executors`), as Ballista's probe.
async fn readyz(State(scheduler): State<Arc<Scheduler>>) -> (StatusCode, &'static str) {
    if scheduler.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn ballista_flags_and_ours_do_not_clash() {
        super::Cli::command().debug_assert();
    }
}
