//! `fruits sql`: any query against `images`, printed or written as Parquet.

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::parquet::arrow::AsyncArrowWriter;
use fruits_udfs::{Location, parquet_writer_properties};
use futures::StreamExt;
use object_store::buffered::BufWriter;

use crate::cli::SqlArgs;
use crate::engine::Engine;

/// Rows per Parquet file: about 500 MB of 1280-float features, a size that every reader
/// handles well and that keeps the file count low.
const ROWS_PER_FILE: usize = 100_000;

pub async fn run(args: &SqlArgs) -> Result<()> {
    let engine = Engine::start(&args.engine, &args.model).await?;
    engine.register_images(&args.input.input, args.input.scan_options(), None)?;
    let df = engine.ctx.sql(&args.query).await?;
    let Some(output) = &args.output else {
        let batches = df.collect().await?;
        println!("{}", pretty_format_batches(&batches)?);
        return Ok(());
    };
    let folder = Location::create(output, &engine.ctx.runtime_env())?;
    let schema = df.schema().inner().clone();
    let mut stream = df.execute_stream().await?;
    let mut writer = PartWriter::create(folder, schema).await?;
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows();
        writer.write(&batch).await?;
    }
    let files = writer.finish().await?;
    println!("{rows} rows -> {output} ({} file{})", files.len(), if files.len() == 1 { "" } else { "s" });
    Ok(())
}

/// `part-NNNNN.parquet`: a file of a `fruits sql` result.
fn is_part_name(name: &str) -> bool {
    name.strip_prefix("part-")
        .and_then(|rest| rest.strip_suffix(".parquet"))
        .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Streams batches into `part-00000.parquet`, `part-00001.parquet`, ... in one folder.
struct PartWriter {
    folder: Location,
    schema: SchemaRef,
    current: Option<(AsyncArrowWriter<BufWriter>, usize)>,
    files: Vec<String>,
}

impl PartWriter {
    /// Starts writing into `folder`, which must be empty or hold only an earlier `fruits sql`
    /// result (its `part-NNNNN.parquet` files, which are replaced): nothing else is ever
    /// deleted.
    async fn create(folder: Location, schema: SchemaRef) -> Result<Self> {
        let objects = folder.list().await?;
        let foreign: Vec<String> = objects
            .iter()
            .filter_map(|object| folder.relative_name(&object.location))
            .filter(|name| !is_part_name(name))
            .collect();
        if let Some(first) = foreign.first() {
            bail!(
                "{} holds {} file{} that `fruits sql` did not write ({first}{}); write into an empty or new folder",
                folder.url(),
                foreign.len(),
                if foreign.len() == 1 { "" } else { "s" },
                if foreign.len() > 1 { ", ..." } else { "" }
            );
        }
        for object in &objects {
            folder.delete_path(&object.location).await?;
        }
        Ok(Self { folder, schema, current: None, files: Vec::new() })
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.open_next()?;
            }
            let Some((writer, rows)) = &mut self.current else { bail!("no Parquet part is open") };
            let take = (ROWS_PER_FILE - *rows).min(batch.num_rows() - offset);
            writer.write(&batch.slice(offset, take)).await.context("cannot write Parquet")?;
            *rows += take;
            offset += take;
            if *rows == ROWS_PER_FILE {
                self.close_current().await?;
            }
        }
        Ok(())
    }

    /// Closes the last part and returns the URL of every file written. An empty result still
    /// gets one (empty) file, so readers find the schema.
    async fn finish(mut self) -> Result<Vec<String>> {
        if self.current.is_none() && self.files.is_empty() {
            self.open_next()?;
        }
        self.close_current().await?;
        Ok(self.files)
    }

    fn open_next(&mut self) -> Result<()> {
        let name = format!("part-{:05}.parquet", self.files.len());
        let writer = AsyncArrowWriter::try_new(
            self.folder.upload(&name),
            self.schema.clone(),
            Some(parquet_writer_properties()),
        )?;
        self.files.push(self.folder.child_url(&name));
        self.current = Some((writer, 0));
        Ok(())
    }

    async fn close_current(&mut self) -> Result<()> {
        if let Some((writer, _)) = self.current.take() {
            let file = self.files.last().map_or("", String::as_str);
            writer.close().await.with_context(|| format!("cannot finish {file}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_part_name;

    #[test]
    fn only_our_part_files_count_as_an_earlier_result() {
        assert!(is_part_name("part-00000.parquet") && is_part_name("part-00123.parquet"));
        for other in
            ["part-0.parquet", "part-00000.parquet.bak", "keep/x.txt", "sub/part-00000.parquet", "data.parquet"]
        {
            assert!(!is_part_name(other), "{other}");
        }
    }
}
