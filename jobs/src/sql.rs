//! `fruits sql`: any query against `images`.

use std::path::Path;

use anyhow::Result;
use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::StreamExt;

use crate::engine::Engine;
use crate::output::PartWriter;

/// Runs `query`; prints the result, or writes it as Parquet into the folder `output`.
pub async fn run(engine: &Engine, query: &str, output: Option<&Path>) -> Result<()> {
    let df = engine.ctx.sql(query).await?;
    match output {
        None => {
            let batches = df.collect().await?;
            println!("{}", pretty_format_batches(&batches)?);
        }
        Some(dir) => {
            let schema = df.schema().inner().clone();
            let mut stream = df.execute_stream().await?;
            let mut writer = PartWriter::create(dir, schema)?;
            let mut rows = 0;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            let files = writer.finish()?;
            println!(
                "{rows} rows -> {} ({} file{})",
                dir.display(),
                files.len(),
                if files.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}
