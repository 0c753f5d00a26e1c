//! The distributed, committed write of features.
//!
//! `COPY` and `write_parquet` in Ballista 55 funnel every row through one task behind a
//! coalesce. Here each task writes the Parquet file of its own partition straight to the output
//! store, so executors write in parallel and no image or feature byte passes through the
//! client. The job's result is one small row per written file; the client turns those rows
//! into the `_SUCCESS` manifest only when the job succeeded.
//!
//! Every attempt of a task writes under its own name (`part-<run>-<attempt>.parquet`), so a
//! task retried after a lost executor never overwrites or appends to another attempt's file,
//! and a run never touches the files of the result committed before it: the manifest lists
//! exactly the attempts whose results the job kept, and readers trust only the manifest. After
//! the commit, files of that naming that the manifest does not list (earlier runs, failed
//! attempts, killed runs) are deleted; nothing else in the folder ever is.

mod exec;
mod manifest;
mod node;
mod versions;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::plan_err;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

pub(crate) use exec::FeaturesSinkExec;
pub use manifest::{CommittedFile, FeaturesDir, MANIFEST_FILE, Manifest, PartFile, RunId, is_worklist, worklist_name};
pub use node::{WriteFeatures, WriteResult};
pub use versions::{FileVersion, HashKey};

/// Rows per Parquet row group (about 5 MB of features): readers can skip and parallelise.
const ROWS_PER_GROUP: usize = 1024;

/// The writer settings of every Parquet file fruits writes (features, `fruits sql` results):
/// zstd, and row groups of [`ROWS_PER_GROUP`] rows.
pub fn parquet_writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        .build()
}

use crate::table::modified_type;
use crate::udf::features_type;

/// Columns of the features Parquet files: one row per listed image, with the version of the
/// file the listing saw (`size`, `modified`, `etag`: what the next run compares); `features`
/// is NULL and `error` says why when the image could not be featurized.
pub fn features_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("size", DataType::UInt64, false),
        Field::new("modified", modified_type(), true),
        Field::new("etag", DataType::Utf8, true),
        Field::new("features", features_type(), true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// Key of the Parquet key-value metadata entry naming the model that made a file's features
/// (its [`crate::Featurizer::fingerprint`]).
pub const MODEL_METADATA_KEY: &str = "fruits.model";

/// What a write task returns: one row per file it wrote. `model` is the fingerprint of the
/// model that made its features (NULL for a file without rows). `moments` is the file's
/// [`crate::FEATURE_MOMENTS`] state when the write was asked for it (NULL otherwise, or when no
/// row of the file has features).
pub(crate) fn write_report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("failed", DataType::UInt64, false),
        Field::new("written_by", DataType::Utf8, false),
        Field::new("first_path", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, true),
        Field::new("moments", DataType::Binary, true),
    ]))
}

/// The physical planner of every fruits session: DataFusion's, plus the features write.
///
/// In a cluster it runs on the scheduler (the client only sends the logical plan), so the
/// scheduler's sessions must be built with it.
#[derive(Debug, Default)]
pub struct FruitsQueryPlanner;

#[async_trait]
impl QueryPlanner for FruitsQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(WriteFeaturesPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

/// Turns a [`WriteFeatures`] node into a [`FeaturesSinkExec`].
#[derive(Debug)]
struct WriteFeaturesPlanner;

#[async_trait]
impl ExtensionPlanner for WriteFeaturesPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(write) = node.as_any().downcast_ref::<WriteFeatures>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return plan_err!("{} takes exactly one input", write.name());
        };
        let sink = FeaturesSinkExec::try_new(Arc::clone(input), write.output(), write.run_id().as_str())?;
        Ok(Some(Arc::new(sink.with_moments(write.moments()))))
    }
}
