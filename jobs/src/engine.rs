//! The engine a job runs on: Ballista standalone (scheduler and executor in this process) or a
//! remote Ballista cluster of `fruits-scheduler` and `fruits-executor`s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::config::BALLISTA_STANDALONE_PARALLELISM;
use datafusion::prelude::{SessionConfig, SessionContext};
use fruits_process::ModelArgs;
use fruits_process::auth::{self, Secret};
use fruits_udfs::{
    Backend, Classifier, Featurizer, IMAGES_TABLE, ImagesTable, ObjectStores, Parallelism, ScanOptions, is_url,
};
use url::Url;

use crate::cli::EngineArgs;
use crate::scheduler_api::SchedulerApi;

/// Ballista's default scheduler port.
const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// Where the work happens.
pub enum Mode {
    /// In this process, with the model loaded here.
    Embedded { featurizer: Arc<Featurizer>, slots: usize },
    /// On the executors of the cluster behind `scheduler` (as given), whose REST API `api`
    /// tells how the job goes; this process only plans and commits.
    Cluster { scheduler: String, api: SchedulerApi },
}

/// A session on a running engine, with the featurize functions registered.
pub struct Engine {
    pub ctx: SessionContext,
    pub mode: Mode,
    /// The object stores of `ctx`, which also clean up unfinished uploads.
    pub stores: Arc<ObjectStores>,
}

impl Engine {
    /// The cluster if `--scheduler` is given, else the embedded engine (which needs the model,
    /// and loads the classifier of `--classifier` if given).
    pub async fn start(engine: &EngineArgs, model: &ModelArgs) -> Result<Self> {
        let stores = ObjectStores::new(engine.s3.options());
        match &engine.scheduler {
            Some(_) if engine.classifier.is_some() => bail!(
                "--classifier is for the embedded engine: on a cluster, start each fruits-executor with --classifier"
            ),
            Some(scheduler) => Self::cluster(scheduler, stores).await,
            None => {
                let model = model.config().context(
                    "no model: pass --model PATH.onnx or set FRUITS_MODEL (the embedded engine featurizes in this \
                     process; use --scheduler to run on a cluster)",
                )?;
                let slots = engine.slots();
                let featurizer = Arc::new(Featurizer::load(model, Parallelism::for_task_slots(slots))?);
                let classifier = match &engine.classifier {
                    Some(dir) => Some(Arc::new(Classifier::open(dir, &*stores.runtime_env()?, &featurizer).await?)),
                    None => None,
                };
                Self::standalone(featurizer, classifier, slots, stores).await
            }
        }
    }

    /// Starts an in-process Ballista scheduler and executor with `slots` task slots.
    pub async fn standalone(
        featurizer: Arc<Featurizer>,
        classifier: Option<Arc<Classifier>>,
        slots: usize,
        stores: Arc<ObjectStores>,
    ) -> Result<Self> {
        let config = SessionConfig::new_with_ballista()
            .with_target_partitions(slots)
            .set_usize(BALLISTA_STANDALONE_PARALLELISM, slots);
        let backend = Backend::Model { featurizer: Arc::clone(&featurizer), classifier };
        let state = fruits_udfs::session_state(config, stores.runtime_env()?, &backend);
        let ctx = SessionContext::standalone_with_state(state)
            .await
            .context("cannot start the embedded Ballista scheduler and executor")?;
        fruits_udfs::register(&ctx, &backend);
        Ok(Self { ctx, mode: Mode::Embedded { featurizer, slots }, stores })
    }

    /// Connects to the scheduler at `scheduler` (`df://HOST:PORT`).
    pub async fn cluster(scheduler: &str, stores: Arc<ObjectStores>) -> Result<Self> {
        let address = scheduler_address(scheduler)?;
        let reachable = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&address)).await;
        match reachable {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("cannot reach the fruits scheduler at {scheduler} ({address}): {e}"),
            Err(_) => bail!("cannot reach the fruits scheduler at {scheduler} ({address}): no answer within 10 s"),
        }
        // A scheduler that wants a secret this client lacks (or has wrong) says so now, before a
        // job is planned or submitted.
        let secret = Secret::from_env()?;
        auth::check_scheduler(&format!("http://{address}"), secret.as_ref(), "client", Duration::ZERO).await?;
        let api = SchedulerApi::new(&address, secret.as_ref())?;
        let mut config = SessionConfig::new_with_ballista();
        // The scan cuts its files into a multiple of the partitions asked for, so that the last
        // wave of tasks keeps every slot busy: ask for the cluster's slots, not this machine's
        // cores.
        match api.task_slots().await {
            Ok(0) => log::warn!("no executor has registered with {scheduler} yet: jobs wait for one"),
            Ok(slots) => config = config.with_target_partitions(slots),
            Err(e) => log::warn!(
                "cannot ask {scheduler} for its executors' task slots ({e:#}); partitions follow this machine's cores"
            ),
        }
        if let Some(secret) = &secret {
            // Every call Ballista makes for this session: to the scheduler, and to the executors
            // for results.
            config = config.with_ballista_override_create_grpc_client_endpoint(secret.endpoint_override());
        }
        let state = fruits_udfs::session_state(config, stores.runtime_env()?, &Backend::PlanningOnly);
        let ctx = SessionContext::remote_with_state(&format!("df://{address}"), state)
            .await
            .with_context(|| format!("cannot connect to the fruits scheduler at {scheduler}"))?;
        fruits_udfs::register(&ctx, &Backend::PlanningOnly);
        Ok(Self { ctx, mode: Mode::Cluster { scheduler: scheduler.to_owned(), api }, stores })
    }

    /// Registers the `images` table over `input`, in place of any registered before; with a
    /// `worklist` (a URL, see [`ImagesTable::with_worklist`]) it scans the files listed there
    /// instead of listing `input` when planned.
    pub fn register_images(&self, input: &str, options: ScanOptions, worklist: Option<&str>) -> Result<()> {
        if matches!(self.mode, Mode::Embedded { .. }) {
            check_input(input)?;
        }
        let table = ImagesTable::try_new(input, options).with_context(|| format!("invalid input location {input}"))?;
        let table = match worklist {
            Some(worklist) => table.with_worklist(worklist),
            None => table,
        };
        self.ctx.deregister_table(IMAGES_TABLE)?;
        self.ctx.register_table(IMAGES_TABLE, Arc::new(table))?;
        Ok(())
    }

    /// The loaded model, on the embedded engine.
    pub fn featurizer(&self) -> Option<&Arc<Featurizer>> {
        match &self.mode {
            Mode::Embedded { featurizer, .. } => Some(featurizer),
            Mode::Cluster { .. } => None,
        }
    }

    /// One line for people: which engine ran the job.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Embedded { slots, .. } => format!("ballista standalone, {slots} task slots"),
            Mode::Cluster { scheduler, .. } => format!("ballista cluster at {scheduler}"),
        }
    }
}

/// `HOST:PORT` of a `df://HOST[:PORT]` scheduler URL.
fn scheduler_address(scheduler: &str) -> Result<String> {
    let url =
        Url::parse(scheduler).with_context(|| format!("invalid scheduler URL {scheduler}: expected df://HOST:PORT"))?;
    let Some(host) = url.host_str().filter(|_| url.scheme() == "df") else {
        bail!("invalid scheduler URL {scheduler}: expected df://HOST:PORT");
    };
    Ok(format!("{host}:{}", url.port().unwrap_or(DEFAULT_SCHEDULER_PORT)))
}

/// A local input that does not exist would list as empty; say so instead.
pub fn check_input(input: &str) -> Result<()> {
    if !is_url(input) {
        let path = std::path::Path::new(input);
        anyhow::ensure!(path.is_dir(), "input folder {} does not exist or is not a folder", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_urls() {
        assert_eq!(scheduler_address("df://10.0.0.5:50050").unwrap(), "10.0.0.5:50050");
        assert_eq!(scheduler_address("df://master").unwrap(), "master:50050");
        for bad in ["10.0.0.5:50050", "http://master:50050", "df://"] {
            assert!(scheduler_address(bad).unwrap_err().to_string().contains("expected df://HOST:PORT"), "{bad}");
        }
    }
}
