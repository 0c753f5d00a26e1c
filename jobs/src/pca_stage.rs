//! The PCA stage: a run's features in; `pca/part-<run>.parquet` projections, `pca.png`, the
//! explained variance (and `features.csv` on request) out, next to the features.
//!
//! The projections are written under the run's name before the run commits, so a reader of
//! the previous result still finds its own; `pca.png` and `features.csv` are views of the
//! committed run, written after the commit (see `commands::run`) and naming their run.
//!
//! Two ways to the covariance, one result (equal within 1e-4, tested):
//! - `memory`: every feature vector is read into this process and fitted there. Fastest while
//!   the features fit comfortably: 50,000 rows are 256 MB of f32.
//! - `distributed`: the engine aggregates the moments (count, mean, scatter) with
//!   `feature_moments`; in `fruits run` the executors do it while they write the features, so
//!   nothing is read twice. This process only takes the `d x d` eigen-decomposition.
//!
//! Either way the projections are then computed by the engine with `pca_project` (on a cluster,
//! by the executors, next to the features) and stream back, `k` numbers per row, into the
//! projections file; this process keeps two coordinates and a label per row for the plot.

use std::sync::Arc;
use std::time::Instant;

use std::collections::HashSet;

use anyhow::{Context, Result, bail, ensure};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::FunctionRegistry;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::prelude::{SessionContext, cast, col, lit};
use fruits_pca::{FeatureMatrix, Moments, Pca, scatter_png, with_text_chunk};
use fruits_udfs::{FEATURE_MOMENTS, Location, Manifest, PCA_PROJECT, RunId, decode_moments, parquet_writer_properties};
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use crate::cli::{PcaMode, PcaOptions};
use crate::committed::{Block, FeatureFiles};
use crate::summary::PcaSummary;

/// Size of `pca.png`, in pixels: readable on a laptop screen and in a report.
const PLOT_SIZE: (u32, u32) = (1200, 900);

/// Most points `pca.png` draws: beyond a few hundred thousand, points of 1200x900 pixels only
/// cover each other, and the plot would hold memory in proportion to the rows.
const MAX_PLOT_POINTS: u64 = 200_000;

/// What the plot needs of the projected rows: two coordinates and a label each, the labels
/// shared, for every `stride`-th row with features (all of them up to [`MAX_PLOT_POINTS`]).
struct Projected {
    points: Vec<[f64; 2]>,
    labels: Vec<Arc<str>>,
    names: HashSet<Arc<str>>,
    stride: u64,
    with_features: u64,
    without_features: u64,
}

/// Where the PCA outputs go in the output folder.
pub const PLOT_FILE: &str = "pca.png";
pub const CSV_FILE: &str = "features.csv";
const PROJECTIONS_DIR: &str = "pca/";

/// A fitted PCA whose projections are written; its plot is rendered, not yet published.
pub struct PcaOutput {
    pub summary: PcaSummary,
    /// `pca.png`, naming the run in a `fruits:run` text chunk; `None` for fewer than 2 components.
    plot: Option<Vec<u8>>,
    csv: bool,
}

/// The projections file of run `run_id`, relative to the output folder.
fn projections_file(run_id: &str) -> String {
    format!("{PROJECTIONS_DIR}part-{run_id}.parquet")
}

/// Fits a PCA on `features` and writes its projections into `output`. `moments`, when the
/// featurize job already aggregated them, make it distributed.
///
/// The projections are computed where `ctx` runs its queries (a cluster's executors, for
/// `fruits run` on one) with `pca_project`, and stream back as `k` numbers per row into the
/// projections file: whatever the mode, this process never holds more than a batch of them.
pub async fn fit(
    ctx: &SessionContext,
    features: &FeatureFiles,
    output: &Location,
    options: PcaOptions,
    moments: Option<Moments>,
) -> Result<PcaOutput> {
    let started = Instant::now();
    let manifest = &features.manifest;
    let mode = if moments.is_some() { PcaMode::Distributed } else { options.mode.resolve(manifest.rows) };
    let pca = match mode {
        PcaMode::Distributed => {
            let moments = match moments {
                Some(moments) => moments,
                None => aggregate_moments(ctx, features).await?,
            };
            check_moments(&moments, manifest)?;
            Pca::from_moments(&moments, options.k).context("PCA failed")?
        }
        PcaMode::Memory | PcaMode::Auto => fit_in_memory(ctx, features, options.k).await?,
    };
    let k = pca.n_components();

    let projections = projections_file(&manifest.run_id);
    let projected = write_projections(ctx, features, &pca, output, &projections).await?;
    let mut files_written = vec![projections];
    let plot = if k >= 2 {
        let ratio = pca.explained_variance_ratio();
        let png = scatter_png(&projected.points, &projected.labels, [ratio[0], ratio[1]], PLOT_SIZE.0, PLOT_SIZE.1)?;
        files_written.push(PLOT_FILE.to_owned());
        Some(with_text_chunk(&png, "fruits:run", &manifest.run_id)?)
    } else {
        None
    };
    if options.csv {
        files_written.push(CSV_FILE.to_owned());
    }
    let summary = PcaSummary {
        components: k,
        mode,
        rows: pca.n_samples(),
        rows_without_features: projected.without_features,
        feature_dim: pca.dim(),
        explained_variance_ratio: pca.explained_variance_ratio().to_vec(),
        cumulative_explained_variance_ratio: pca.cumulative_explained_variance_ratio(),
        files: files_written,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(PcaOutput { summary, plot, csv: options.csv })
}

/// Every feature vector read into this process and fitted here.
async fn fit_in_memory(ctx: &SessionContext, features: &FeatureFiles, k: usize) -> Result<Pca> {
    let (mut values, mut dim) = (Vec::new(), 0);
    let mut blocks = std::pin::pin!(features.blocks(ctx).await?);
    while let Some(mut block) = blocks.try_next().await? {
        if dim == 0 {
            dim = block.dim;
        }
        ensure!(block.dim == dim || block.values.is_empty(), "features of {} values after {dim}", block.dim);
        values.append(&mut block.values);
    }
    ensure!(dim > 0, "no row of {} has features: nothing to fit", features.folder.url());
    Pca::fit(FeatureMatrix::new(&values, dim)?, k).context("PCA failed")
}

/// Projects every committed row with `pca_project` on `ctx`'s engine and streams the result into
/// `output/name` (`path`, `label`, `pc1` .. `pck`, one row per row with features).
async fn write_projections(
    ctx: &SessionContext,
    features: &FeatureFiles,
    pca: &Pca,
    output: &Location,
    name: &str,
) -> Result<Projected> {
    let k = pca.n_components();
    let projection = ScalarValue::Binary(Some(pca.projection().to_bytes()));
    let coordinates = ctx.udf(PCA_PROJECT)?.call(vec![col("features"), lit(projection)]).alias("pc");
    let mut stream = features
        .engine_frame(ctx)
        .await?
        .select(vec![cast(col("path"), DataType::Utf8), cast(col("label"), DataType::Utf8), coordinates])?
        .execute_stream()
        .await
        .context("cannot start projecting the features on the components")?;

    let schema = projections_schema(k);
    // Small row groups: the writer holds the open one, which by default is a million rows.
    let mut writer =
        AsyncArrowWriter::try_new(output.upload(name), Arc::clone(&schema), Some(parquet_writer_properties()))?;
    let mut projected = Projected::for_rows(features.manifest.rows);
    while let Some(batch) = stream.try_next().await.context("cannot project the features on the components")? {
        let batch = projected.add(&batch, &schema)?;
        writer.write(&batch).await?;
    }
    writer.close().await.with_context(|| format!("cannot write {}", output.child_url(name)))?;
    Ok(projected)
}

/// `path`, `label`, `pc1` .. `pck`.
fn projections_schema(k: usize) -> SchemaRef {
    let mut fields = vec![Field::new("path", DataType::Utf8, false), Field::new("label", DataType::Utf8, false)];
    fields.extend((1..=k).map(|i| Field::new(format!("pc{i}"), DataType::Float64, false)));
    Arc::new(Schema::new(fields))
}

impl PcaOutput {
    /// Writes the views of the committed run `features`: `pca.png` and, if asked,
    /// `features.csv`.
    pub async fn publish(&self, ctx: &SessionContext, features: &FeatureFiles, output: &Location) -> Result<()> {
        if let Some(plot) = &self.plot {
            output.put(PLOT_FILE, plot.clone()).await?;
        }
        if self.csv {
            write_csv(ctx, features, output, CSV_FILE).await?;
        }
        Ok(())
    }
}

/// Deletes the projections of runs other than `run_id` from `output`'s `pca/` folder (and the
/// `part-00000.parquet` of fruits before run-named projections); nothing else there.
pub async fn remove_leftovers(output: &Location, run_id: &str) -> Result<Vec<String>> {
    let folder = output.child(PROJECTIONS_DIR)?;
    let keep = projections_file(run_id);
    let mut removed = Vec::new();
    for object in folder.list().await? {
        let Some(name) = folder.relative_name(&object.location) else { continue };
        let name = format!("{PROJECTIONS_DIR}{name}");
        if is_projections_file(&name) && name != keep {
            folder.delete_path(&object.location).await?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Whether `name` (relative to the output folder) is a projections file fruits wrote: a run's,
/// or the `part-00000.parquet` of fruits before run-named projections.
pub fn is_projections_file(name: &str) -> bool {
    let run = name
        .strip_prefix(PROJECTIONS_DIR)
        .and_then(|n| n.strip_prefix("part-"))
        .and_then(|n| n.strip_suffix(".parquet"));
    run.is_some_and(|run| run == "00000" || RunId::parse(run).is_some())
}

impl Projected {
    /// For a result of `rows` rows.
    fn for_rows(rows: u64) -> Self {
        Self {
            points: Vec::new(),
            labels: Vec::new(),
            names: HashSet::new(),
            stride: rows.div_ceil(MAX_PLOT_POINTS).max(1),
            with_features: 0,
            without_features: 0,
        }
    }

    /// Takes the plot's share of a batch of `path`, `label`, `pc` (NULL for a row without
    /// features) and returns the batch's rows with features in the projections file's `schema`.
    fn add(&mut self, batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
        let (paths, labels) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
        let coordinates = batch.column(2).as_list_opt::<i32>().context("pca_project returned no list")?;
        let k = schema.fields().len() - 2;
        let rows: Vec<u32> = (0..batch.num_rows()).filter(|&row| coordinates.is_valid(row)).map(|r| r as u32).collect();
        self.without_features += (batch.num_rows() - rows.len()) as u64;
        // A missing label is an empty one, as everywhere features are read.
        let label = |row: usize| if labels.is_valid(row) { labels.value(row) } else { "" };
        let mut columns = vec![Vec::with_capacity(rows.len()); k];
        for &row in &rows {
            let point = coordinates.value(row as usize);
            let point = point.as_primitive_opt::<Float64Type>().context("pca_project returned no float64")?;
            ensure!(point.len() == k, "pca_project returned {} coordinates, not {k}", point.len());
            for (column, value) in columns.iter_mut().zip(point.values()) {
                column.push(*value);
            }
            self.with_features += 1;
            if k >= 2 && (self.with_features - 1) % self.stride == 0 {
                self.points.push([point.value(0), point.value(1)]);
                let shared = self.shared(label(row as usize));
                self.labels.push(shared);
            }
        }
        let mut arrays: Vec<ArrayRef> = vec![
            take(paths, &UInt32Array::from(rows.clone()), None)?,
            Arc::new(StringArray::from_iter_values(rows.iter().map(|&row| label(row as usize)))),
        ];
        arrays.extend(columns.into_iter().map(|c| Arc::new(Float64Array::from(c)) as ArrayRef));
        Ok(RecordBatch::try_new(Arc::clone(schema), arrays)?)
    }

    /// `label`, allocated once for all its rows.
    fn shared(&mut self, label: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(label) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(label);
        self.names.insert(Arc::clone(&shared));
        shared
    }
}

/// `feature_moments(features)` over the committed files, on `ctx`'s engine.
async fn aggregate_moments(ctx: &SessionContext, features: &FeatureFiles) -> Result<Moments> {
    let moments = ctx.udaf(FEATURE_MOMENTS)?;
    let batches = features
        .frame(ctx)
        .await?
        .aggregate(vec![], vec![moments.call(vec![col("features")])])?
        .collect()
        .await
        .context("cannot aggregate the feature moments")?;
    let state = batches.first().and_then(|b| b.column(0).as_binary_opt::<i32>()).filter(|s| s.is_valid(0));
    let Some(state) = state else {
        bail!("no row of the committed features has features: nothing to fit");
    };
    Ok(decode_moments(state.value(0))?)
}

/// The aggregate must have seen every featurized row, exactly once.
fn check_moments(moments: &Moments, manifest: &Manifest) -> Result<()> {
    let featurized = manifest.rows - manifest.failed;
    ensure!(
        moments.n_samples() == featurized,
        "the distributed PCA aggregated {} rows but {featurized} were featurized; try --pca-mode memory",
        moments.n_samples()
    );
    Ok(())
}

/// `path,label,f0,...` with one row per featurized image, as the reference pipeline wrote it;
/// streamed from the committed files into a multipart upload, a batch at a time.
async fn write_csv(ctx: &SessionContext, features: &FeatureFiles, output: &Location, name: &str) -> Result<()> {
    let mut upload = output.upload(name);
    let mut blocks = std::pin::pin!(features.blocks(ctx).await?);
    let mut header_written = false;
    while let Some(block) = blocks.try_next().await? {
        if block.values.is_empty() {
            continue;
        }
        let mut text = String::new();
        if !header_written {
            text = csv_header(block.dim);
            header_written = true;
        }
        csv_rows(&block, &mut text);
        upload.write_all(text.as_bytes()).await.with_context(|| format!("cannot write {}", output.child_url(name)))?;
    }
    upload.shutdown().await.with_context(|| format!("cannot write {}", output.child_url(name)))?;
    Ok(())
}

fn csv_header(dim: usize) -> String {
    use std::fmt::Write;
    let mut text = String::from("path,label");
    for i in 0..dim {
        let _ = write!(text, ",f{i}");
    }
    text.push('\n');
    text
}

fn csv_rows(block: &Block, text: &mut String) {
    use std::fmt::Write;
    for (row, values) in block.values.chunks(block.dim).enumerate() {
        let _ = write!(text, "{},{}", csv_field(&block.paths[row]), csv_field(&block.labels[row]));
        for v in values {
            let _ = write!(text, ",{v}");
        }
        text.push('\n');
    }
}

/// Quotes a field when CSV needs it.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("Apple Golden 1"), "Apple Golden 1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn the_plot_keeps_every_nth_row_but_the_projections_file_every_row() {
        use datafusion::arrow::array::{Float64Builder, ListBuilder};
        let rows = 5 * MAX_PLOT_POINTS / 2;
        let mut projected = Projected::for_rows(rows);
        let schema = projections_schema(2);
        let mut written = 0;
        for start in (0..rows).step_by(50_000) {
            let n = 50_000.min(rows - start) as usize;
            let mut pc = ListBuilder::new(Float64Builder::new());
            for i in 0..n {
                pc.values().append_slice(&[(start as usize + i) as f64, 0.5]);
                pc.append(true);
            }
            let paths =
                StringArray::from_iter_values((0..n).map(|i| format!("s3://b/Apple/{}.jpg", start as usize + i)));
            let labels = StringArray::from_iter_values((0..n).map(|_| "Apple"));
            let columns: Vec<ArrayRef> = vec![Arc::new(paths), Arc::new(labels), Arc::new(pc.finish())];
            let batch = RecordBatch::try_from_iter(["path", "label", "pc"].into_iter().zip(columns)).unwrap();
            written += projected.add(&batch, &schema).unwrap().num_rows() as u64;
        }
        assert_eq!(written, rows);
        assert!(projected.points.len() as u64 <= MAX_PLOT_POINTS, "{}", projected.points.len());
        assert_eq!(projected.points.len() as u64, rows.div_ceil(3));
        assert_eq!(projected.points[1], [3.0, 0.5]);
        assert_eq!((projected.labels.len(), projected.names.len()), (projected.points.len(), 1));
        assert_eq!(Projected::for_rows(4835).stride, 1);
    }
}
