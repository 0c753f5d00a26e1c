//! The logical node of the features write.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, DFSchemaRef, exec_datafusion_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::functions::expr_fn::named_struct;
use datafusion::functions_aggregate::expr_fn::array_agg;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNodeCore, lit};
use datafusion::prelude::col;
use fruits_pca::Moments;

use super::manifest::RunId;
use super::{Manifest, write_report_schema};
use crate::moments::{FeatureMoments, decode_moments};
use crate::table::modified_type;
use crate::udf::features_or_error_type;

/// What a features write returned, read back by the process that commits it.
#[derive(Debug)]
pub struct WriteResult {
    /// The files written, to be committed.
    pub manifest: Manifest,
    /// The moments of every written feature vector, merged, when the write was asked for them.
    pub moments: Option<Moments>,
}

/// Writes `input`, whose columns are `path`, `label`, `size`, `modified`, `etag` (as the
/// `images` table has them), `result` (what `featurize_or_error` returns) and `model` (what
/// `model_fingerprint()` returns), as Parquet files under `output`, one per partition; returns
/// one report row per file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteFeatures {
    input: LogicalPlan,
    output: String,
    run_id: RunId,
    /// Whether each report also carries the feature moments of the file's rows.
    moments: bool,
    schema: DFSchemaRef,
}

impl WriteFeatures {
    /// `output` is the URL of the features folder (`s3://bucket/out/features/`,
    /// `file:///.../features/`); `run_id` names this run's files.
    pub fn try_new(input: LogicalPlan, output: impl Into<String>, run_id: &RunId) -> Result<Self> {
        let fields = input.schema().fields();
        let found = |name: &str| fields.iter().find(|f| f.name() == name).map(|f| f.data_type().clone());
        let expected = [
            ("path", DataType::Utf8),
            ("label", DataType::Utf8),
            ("size", DataType::UInt64),
            ("modified", modified_type()),
            ("etag", DataType::Utf8),
            ("result", features_or_error_type()),
            ("model", DataType::Utf8),
        ];
        for (name, data_type) in expected {
            if found(name).as_ref() != Some(&data_type) {
                return plan_err!(
                    "the features write needs a column {name} of type {data_type}; the query returns {:?}",
                    fields.iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect::<Vec<_>>()
                );
            }
        }
        let schema = Arc::new(DFSchema::try_from(write_report_schema())?);
        Ok(Self { input, output: output.into(), run_id: run_id.clone(), moments: false, schema })
    }

    /// Also return, in each report's `moments` column, the [`crate::FEATURE_MOMENTS`] state of
    /// the file's features: a distributed PCA then needs no second pass over the features.
    pub fn with_moments(mut self, moments: bool) -> Self {
        self.moments = moments;
        self
    }

    /// The plan to execute: the write itself, returning one report row per file; with
    /// moments, the write under one aggregate that gathers every report and merges the tasks'
    /// moments, so that a single row (`reports`, `moments`) comes back. Ballista runs the partial
    /// aggregate in the write tasks and the merge in a final stage of the same job.
    pub fn to_plan(&self) -> Result<LogicalPlan> {
        let write = LogicalPlan::Extension(self.clone().into_extension());
        if !self.moments {
            return Ok(write);
        }
        let report: Vec<Expr> = write_report_schema()
            .fields()
            .iter()
            .filter(|f| f.name() != "moments")
            .flat_map(|f| [lit(f.name().as_str()), col(f.name())])
            .collect();
        let merge = FeatureMoments::merge().call(vec![col("moments")]).alias("moments");
        LogicalPlanBuilder::from(write)
            .aggregate(Vec::<Expr>::new(), vec![array_agg(named_struct(report)).alias("reports"), merge])?
            .build()
    }

    /// Reads what the plan of [`Self::to_plan`] returned.
    pub fn read_result(&self, batches: &[RecordBatch]) -> Result<WriteResult> {
        if !self.moments {
            return Ok(WriteResult { manifest: Manifest::from_reports(self.run_id.as_str(), batches)?, moments: None });
        }
        let row = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| exec_datafusion_err!("the write returned no row"))?;
        let column =
            |name: &str| row.column_by_name(name).ok_or_else(|| exec_datafusion_err!("the write returned no {name}"));
        let reports =
            column("reports")?.as_list_opt::<i32>().ok_or_else(|| exec_datafusion_err!("reports is not a list"))?;
        let reports = reports.value(0);
        let reports = reports.as_struct_opt().ok_or_else(|| exec_datafusion_err!("reports are not structs"))?;
        let moments =
            column("moments")?.as_binary_opt::<i32>().ok_or_else(|| exec_datafusion_err!("moments is not binary"))?;
        let moments = moments
            .is_valid(0)
            .then(|| decode_moments(moments.value(0)))
            .transpose()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let manifest = Manifest::from_reports(self.run_id.as_str(), &[RecordBatch::from(reports.clone())])?;
        Ok(WriteResult { manifest, moments })
    }

    pub(crate) fn into_extension(self) -> Extension {
        Extension { node: Arc::new(self) }
    }

    pub fn output(&self) -> &str {
        &self.output
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    pub fn moments(&self) -> bool {
        self.moments
    }
}

impl PartialOrd for WriteFeatures {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (&self.output, &self.run_id).cmp(&(&other.output, &other.run_id)) {
            Ordering::Equal if self != other => None,
            ordering => Some(ordering),
        }
    }
}

impl UserDefinedLogicalNodeCore for WriteFeatures {
    fn name(&self) -> &str {
        "WriteFeatures"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WriteFeatures: output={} run={} moments={}", self.output, self.run_id, self.moments)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let (Some(input), true) = (inputs.pop(), inputs.is_empty()) else {
            return plan_err!("WriteFeatures takes exactly one input");
        };
        Ok(Self::try_new(input, self.output.clone(), &self.run_id)?.with_moments(self.moments))
    }
}
