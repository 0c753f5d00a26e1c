//! Plan codecs that carry the `images` table, its scan and the features write between client,
//! scheduler and executors.
//!
//! datafusion-proto only knows the built-in tables and file formats. These codecs wrap
//! Ballista's own: our nodes are encoded as ours, everything else goes to Ballista's codec
//! untouched, and a oneof tells the two apart on decoding. Every other method of the codec
//! traits (file formats, as in `COPY ... STORED AS PARQUET`, and functions) is handed to
//! Ballista's codec as is: fruits adds nothing there.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{TableReference, internal_datafusion_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, HigherOrderUDF, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_protobuf_file_scan_config;
use datafusion_proto::physical_plan::to_proto::serialize_file_scan_config;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use prost::Message;

use crate::sink::{FeaturesSinkExec, RunId, WriteFeatures};
use crate::table::{ImageSource, ImagesTable, ScanOptions, Worklist, images_table_schema};

/// Wire messages. Hand-written prost structs: a handful of small messages do not justify a
/// build step.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImagesTableNode {
        #[prost(string, tag = "1")]
        pub location: String,
        #[prost(uint64, tag = "2")]
        pub files_per_partition: u64,
        #[prost(uint64, tag = "3")]
        pub max_image_bytes: u64,
        /// URL of the table's work list; empty when the scan lists `location` itself.
        #[prost(string, tag = "4")]
        pub worklist: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TableNode {
        #[prost(oneof = "Table", tags = "1, 2")]
        pub table: Option<Table>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Table {
        #[prost(message, tag = "1")]
        Images(ImagesTableNode),
        /// Anything else, as encoded by the wrapped codec.
        #[prost(bytes, tag = "2")]
        Other(Vec<u8>),
    }

    /// The features write, logical or physical: its input travels as the node's child.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteFeaturesNode {
        #[prost(string, tag = "1")]
        pub output: String,
        #[prost(string, tag = "2")]
        pub run_id: String,
        /// Whether each task also returns the feature moments of its rows.
        #[prost(bool, tag = "3")]
        pub moments: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExtensionNode {
        #[prost(oneof = "Node", tags = "1, 2")]
        pub node: Option<Node>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Node {
        #[prost(message, tag = "1")]
        WriteFeatures(WriteFeaturesNode),
        #[prost(bytes, tag = "2")]
        Other(Vec<u8>),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageScanNode {
        #[prost(message, optional, tag = "1")]
        pub base_conf: Option<datafusion_proto::protobuf::FileScanExecConf>,
        /// The ETag of every file, in file-group order ("" for none): DataFusion's own encoding
        /// of a file drops it, and the features record it for the next incremental run.
        #[prost(string, repeated, tag = "2")]
        pub e_tags: Vec<String>,
        /// URL of the work list the scan files are slices of; empty when each is an image.
        #[prost(string, tag = "3")]
        pub worklist: String,
        /// The largest image read of a work list's entries (`--max-image-bytes`).
        #[prost(uint64, tag = "4")]
        pub max_image_bytes: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PlanNode {
        #[prost(oneof = "Plan", tags = "1, 2, 3")]
        pub plan: Option<Plan>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Plan {
        #[prost(message, tag = "1")]
        ImageScan(ImageScanNode),
        #[prost(bytes, tag = "2")]
        Other(Vec<u8>),
        #[prost(message, tag = "3")]
        FeaturesSink(WriteFeaturesNode),
    }
}

fn decode_error(what: &str, e: prost::DecodeError) -> DataFusionError {
    internal_datafusion_err!("cannot decode {what}: {e}")
}

fn encode<M: Message>(message: &M, buf: &mut Vec<u8>) -> Result<()> {
    message.encode(buf).map_err(|e| internal_datafusion_err!("cannot encode plan node: {e}"))
}

/// Logical codec: the `images` table travels as its location and scan options.
#[derive(Debug)]
pub struct FruitsLogicalCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
}

impl Default for FruitsLogicalCodec {
    fn default() -> Self {
        Self { inner: Arc::new(BallistaLogicalExtensionCodec::default()) }
    }
}

impl LogicalExtensionCodec for FruitsLogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        let node = wire::ExtensionNode::decode(buf).map_err(|e| decode_error("extension", e))?;
        match node.node {
            Some(wire::Node::WriteFeatures(write)) => {
                let [input] = inputs else {
                    return Err(internal_datafusion_err!("WriteFeatures takes exactly one input"));
                };
                let run_id = RunId::parse(&write.run_id)
                    .ok_or_else(|| internal_datafusion_err!("invalid run id {:?}", write.run_id))?;
                Ok(WriteFeatures::try_new(input.clone(), write.output, &run_id)?
                    .with_moments(write.moments)
                    .into_extension())
            }
            Some(wire::Node::Other(inner)) => self.inner.try_decode(&inner, inputs, ctx),
            None => Err(internal_datafusion_err!("extension node without a node")),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        let node = match node.node.as_any().downcast_ref::<WriteFeatures>() {
            Some(write) => wire::Node::WriteFeatures(wire::WriteFeaturesNode {
                output: write.output().to_owned(),
                run_id: write.run_id().to_string(),
                moments: write.moments(),
            }),
            None => {
                let mut inner = Vec::new();
                self.inner.try_encode(node, &mut inner)?;
                wire::Node::Other(inner)
            }
        };
        encode(&wire::ExtensionNode { node: Some(node) }, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        let node = wire::TableNode::decode(buf).map_err(|e| decode_error("table", e))?;
        match node.table {
            Some(wire::Table::Images(images)) => {
                let options = ScanOptions {
                    files_per_partition: images.files_per_partition as usize,
                    max_image_bytes: images.max_image_bytes,
                };
                let table = ImagesTable::try_new(&images.location, options)?;
                Ok(Arc::new(match images.worklist.as_str() {
                    "" => table,
                    worklist => table.with_worklist(worklist),
                }))
            }
            Some(wire::Table::Other(inner)) => self.inner.try_decode_table_provider(&inner, table_ref, schema, ctx),
            None => Err(internal_datafusion_err!("table node without a table")),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let table = match node.downcast_ref::<ImagesTable>() {
            Some(images) => wire::Table::Images(wire::ImagesTableNode {
                location: images.location().to_owned(),
                files_per_partition: images.options().files_per_partition as u64,
                max_image_bytes: images.options().max_image_bytes,
                worklist: images.worklist().unwrap_or_default().to_owned(),
            }),
            None => {
                let mut inner = Vec::new();
                self.inner.try_encode_table_provider(table_ref, node, &mut inner)?;
                wire::Table::Other(inner)
            }
        };
        encode(&wire::TableNode { table: Some(table) }, buf)
    }
    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_higher_order_function(&self, name: &str, buf: &[u8]) -> Result<Arc<HigherOrderUDF>> {
        self.inner.try_decode_higher_order_function(name, buf)
    }

    fn try_encode_higher_order_function(&self, node: &HigherOrderUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_higher_order_function(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}

/// Physical codec: the image scan travels as a standard `FileScanConfig` (file groups,
/// projection, statistics) that is rebuilt around an [`ImageSource`] on the other side.
#[derive(Debug)]
pub struct FruitsPhysicalCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
}

impl Default for FruitsPhysicalCodec {
    fn default() -> Self {
        Self { inner: Arc::new(BallistaPhysicalExtensionCodec::default()) }
    }
}

/// The files of `config`, group after group.
fn files(config: &FileScanConfig) -> impl Iterator<Item = &datafusion::datasource::listing::PartitionedFile> {
    config.file_groups.iter().flat_map(|group| group.files())
}

/// Puts back the ETags [`wire::ImageScanNode::e_tags`] carried.
fn restore_e_tags(config: &mut FileScanConfig, e_tags: Vec<String>) -> Result<()> {
    let count = files(config).count();
    if e_tags.len() != count {
        return Err(internal_datafusion_err!("image scan of {count} files with {} ETags", e_tags.len()));
    }
    let mut e_tags = e_tags.into_iter();
    for group in &mut config.file_groups {
        for i in 0..group.len() {
            group[i].object_meta.e_tag = e_tags.next().filter(|tag| !tag.is_empty());
        }
    }
    Ok(())
}

/// The `FileScanConfig` of `plan` and its source, if it is an image scan.
fn image_scan(plan: &dyn ExecutionPlan) -> Option<(&FileScanConfig, &ImageSource)> {
    let exec = plan.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    config.file_source().downcast_ref::<ImageSource>().map(|source| (config, source))
}

impl PhysicalExtensionCodec for FruitsPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node = wire::PlanNode::decode(buf).map_err(|e| decode_error("plan", e))?;
        match node.plan {
            Some(wire::Plan::ImageScan(scan)) => {
                let base =
                    scan.base_conf.ok_or_else(|| internal_datafusion_err!("image scan without its FileScanConfig"))?;
                let source = ImageSource::new(images_table_schema());
                let source = Arc::new(match scan.worklist.as_str() {
                    "" => source,
                    url => source.with_worklist(Worklist::at(url, &ctx.runtime_env(), scan.max_image_bytes)?),
                });
                let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
                let mut config = parse_protobuf_file_scan_config(&base, &decode_ctx, proto_converter, source)?;
                restore_e_tags(&mut config, scan.e_tags)?;
                // What a task receives of the listing: the scale benchmark reads this.
                let files: usize = config.file_groups.iter().map(|group| group.len()).sum();
                log::debug!(
                    "image scan plan: {} bytes, {files} files in {} groups",
                    buf.len(),
                    config.file_groups.len()
                );
                Ok(DataSourceExec::from_data_source(config))
            }
            Some(wire::Plan::FeaturesSink(write)) => {
                let [input] = inputs else {
                    return Err(internal_datafusion_err!("FeaturesSinkExec takes exactly one input"));
                };
                Ok(Arc::new(
                    FeaturesSinkExec::try_new(Arc::clone(input), &write.output, &write.run_id)?
                        .with_moments(write.moments),
                ))
            }
            Some(wire::Plan::Other(inner)) => self.inner.try_decode(&inner, inputs, ctx, proto_converter),
            None => Err(internal_datafusion_err!("plan node without a plan")),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let plan = if let Some((config, source)) = image_scan(node.as_ref()) {
            let worklist = source.worklist();
            wire::Plan::ImageScan(wire::ImageScanNode {
                base_conf: Some(serialize_file_scan_config(config, self, proto_converter)?),
                e_tags: files(config).map(|f| f.object_meta.e_tag.clone().unwrap_or_default()).collect(),
                worklist: worklist.map(|w| w.url().to_owned()).unwrap_or_default(),
                max_image_bytes: worklist.map_or(0, Worklist::max_image_bytes),
            })
        } else if let Some(sink) = node.downcast_ref::<FeaturesSinkExec>() {
            wire::Plan::FeaturesSink(wire::WriteFeaturesNode {
                output: sink.output().to_owned(),
                run_id: sink.run_id().to_owned(),
                moments: sink.moments(),
            })
        } else {
            let mut inner = Vec::new();
            self.inner.try_encode(node, &mut inner, proto_converter)?;
            wire::Plan::Other(inner)
        };
        encode(&wire::PlanNode { plan: Some(plan) }, buf)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_higher_order_function(&self, name: &str, buf: &[u8]) -> Result<Arc<HigherOrderUDF>> {
        self.inner.try_decode_higher_order_function(name, buf)
    }

    fn try_encode_higher_order_function(&self, node: &HigherOrderUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_higher_order_function(node, buf)
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        ctx: &PhysicalExprDecodeCtx<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        self.inner.try_decode_expr(buf, inputs, ctx)
    }

    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        ctx: &PhysicalExprEncodeCtx<'_>,
    ) -> Result<()> {
        self.inner.try_encode_expr(node, buf, ctx)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}
