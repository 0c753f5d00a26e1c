//! The `images` table, its scan, `featurize` and the features write survive the protobuf round
//! trip that carries plans from client to scheduler to executors, and the decoded plan computes
//! the same rows.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::bytes::{
    logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use fruits_udfs::{
    Backend, Entry, FeaturesDir, Featurizer, FruitsLogicalCodec, FruitsPhysicalCodec, ImagesTable, Lease, Location,
    Manifest, ModelConfig, ObjectStores, Parallelism, PartFile, RunId, S3Options, ScanOptions, WorklistWriter,
    WriteFeatures, list_entries,
};
use futures::TryStreamExt;

use crate::support::{model_path, read_committed, sample_dir};

const QUERY: &str =
    "SELECT path, label, featurize(content) AS features FROM images WHERE label = 'Mangostan' ORDER BY path LIMIT 5";

fn context() -> SessionContext {
    let featurizer =
        Arc::new(Featurizer::load(ModelConfig::new(model_path()), Parallelism::for_task_slots(2)).expect("model"));
    let runtime = ObjectStores::new(S3Options::default()).runtime_env().expect("runtime");
    let config = SessionConfig::new().with_target_partitions(4);
    let ctx = SessionContext::new_with_state(fruits_udfs::session_state(config, runtime, &Backend::model(featurizer)));
    let table = ImagesTable::try_new(
        &sample_dir().display().to_string(),
        ScanOptions { files_per_partition: 100, ..ScanOptions::default() },
    )
    .expect("table");
    ctx.register_table("images", Arc::new(table)).expect("register");
    ctx
}

fn show(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).expect("format").to_string()
}

#[tokio::test]
async fn logical_plan_round_trip_keeps_table_and_udf() {
    let ctx = context();
    let plan = ctx.sql(QUERY).await.expect("sql").into_optimized_plan().expect("plan");
    let codec = FruitsLogicalCodec::default();
    let bytes = logical_plan_to_bytes_with_extension_codec(&plan, &codec).expect("encode");
    let decoded = logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).expect("decode");
    assert_eq!(format!("{}", decoded.display_indent_schema()), format!("{}", plan.display_indent_schema()));

    let expected = ctx.execute_logical_plan(plan).await.expect("run").collect().await.expect("collect");
    let actual = ctx.execute_logical_plan(decoded).await.expect("run").collect().await.expect("collect");
    assert_eq!(show(&actual), show(&expected));
    assert_eq!(expected.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
}

#[tokio::test]
async fn physical_plan_round_trip_keeps_the_file_groups() {
    let ctx = context();
    let plan = ctx.sql(QUERY).await.expect("sql").create_physical_plan().await.expect("physical plan");
    let codec = FruitsPhysicalCodec::default();
    let bytes = physical_plan_to_bytes_with_extension_codec(Arc::clone(&plan), &codec).expect("encode");
    let decoded: Arc<dyn ExecutionPlan> =
        physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).expect("decode");

    let before = displayable(plan.as_ref()).indent(true).to_string();
    let after = displayable(decoded.as_ref()).indent(true).to_string();
    assert_eq!(after, before);
    // The label filter prunes at planning: the 300 Mangostan files of 4,835, at most 100 per
    // partition, rounded up to a multiple of 4 slots.
    assert!(before.contains("DataSourceExec: file_groups={4 groups"), "{before}");
    assert!(before.contains("file_type=images"), "{before}");

    let expected = collect(plan, ctx.task_ctx()).await.expect("run original");
    let actual = collect(decoded, ctx.task_ctx()).await.expect("run decoded");
    assert_eq!(show(&actual), show(&expected));
}

#[tokio::test]
async fn the_features_write_round_trips_and_writes_one_file_per_partition() {
    let ctx = context();
    let out = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}/features/", out.path().display());
    let run = RunId::new();
    let select = ctx
        .sql(
            "SELECT path, label, size, modified, etag, featurize_or_error(content) AS result, model_fingerprint() AS model \
             FROM images WHERE label = 'Mangostan'",
        )
        .await
        .expect("sql")
        .into_unoptimized_plan();
    let plan = WriteFeatures::try_new(select, url.as_str(), &run).expect("write node").to_plan().expect("plan");

    let logical = FruitsLogicalCodec::default();
    let bytes = logical_plan_to_bytes_with_extension_codec(&plan, &logical).expect("encode");
    let decoded = logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &logical).expect("decode");
    assert_eq!(format!("{}", decoded.display_indent()), format!("{}", plan.display_indent()));
    assert!(format!("{}", decoded.display_indent()).contains("WriteFeatures: output=file://"));

    let physical = ctx.state().create_physical_plan(&decoded).await.expect("physical plan");
    let codec = FruitsPhysicalCodec::default();
    let bytes = physical_plan_to_bytes_with_extension_codec(Arc::clone(&physical), &codec).expect("encode");
    let decoded = physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).expect("decode");
    let text = displayable(decoded.as_ref()).indent(true).to_string();
    assert_eq!(text, displayable(physical.as_ref()).indent(true).to_string());
    assert!(text.starts_with("FeaturesSinkExec: output=file://"), "{text}");

    let partitions = decoded.properties().output_partitioning().partition_count();
    let reports = collect(decoded, ctx.task_ctx()).await.expect("run the write");
    let manifest = Manifest::from_reports(run.as_str(), &reports).expect("manifest");
    assert_eq!(manifest.files.len(), partitions);
    assert_eq!((manifest.rows, manifest.failed), (300, 0));
    let model = manifest.model.clone().expect("the executors' model is recorded");
    assert!(model.starts_with("sha256:") && model.contains("224x224"), "{model}");
    assert!(manifest.files.iter().all(|f| PartFile::parse(&f.file).is_some_and(|p| p.run == run)));

    let folder = FeaturesDir::new(Location::parse(&url, &ctx.runtime_env()).expect("features folder"));
    let output = Location::parse(&out.path().display().to_string(), &ctx.runtime_env()).expect("output");
    let lease = Lease::acquire(&output, run.as_str()).await.expect("lease");
    folder.commit(&manifest, &lease).await.expect("commit");
    lease.release().await.expect("release");
    let committed = read_committed(&out.path().join("features"));
    assert_eq!(committed.rows.len(), 300);
    assert!(committed.rows.iter().all(|r| r.label.as_deref() == Some("Mangostan") && r.features.is_some()));
}

/// A work list's scan is planned as slices of it, so its plan does not grow with the images; the
/// decoded plan reads the same rows as a scan of the listing.
#[tokio::test]
async fn a_work_list_scan_plans_slices_and_reads_the_listing_rows() {
    let ctx = context();
    let out = tempfile::tempdir().expect("temp dir");
    let runtime = ctx.runtime_env();
    let folder = Location::parse(&out.path().display().to_string(), &runtime).expect("folder");
    let input = Location::parse(&sample_dir().display().to_string(), &runtime).expect("input");
    let entries: Vec<Entry> = list_entries(&input).try_collect().await.expect("listing");
    assert_eq!(entries.len(), 4835);
    let worklist = |name: &'static str, count: usize| {
        let (folder, entries) = (&folder, &entries);
        async move {
            let mut writer = WorklistWriter::create(folder, name).expect("work list");
            for entry in entries.iter().take(count).cloned() {
                writer.push(entry).await.expect("push");
            }
            writer.finish().await.expect("finish").1
        }
    };
    let options = ScanOptions { files_per_partition: 100, ..ScanOptions::default() };
    let plan_of = |table: &'static str, query: &'static str, worklist: Option<String>| {
        let ctx = &ctx;
        async move {
            let images = ImagesTable::try_new(&sample_dir().display().to_string(), options).expect("table");
            let images = match worklist {
                Some(url) => images.with_worklist(url),
                None => images,
            };
            ctx.register_table(table, Arc::new(images)).expect("register");
            let plan = ctx.sql(query).await.expect("sql").create_physical_plan().await.expect("physical plan");
            let bytes =
                physical_plan_to_bytes_with_extension_codec(plan, &FruitsPhysicalCodec::default()).expect("encode");
            let decoded =
                physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &FruitsPhysicalCodec::default())
                    .expect("decode");
            (bytes.len(), decoded)
        }
    };

    let all = worklist("_worklist-all.parquet", entries.len()).await;
    let (listed_bytes, listed) =
        plan_of("listed", "SELECT path, label, size, modified, read_error FROM listed ORDER BY path", None).await;
    let (work_bytes, work) =
        plan_of("work", "SELECT path, label, size, modified, read_error FROM work ORDER BY path", Some(all)).await;
    let text = displayable(work.as_ref()).indent(true).to_string();
    assert!(text.contains("DataSourceExec: file_groups={52 groups"), "{text}");
    // One scan file and its row range per partition, against one file per image.
    assert!(work_bytes * 20 < listed_bytes, "work list plan {work_bytes} B, listing plan {listed_bytes} B");
    let (expected, actual) = (
        collect(listed, ctx.task_ctx()).await.expect("listing scan"),
        collect(work, ctx.task_ctx()).await.expect("work list scan"),
    );
    assert_eq!(actual.iter().map(RecordBatch::num_rows).sum::<usize>(), 4835);
    assert_eq!(show(&actual), show(&expected));

    // Content is read through the slices too.
    let few = worklist("_worklist-few.parquet", 10).await;
    let (_, featurized) = plan_of("few", "SELECT path, featurize(content) AS features FROM few", Some(few)).await;
    let batches = collect(featurized, ctx.task_ctx()).await.expect("featurize the work list");
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let nulls: usize = batches.iter().map(|b| b.column(1).null_count()).sum();
    assert_eq!((rows, nulls), (10, 0));
}
