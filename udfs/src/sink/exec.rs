//! The physical write: each partition becomes one Parquet file in the output store.

use std::fmt;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch, StringArray, UInt64Array};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_datafusion_err, internal_err};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;

use super::manifest::{PartFile, RunId};
use super::{MODEL_METADATA_KEY, features_schema, parquet_writer_properties, write_report_schema};
use crate::lease::host_name;
use crate::location::{Location, write_error};
use crate::moments::MomentsAccumulator;

/// Writes each input partition (`path`, `label`, `size`, `modified`, `etag`,
/// `result{features, error}`, `model`) to `<output>/part-<run>-<attempt>.parquet` (a
/// [`PartFile`]) and reports `(file, rows, failed, written_by, first_path, model, moments)` once
/// the file is complete. The model's fingerprint goes into the file's key-value metadata.
///
/// Files are not named after the partition: Ballista hands every task a plan cut down to its
/// own partition, which it executes as partition 0.
#[derive(Debug)]
pub struct FeaturesSinkExec {
    input: Arc<dyn ExecutionPlan>,
    output: String,
    run_id: String,
    moments: bool,
    properties: Arc<PlanProperties>,
}

impl FeaturesSinkExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, output: &str, run_id: &str) -> Result<Self> {
        ListingTableUrl::parse(output)?;
        if RunId::parse(run_id).is_none() {
            return internal_err!("invalid run id {run_id:?}");
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(write_report_schema()),
            input.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            output: output.to_owned(),
            run_id: run_id.to_owned(),
            moments: false,
            properties: Arc::new(properties),
        })
    }

    pub fn output(&self) -> &str {
        &self.output
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Also accumulate the moments of the features written (see [`super::WriteFeatures::with_moments`]).
    pub fn with_moments(mut self, moments: bool) -> Self {
        self.moments = moments;
        self
    }

    pub fn moments(&self) -> bool {
        self.moments
    }
}

impl DisplayAs for FeaturesSinkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FeaturesSinkExec: output={} run={} moments={}", self.output, self.run_id, self.moments)
    }
}

impl ExecutionPlan for FeaturesSinkExec {
    fn name(&self) -> &'static str {
        "FeaturesSinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // One file per input partition: more partitions would only mean more, smaller files.
        vec![false]
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("FeaturesSinkExec takes exactly one input".into()))?;
        Ok(Arc::new(Self::try_new(input, &self.output, &self.run_id)?.with_moments(self.moments)))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition >= self.input.output_partitioning().partition_count() {
            return internal_err!("FeaturesSinkExec has no partition {partition}");
        }
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let folder = Location::parse(&self.output, &context.runtime_env())?;
        let run = RunId::parse(&self.run_id).ok_or_else(|| exec_datafusion_err!("invalid run id {}", self.run_id))?;
        let name = PartFile::new(&run).name();
        let moments = self.moments.then(MomentsAccumulator::default);
        let write = write_partition(input, folder, name, moments);
        Ok(Box::pin(RecordBatchStreamAdapter::new(write_report_schema(), futures::stream::once(write))))
    }
}

/// Streams one partition into `folder/name`; a failure of the upload that may pass (see
/// [`write_error`]) is an I/O error, so Ballista retries the task, which then writes a file of
/// its own name.
async fn write_partition(
    mut input: SendableRecordBatchStream,
    folder: Location,
    name: String,
    mut moments: Option<MomentsAccumulator>,
) -> Result<RecordBatch> {
    let url = folder.child_url(&name);
    let upload = folder.upload(&name);
    let mut writer = AsyncArrowWriter::try_new(upload, features_schema(), Some(parquet_writer_properties()))?;
    let (mut rows, mut failed, mut first_path, mut model) = (0u64, 0u64, None, None::<String>);
    while let Some(batch) = input.next().await {
        let batch = batch?;
        check_model(&batch, &mut model)?;
        let batch = flatten(&batch)?;
        if first_path.is_none() && batch.num_rows() > 0 {
            let paths = input_column(&batch, "path")?
                .as_string_opt::<i32>()
                .ok_or_else(|| exec_datafusion_err!("path is not Utf8"))?;
            first_path = Some(paths.value(0).to_owned());
        }
        rows += batch.num_rows() as u64;
        failed += (batch.num_rows() - input_column(&batch, "error")?.null_count()) as u64;
        if let Some(moments) = &mut moments {
            let features = input_column(&batch, "features")?
                .as_list_opt::<i32>()
                .ok_or_else(|| exec_datafusion_err!("features is not a list"))?;
            moments.add_features(features)?;
        }
        writer.write(&batch).await.map_err(|e| write_error(format!("cannot write {url}"), e))?;
    }
    if let Some(model) = &model {
        writer.append_key_value_metadata(KeyValue::new(MODEL_METADATA_KEY.to_owned(), model.clone()));
    }
    // An attempt that fails before this point never completes its upload, so it leaves no
    // object behind (or, on a local disk, a file that the commit's clean-up removes).
    writer.close().await.map_err(|e| write_error(format!("cannot write {url}"), e))?;
    let moments = match &mut moments {
        Some(moments) => moments.finish()?,
        None => None,
    };
    let report = RecordBatch::try_new(
        write_report_schema(),
        vec![
            Arc::new(StringArray::from(vec![name])),
            Arc::new(UInt64Array::from(vec![rows])),
            Arc::new(UInt64Array::from(vec![failed])),
            Arc::new(StringArray::from(vec![process_name().to_owned()])),
            Arc::new(StringArray::from(vec![first_path])),
            Arc::new(StringArray::from(vec![model])),
            Arc::new(BinaryArray::from(vec![moments.as_deref()])),
        ],
    )?;
    Ok(report)
}

/// The column `name` of `batch` (the write's input, or a batch of the features files).
fn input_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| exec_datafusion_err!("the features write lost its {name} column"))
}

/// The write's input columns to those of the features files.
fn flatten(batch: &RecordBatch) -> Result<RecordBatch> {
    let column = |name: &str| input_column(batch, name).map(Arc::clone);
    let result =
        input_column(batch, "result")?.as_struct_opt().ok_or_else(|| exec_datafusion_err!("result is not a struct"))?;
    let columns: Vec<ArrayRef> = vec![
        column("path")?,
        column("label")?,
        column("size")?,
        column("modified")?,
        column("etag")?,
        Arc::clone(result.column(0)),
        Arc::clone(result.column(1)),
    ];
    Ok(RecordBatch::try_new(features_schema(), columns)?)
}

/// Checks that every row of a file was made by one model, and keeps its fingerprint in `seen`.
fn check_model(batch: &RecordBatch, seen: &mut Option<String>) -> Result<()> {
    let models = input_column(batch, "model")?
        .as_string_opt::<i32>()
        .ok_or_else(|| exec_datafusion_err!("model is not Utf8"))?;
    for model in models.iter().flatten() {
        match seen {
            Some(seen) if seen != model => {
                return Err(exec_datafusion_err!("one task's rows were made by two models: {seen} and {model}"));
            }
            Some(_) => {}
            None => *seen = Some(model.to_owned()),
        }
    }
    Ok(())
}

/// `host:pid` of this process, recorded with each file: which executor wrote what.
pub(crate) fn process_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("{}:{}", host_name(), std::process::id()))
}
