//! The engine a job runs on: Ballista standalone (scheduler and executor in this process).

use std::sync::Arc;

use anyhow::{Context, Result};
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::config::BALLISTA_STANDALONE_PARALLELISM;
use datafusion::prelude::{SessionConfig, SessionContext};
use fruits_udfs::{Featurizer, IMAGES_TABLE, ImagesTable, ModelConfig, Parallelism, ScanOptions};

/// A session on a running engine, with `images` and the featurize functions registered.
pub struct Engine {
    pub ctx: SessionContext,
    pub featurizer: Arc<Featurizer>,
    pub slots: usize,
}

impl Engine {
    /// Loads the model and starts an in-process Ballista scheduler and executor with `slots`
    /// task slots; the model gets one inference session per slot.
    pub async fn standalone(model: ModelConfig, slots: usize) -> Result<Self> {
        let featurizer = Arc::new(Featurizer::load(model, Parallelism::for_task_slots(slots))?);
        let config = fruits_udfs::with_codecs(SessionConfig::new_with_ballista())
            .with_target_partitions(slots)
            .set_usize(BALLISTA_STANDALONE_PARALLELISM, slots);
        let state = fruits_udfs::session_state(config, &featurizer);
        let ctx = SessionContext::standalone_with_state(state)
            .await
            .context("cannot start the embedded Ballista scheduler and executor")?;
        fruits_udfs::register(&ctx, &featurizer);
        Ok(Self { ctx, featurizer, slots })
    }

    /// Registers the `images` table over `input`.
    pub fn register_images(&self, input: &str, options: ScanOptions) -> Result<()> {
        check_local_input(input)?;
        let table = ImagesTable::try_new(input, options).with_context(|| format!("invalid input location {input}"))?;
        self.ctx.register_table(IMAGES_TABLE, Arc::new(table))?;
        Ok(())
    }
}

/// A local input that does not exist would list as empty; say so instead.
fn check_local_input(input: &str) -> Result<()> {
    let is_url = input.contains("://");
    if !is_url {
        let path = std::path::Path::new(input);
        anyhow::ensure!(path.is_dir(), "input folder {} does not exist or is not a folder", path.display());
    }
    Ok(())
}
