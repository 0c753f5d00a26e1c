//! `fruits bench`: where the time goes, measured in one run on this machine.
//!
//! Three figures with the same model, sessions and threads: the raw model on ready tensors
//! (the ceiling), decode+resize+scale alone, and the whole `fruits run`. Their ratio says how
//! much the engine, I/O and preprocessing cost on top of inference.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use datafusion::arrow::array::AsArray;
use fruits_udfs::{FeaturesDir, IMAGES_TABLE, Location, RunId};

use crate::cli::BenchArgs;
use crate::engine::Engine;
use crate::featurize;

/// Each micro-measurement repeats its work for at least this long.
const MIN_DURATION: Duration = Duration::from_secs(5);

pub async fn run(args: &BenchArgs) -> Result<()> {
    ensure!(
        args.engine.scheduler.is_none(),
        "fruits bench measures the embedded engine; scripts/bench-cluster.sh compares it with a cluster"
    );
    let slots = args.engine.slots();
    let engine = Engine::start(&args.engine, &args.model).await?;
    engine.register_images(&args.input.input, args.input.scan_options(), None)?;

    let images = sample(&engine, args.sample).await?;
    ensure!(!images.is_empty(), "no images under {}", args.input.input);
    let featurizer = engine.featurizer().context("the embedded engine has a model")?;
    let config = featurizer.config();
    let per_image = config.input.values_per_image();
    // Every decodable sample image preprocessed once, as the tasks do it.
    let preprocess = |bytes: &[u8], out: &mut [f32]| featurizer.preprocess_into(bytes, out).is_ok();

    // Decode + resize + scale, one thread per task slot, as the tasks do.
    let decode_rate = per_thread_rate(
        slots,
        |thread, count| {
            let mut tensor = vec![0f32; per_image];
            let mut done = 0;
            for bytes in images.iter().skip(thread).step_by(slots).cycle().take(count) {
                if preprocess(bytes, &mut tensor) {
                    done += 1;
                }
            }
            done
        },
        images.len().div_ceil(slots),
    )?;

    // The raw model on ready tensors: every slot runs full batches through its own session.
    let batch = config.max_batch.min(images.len());
    let mut tensor = vec![0f32; batch * per_image];
    let mut filled = 0;
    for bytes in &images {
        if filled == batch {
            break;
        }
        if preprocess(bytes, &mut tensor[filled * per_image..(filled + 1) * per_image]) {
            filled += 1;
        }
    }
    ensure!(filled == batch, "not enough decodable images in the sample for a batch of {batch}");
    let raw_rate = per_thread_rate(
        slots,
        |_, count| {
            let mut done = 0;
            while done < count {
                if featurizer.infer(&tensor, batch).is_ok() {
                    done += batch;
                }
            }
            done
        },
        batch.max(64),
    )?;

    // The whole job, into a scratch folder.
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let scratch = scratch.path().to_str().context("scratch folder path is not UTF-8")?;
    let output = Location::create(scratch, &engine.ctx.runtime_env())?;
    // Written and never committed: the scratch folder goes away with the figures printed.
    let features = FeaturesDir::new(output.child(featurize::FEATURES_DIR)?);
    let run = RunId::new();
    let started = Instant::now();
    let model = featurize::model_fingerprint(&engine).await?;
    let work = featurize::list(&engine, &args.input.input, &features, &run, |_, _| true).await?;
    let job = featurize::run(&engine, &args.input, &work, &features, &run, &model, false, true).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rows = job.manifest.rows;
    let full_rate = rows as f64 / seconds;

    println!("fruits bench: {rows} images, {slots} task slots, batch {batch}");
    println!("  raw model on ready tensors     {raw_rate:8.1} images/s");
    println!("  decode + resize + scale        {decode_rate:8.1} images/s");
    println!("  full fruits run                {full_rate:8.1} images/s  ({seconds:.1} s)");
    println!("  full run / raw model           {:8.3}", full_rate / raw_rate);
    Ok(())
}

/// The first `n` images' bytes, read through the engine like the job reads them.
async fn sample(engine: &Engine, n: usize) -> Result<Vec<Vec<u8>>> {
    let query = format!("SELECT content FROM {IMAGES_TABLE} ORDER BY path LIMIT {n}");
    let batches = engine.ctx.sql(&query).await?.collect().await?;
    Ok(batches
        .iter()
        .flat_map(|b| b.column(0).as_binary::<i32>().iter().flatten().map(<[u8]>::to_vec).collect::<Vec<_>>())
        .collect())
}

/// Runs `work(thread, count)` on `threads` threads at once, repeating rounds of `count` items
/// until [`MIN_DURATION`] has passed; returns items per second over all threads.
fn per_thread_rate(threads: usize, work: impl Fn(usize, usize) -> usize + Sync, count: usize) -> Result<f64> {
    let work = &work;
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed() < MIN_DURATION {
        done += std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|t| scope.spawn(move || work(t, count))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum::<usize>()
        });
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
