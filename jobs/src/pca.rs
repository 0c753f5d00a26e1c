//! The PCA stage: committed features in; `pca/` projections, `pca.png`, the explained variance
//! (and `features.csv` on request) out, next to the features.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use fruits_pca::{FeatureMatrix, Pca, scatter_png};
use fruits_udfs::FeaturesDir;
use serde::Serialize;

use crate::job::{read_committed, utf8_column};
use crate::output::OutputDir;

/// Size of `pca.png`, in pixels: readable on a laptop screen and in a report.
const PLOT_SIZE: (u32, u32) = (1200, 900);

/// What the PCA stage did, for `summary.json` and the terminal.
#[derive(Debug, Serialize)]
pub struct PcaSummary {
    pub components: usize,
    /// Rows the PCA was fitted on.
    pub rows: u64,
    /// Rows left out because their features are NULL (images that could not be featurized).
    pub rows_without_features: u64,
    pub feature_dim: usize,
    pub explained_variance_ratio: Vec<f64>,
    pub cumulative_explained_variance_ratio: Vec<f64>,
    /// Files written, relative to the output folder.
    pub files: Vec<String>,
    pub seconds: f64,
}

/// The committed features of one run, in memory.
struct Features {
    paths: Vec<String>,
    labels: Vec<String>,
    /// Row-major, `dim` values per row; rows without features are not here.
    values: Vec<f32>,
    dim: usize,
    without_features: u64,
}

/// Fits a `k`-component PCA on the committed features in the folder `features` and writes its
/// outputs into `output`.
pub async fn run(ctx: &SessionContext, features: &str, output: &OutputDir, k: usize, csv: bool) -> Result<PcaSummary> {
    let started = Instant::now();
    let features = read_features(ctx, features).await?;
    let rows = features.paths.len();
    let matrix = FeatureMatrix::new(&features.values, features.dim)?;
    let pca = Pca::fit(matrix, k).context("PCA failed")?;
    let projections = pca.project(matrix)?;

    let mut files = vec!["pca/part-00000.parquet".to_owned()];
    output.put(&files[0], projections_parquet(&features, &projections, k)?).await?;
    if k >= 2 {
        let points: Vec<[f64; 2]> = projections.chunks(k).map(|p| [p[0], p[1]]).collect();
        let ratio = pca.explained_variance_ratio();
        let png = scatter_png(&points, &features.labels, [ratio[0], ratio[1]], PLOT_SIZE.0, PLOT_SIZE.1)?;
        output.put("pca.png", png).await?;
        files.push("pca.png".to_owned());
    }
    if csv {
        output.put("features.csv", features_csv(&features)).await?;
        files.push("features.csv".to_owned());
    }
    Ok(PcaSummary {
        components: k,
        rows: rows as u64,
        rows_without_features: features.without_features,
        feature_dim: features.dim,
        explained_variance_ratio: pca.explained_variance_ratio().to_vec(),
        cumulative_explained_variance_ratio: pca.cumulative_explained_variance_ratio(),
        files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads the files the `_SUCCESS` manifest of the features folder lists.
async fn read_features(ctx: &SessionContext, features: &str) -> Result<Features> {
    let runtime = ctx.runtime_env();
    let folder = FeaturesDir::open(&runtime, &format!("{}/", features.trim_end_matches('/')))?;
    let Some(manifest) = folder.manifest().await? else {
        bail!("no committed features in {} (no _SUCCESS manifest): run `fruits run` first", folder.url());
    };
    let files: Vec<String> = manifest.files.iter().map(|f| folder.file_url(&f.file)).collect();
    let batches = read_committed(ctx, files)
        .await?
        .select_columns(&["path", "label", "features"])?
        .collect()
        .await
        .with_context(|| format!("cannot read the features in {}", folder.url()))?;

    let mut features =
        Features { paths: Vec::new(), labels: Vec::new(), values: Vec::new(), dim: 0, without_features: 0 };
    for batch in &batches {
        let (paths, labels) = (utf8_column(batch, 0)?, utf8_column(batch, 1)?);
        let (paths, labels) = (paths.as_string::<i32>(), labels.as_string::<i32>());
        let lists = batch.column(2).as_list_opt::<i32>().context("features is not a list column")?;
        for row in 0..batch.num_rows() {
            if lists.is_null(row) {
                features.without_features += 1;
                continue;
            }
            let vector = lists.value(row);
            let values = vector.as_primitive_opt::<Float32Type>().context("features are not float32")?;
            if features.dim == 0 {
                features.dim = values.len();
            }
            ensure!(
                values.len() == features.dim,
                "{} has {} features, earlier rows {}",
                paths.value(row),
                values.len(),
                features.dim
            );
            features.values.extend_from_slice(values.values());
            features.paths.push(paths.value(row).to_owned());
            features.labels.push(if labels.is_valid(row) { labels.value(row).to_owned() } else { String::new() });
        }
    }
    Ok(features)
}

/// `path`, `label`, `pc1` .. `pck` as one Parquet file.
fn projections_parquet(features: &Features, projections: &[f64], k: usize) -> Result<Vec<u8>> {
    let mut fields = vec![Field::new("path", DataType::Utf8, false), Field::new("label", DataType::Utf8, false)];
    fields.extend((1..=k).map(|i| Field::new(format!("pc{i}"), DataType::Float64, false)));
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(&features.paths)),
        Arc::new(StringArray::from_iter_values(&features.labels)),
    ];
    columns.extend(
        (0..k).map(|c| Arc::new(Float64Array::from_iter_values(projections.chunks(k).map(|p| p[c]))) as ArrayRef),
    );
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(buffer)
}

/// `path,label,f0,...` with one row per featurized image, as the reference pipeline wrote it.
fn features_csv(features: &Features) -> Vec<u8> {
    use std::fmt::Write;
    let mut text = String::from("path,label");
    for i in 0..features.dim {
        let _ = write!(text, ",f{i}");
    }
    text.push('\n');
    for (row, values) in features.values.chunks(features.dim).enumerate() {
        let _ = write!(text, "{},{}", csv_field(&features.paths[row]), csv_field(&features.labels[row]));
        for v in values {
            let _ = write!(text, ",{v}");
        }
        text.push('\n');
    }
    text.into_bytes()
}

/// Quotes a field when CSV needs it.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value.to_owned() }
}

/// The explained variance, printed after a run.
pub fn print_summary(summary: &PcaSummary) {
    println!(
        "PCA of {} images ({} without features left out), {} components, {:.2} s",
        summary.rows, summary.rows_without_features, summary.components, summary.seconds
    );
    for (i, (ratio, cumulative)) in
        summary.explained_variance_ratio.iter().zip(&summary.cumulative_explained_variance_ratio).enumerate()
    {
        println!("  PC{}: {:5.1} % of variance ({:5.1} % cumulative)", i + 1, ratio * 100.0, cumulative * 100.0);
    }
    println!("  wrote {}", summary.files.join(", "));
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
}
