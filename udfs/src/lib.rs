//! Everything a fruits process needs to run `SELECT path, label, featurize(content) FROM images`
//! on DataFusion Ballista: the `images` table, the `featurize` UDFs, the model runtime behind
//! them, the committed features write, object stores and the plan codecs. The client, the
//! scheduler and the executors all register the same pieces through this crate, so a plan
//! written on one is understood by the others.
//!
//! The modules are private; what other crates use is re-exported here, once, so every public
//! item has one path.

mod classifier;
mod codec;
mod lease;
mod location;
mod model;
mod moments;
mod predict;
mod preprocess;
mod projection;
mod sink;
mod store;
mod table;
mod udf;
mod uploads;

use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use classifier::{Classifier, ClassifierLoadError, input_spec, preprocessing};
pub use codec::{FruitsLogicalCodec, FruitsPhysicalCodec};
pub use lease::{LEASE_FILE, LEASE_TTL, Lease, LeaseError, LeaseHolder};
pub use location::{Location, PutNew, StoreError, UPLOAD_PART_SIZE, is_url};
pub use model::{
    Featurizer, ModelConfig, ModelError, ORT_LIBRARY_ENV, ORT_VERSION, Parallelism, available_cores, inference_session,
};
pub use moments::{FEATURE_MOMENTS, MERGE_FEATURE_MOMENTS, decode_moments, encode_moments};
pub use predict::{PREDICT, prediction_type};
pub use preprocess::{DecodeError, DecodeLimits, InputSpec, Layout, RgbImage, Scaling, decode_rgb, resize_bicubic};
pub use projection::{PCA_PROJECT, coordinates_type};
pub use sink::{
    CommittedFile, FeaturesDir, FileVersion, HashKey, MANIFEST_FILE, MODEL_METADATA_KEY, Manifest, PartFile, RunId,
    WriteFeatures, WriteResult, features_schema, is_worklist, parquet_writer_properties, worklist_name,
};
pub use store::{ObjectStores, S3Options};
pub use table::{
    Entry, IMAGES_TABLE, ImageFile, ImagesTable, Listing, READ_ERROR, ScanOptions, Skipped, WorklistCounts,
    WorklistWriter, list_entries, list_images,
};
pub use udf::{Backend, FEATURIZE, FEATURIZE_OR_ERROR, MODEL_FINGERPRINT, NO_CONTENT};

/// `config` with the fruits plan codecs installed for Ballista, so that the `images` table and
/// its scan can be sent to the scheduler and executors.
pub fn with_codecs(config: SessionConfig) -> SessionConfig {
    config
        .with_ballista_logical_extension_codec(Arc::new(FruitsLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(FruitsPhysicalCodec::default()))
}

/// Registers `featurize`, `featurize_or_error`, `model_fingerprint` and `predict`, on
/// `backend`, and `pca_project` and the feature moments aggregates on `ctx`.
///
/// Ballista's `standalone_with_state`/`remote_with_state` rebuild the session state and drop
/// functions registered before, so call this on the context they return as well.
pub fn register(ctx: &SessionContext, backend: &Backend) {
    for udf in udf::Featurize::udfs(backend) {
        ctx.register_udf(udf);
    }
    ctx.register_udf(udf::ModelFingerprint::udf(backend));
    ctx.register_udf(predict::Predict::udf(backend));
    ctx.register_udf(projection::PcaProject::udf());
    for udaf in moments::FeatureMoments::udafs() {
        ctx.register_udaf(udaf);
    }
}

/// The session state of every fruits process: `config` with our codecs, object stores from
/// `runtime`, the planner that knows the features write, and the featurize functions on
/// `backend` and the moments aggregates.
pub fn session_state(config: SessionConfig, runtime: Arc<RuntimeEnv>, backend: &Backend) -> SessionState {
    let state = SessionStateBuilder::new()
        .with_config(with_codecs(config))
        .with_runtime_env(runtime)
        .with_default_features()
        .with_query_planner(Arc::new(sink::FruitsQueryPlanner))
        .build();
    let ctx = SessionContext::new_with_state(state);
    register(&ctx, backend);
    ctx.state()
}
