//! Everything a fruits process needs to run `SELECT path, label, featurize(content) FROM images`
//! on DataFusion Ballista: the `images` table, the `featurize` UDFs, the model runtime behind
//! them and the plan codecs. The client, the scheduler and the executors all register the same
//! pieces through this crate, so a plan written on one is understood by the others.

pub mod codec;
pub mod model;
pub mod preprocess;
pub mod table;
pub mod udf;

use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use datafusion::execution::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use codec::{FruitsLogicalCodec, FruitsPhysicalCodec};
pub use model::{Featurizer, ModelConfig, ModelError, Parallelism};
pub use table::{IMAGES_TABLE, ImagesTable, ScanOptions};
pub use udf::{FEATURIZE, FEATURIZE_OR_ERROR, Featurize};

/// `config` with the fruits plan codecs installed for Ballista, so that the `images` table and
/// its scan can be sent to the scheduler and executors.
pub fn with_codecs(config: SessionConfig) -> SessionConfig {
    config
        .with_ballista_logical_extension_codec(Arc::new(FruitsLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(FruitsPhysicalCodec::default()))
}

/// Registers `featurize` and `featurize_or_error`, backed by `featurizer`, on `ctx`.
///
/// Ballista's `standalone_with_state`/`remote_with_state` rebuild the session state and drop
/// functions registered before, so call this on the context they return as well.
pub fn register(ctx: &SessionContext, featurizer: &Arc<Featurizer>) {
    for udf in Featurize::udfs(Arc::clone(featurizer)) {
        ctx.register_udf(udf);
    }
}

/// A session state with the fruits functions registered, for the processes that execute plans.
pub fn session_state(config: SessionConfig, featurizer: &Arc<Featurizer>) -> SessionState {
    let ctx = SessionContext::new_with_config(config);
    register(&ctx, featurizer);
    ctx.state()
}
