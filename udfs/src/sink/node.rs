//! The logical node of the features write.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, DFSchemaRef, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};

use super::write_report_schema;
use crate::udf::features_or_error_type;

/// Writes `input`, whose columns are `path`, `label` and `result` (what `featurize_or_error`
/// returns), as Parquet files under `output`, one per partition; returns one report row per file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriteFeatures {
    input: LogicalPlan,
    output: String,
    run_id: String,
    /// Whether each report also carries the feature moments of the file's rows.
    moments: bool,
    schema: DFSchemaRef,
}

impl WriteFeatures {
    /// `output` is the URL of the features folder (`s3://bucket/out/features/`,
    /// `file:///.../features/`); `run_id` names this run's files.
    pub fn try_new(input: LogicalPlan, output: impl Into<String>, run_id: impl Into<String>) -> Result<Self> {
        let fields = input.schema().fields();
        let found = |name: &str| fields.iter().find(|f| f.name() == name).map(|f| f.data_type().clone());
        let expected = [("path", DataType::Utf8), ("label", DataType::Utf8), ("result", features_or_error_type())];
        for (name, data_type) in expected {
            if found(name).as_ref() != Some(&data_type) {
                return plan_err!(
                    "the features write needs a column {name} of type {data_type}; the query returns {:?}",
                    fields.iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect::<Vec<_>>()
                );
            }
        }
        let schema = Arc::new(DFSchema::try_from(write_report_schema())?);
        Ok(Self { input, output: output.into(), run_id: run_id.into(), moments: false, schema })
    }

    /// Also return, in each report's `moments` column, the [`crate::FEATURE_MOMENTS`] state of
    /// the file's features: a distributed PCA then needs no second pass over the features.
    pub fn with_moments(mut self, moments: bool) -> Self {
        self.moments = moments;
        self
    }

    /// The node as a plan to execute.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(self.into_extension())
    }

    pub fn into_extension(self) -> Extension {
        Extension { node: Arc::new(self) }
    }

    pub fn output(&self) -> &str {
        &self.output
    }

    pub fn run_id(&self) -> &str {
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
        Ok(Self::try_new(input, self.output.clone(), self.run_id.clone())?.with_moments(self.moments))
    }
}
