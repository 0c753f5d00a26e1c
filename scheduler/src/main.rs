//! `fruits-scheduler`: Ballista's scheduler, planning fruits queries.
//!
//! It takes every flag of Ballista's own scheduler, plus the S3 settings it needs to list the
//! images when it plans a scan. It never loads the model: `featurize` runs on the executors.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{Config as BallistaConfig, SchedulerConfig};
use ballista_scheduler::scheduler_process::start_server;
use clap::Parser;
use datafusion::prelude::SessionConfig;
use fruits_process::S3Args;
use fruits_process::logging::{self, LogSettings};
use fruits_udfs::{Backend, FruitsLogicalCodec, FruitsPhysicalCodec, ObjectStores};

#[derive(Debug, Parser)]
#[command(name = "fruits-scheduler", version, about = "Ballista scheduler for fruits jobs")]
struct Cli {
    #[command(flatten)]
    ballista: BallistaConfig,

    #[command(flatten)]
    s3: S3Args,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Ballista's own scheduler binary runs on 32 MB stacks: planning recurses deeply.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> Result<()> {
    let opt = cli.ballista;
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

    let stores = ObjectStores::new(cli.s3.options());
    let config: SchedulerConfig = opt.try_into().context("invalid scheduler configuration")?;
    let mut config = config.with_override_session_builder(Arc::new(move |session: SessionConfig| {
        Ok(fruits_udfs::session_state(session, stores.runtime_env()?, &Backend::PlanningOnly))
    }));
    config.override_logical_codec = Some(Arc::new(FruitsLogicalCodec::default()));
    config.override_physical_codec = Some(Arc::new(FruitsPhysicalCodec::default()));

    let cluster = BallistaCluster::new_from_config(&config).await.context("cannot set up the scheduler's state")?;
    log::info!("fruits-scheduler listening on {addr}");
    start_server(cluster, addr, Arc::new(config)).await.with_context(|| format!("scheduler on {addr} stopped"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn ballista_flags_and_ours_do_not_clash() {
        super::Cli::command().debug_assert();
    }
}
