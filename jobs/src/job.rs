//! `fruits run`: featurize every image under a location.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use fruits_udfs::udf::features_type;
use fruits_udfs::{FEATURIZE_OR_ERROR, IMAGES_TABLE};
use futures::StreamExt;

use crate::engine::Engine;
use crate::output::{FailedImage, PartWriter, Summary, write_json};
use crate::progress::images_bar;

/// Columns of the features Parquet files.
pub fn features_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("features", features_type(), true),
    ]))
}

/// Number of image files under the registered `images` table (from the listing's exact
/// statistics: nothing is read).
pub async fn count_images(engine: &Engine) -> Result<usize> {
    let batches = engine.ctx.sql(&format!("SELECT count(*) FROM {IMAGES_TABLE}")).await?.collect().await?;
    let count = batches
        .first()
        .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
        .map(|c| c.value(0))
        .context("count(*) returned no value")?;
    Ok(usize::try_from(count)?)
}

/// Runs the job over the images registered on `engine` and writes `output/features/` and
/// `output/summary.json`.
pub async fn run(engine: &Engine, input: &str, output: &Path, quiet: bool) -> Result<Summary> {
    let started = Instant::now();
    let total = count_images(engine).await?;
    if total == 0 {
        bail!("no image files (.jpg, .jpeg, .png) found under {input}");
    }

    std::fs::create_dir_all(output).with_context(|| format!("cannot create output folder {}", output.display()))?;
    let features_dir = output.join("features");
    let mut writer = PartWriter::create(&features_dir, features_schema())?;
    let query = format!("SELECT path, label, {FEATURIZE_OR_ERROR}(content) AS result FROM {IMAGES_TABLE}");
    let mut stream = engine.ctx.sql(&query).await?.execute_stream().await?;

    // Ballista hands results to the client when the job ends, so progress comes from the
    // model itself, which featurizes in this process on the embedded engine.
    let bar = images_bar(total as u64, quiet);
    let ticker = {
        let (bar, featurizer) = (bar.clone(), Arc::clone(&engine.featurizer));
        let start = featurizer.images_seen();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(std::time::Duration::from_millis(200));
            loop {
                interval.tick().await;
                bar.set_position(featurizer.images_seen().saturating_sub(start).min(bar.length().unwrap_or(u64::MAX)));
            }
        })
    };
    let (mut rows_out, mut featurized, mut failed) = (0, 0, Vec::new());
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let (features, failures) = split_result(&batch)?;
        writer.write(&features)?;
        rows_out += features.num_rows();
        featurized += features.num_rows() - failures.len();
        failed.extend(failures);
    }
    ticker.abort();
    bar.finish_and_clear();
    let files = writer.finish()?;

    if rows_out != total {
        bail!("the job returned {rows_out} rows for {total} listed images; the input changed while it ran?");
    }
    failed.sort_by(|a, b| a.path.cmp(&b.path));
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        input: input.to_owned(),
        output: output.display().to_string(),
        model: engine.featurizer.config().model_path.display().to_string(),
        engine: format!("ballista standalone, {} task slots", engine.slots),
        rows_in: total,
        rows_out,
        featurized,
        failed,
        feature_dim: engine.featurizer.feature_dim(),
        files: files.iter().map(|f| f.strip_prefix(output).unwrap_or(f).display().to_string()).collect(),
        seconds,
        images_per_second: total as f64 / seconds,
    };
    write_json(&output.join("summary.json"), &summary)?;
    Ok(summary)
}

/// Splits `(path, label, result{features, error})` into the Parquet batch and the failures.
fn split_result(batch: &RecordBatch) -> Result<(RecordBatch, Vec<FailedImage>)> {
    let paths = batch.column(0).as_string::<i32>();
    let labels = batch.column(1).as_string::<i32>();
    let result = batch.column(2).as_struct();
    let features = Arc::clone(result.column(0));
    let errors = result.column(1).as_string::<i32>();
    let failures = (0..batch.num_rows())
        .filter(|&row| errors.is_valid(row))
        .map(|row| FailedImage {
            path: paths.value(row).to_owned(),
            label: labels.is_valid(row).then(|| labels.value(row).to_owned()),
            error: errors.value(row).to_owned(),
        })
        .collect();
    let out =
        RecordBatch::try_new(features_schema(), vec![Arc::new(paths.clone()), Arc::new(labels.clone()), features])?;
    Ok((out, failures))
}

/// The human summary printed at the end of `fruits run`.
pub fn print_summary(summary: &Summary) {
    println!(
        "{} images from {} -> {}/features ({} file{})",
        summary.rows_in,
        summary.input,
        summary.output,
        summary.files.len(),
        if summary.files.len() == 1 { "" } else { "s" }
    );
    println!("  featurized {}, failed {}", summary.featurized, summary.failed.len());
    for failure in summary.failed.iter().take(10) {
        println!("    {}: {}", failure.path, failure.error);
    }
    if summary.failed.len() > 10 {
        println!("    ... and {} more in {}/summary.json", summary.failed.len() - 10, summary.output);
    }
    println!("  {:.1} s, {:.1} images/s ({})", summary.seconds, summary.images_per_second, summary.engine);
}
