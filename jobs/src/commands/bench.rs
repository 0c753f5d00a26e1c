//! `fruits bench`: how close the job comes to ONNX Runtime's limit, measured in one run on this
//! machine.
//!
//! Four figures with the same model, sessions, threads and batch: Python onnxruntime on ready
//! tensors (the reference's own runtime, when a Python with it is set up), fruits' own sessions
//! on the same tensors, decode+resize+scale alone, and the featurize job (list, read, decode,
//! infer, write Parquet). The limit is the better of the two ready-tensor rates; the job's
//! share of it says what the engine, I/O and preprocessing cost on top of inference.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use datafusion::arrow::array::AsArray;
use fruits_udfs::{FeaturesDir, IMAGES_TABLE, Location, ModelConfig, Parallelism, RunId};
use serde::{Deserialize, Serialize};

use crate::cli::BenchArgs;
use crate::engine::Engine;
use crate::featurize;
use crate::python;

/// Preprocessed images the ready-tensor measurements cycle through (at least one batch).
const TENSORS: usize = 16;

/// Measures Python onnxruntime's rate (`bench_ort.py`).
const PYTHON_SCRIPT: (&str, &str) = ("bench_ort.py", include_str!("bench_ort.py"));

/// What `fruits bench` measured, printed as text or, with `--json`, as one line.
#[derive(Debug, Serialize)]
pub struct BenchSummary {
    pub model: String,
    pub model_fingerprint: String,
    /// Images the featurize job read.
    pub images: usize,
    pub sessions: usize,
    pub threads_per_session: usize,
    pub batch: usize,
    /// Python onnxruntime on ready tensors, or why it was not measured.
    pub python: PythonRate,
    /// fruits' own ONNX Runtime sessions on the same tensors.
    pub raw_images_per_second: f64,
    /// Decode, resize and scale alone, one thread per session.
    pub preprocess_images_per_second: f64,
    /// The featurize job, end to end.
    pub job_images_per_second: f64,
    pub job_seconds: f64,
    /// The better of the two ready-tensor rates.
    pub limit_images_per_second: f64,
    /// `job_images_per_second / limit_images_per_second`.
    pub job_of_limit: f64,
}

/// Python onnxruntime's rate on the ready tensors.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PythonRate {
    Measured(PythonReport),
    /// No Python with onnxruntime is set up, or it failed: the limit is fruits' own rate.
    NotMeasured {
        why: String,
    },
}

/// What `bench_ort.py` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PythonReport {
    pub onnxruntime: String,
    pub images_per_second: f64,
}

pub async fn run(args: &BenchArgs, text: bool) -> Result<BenchSummary> {
    ensure!(
        args.engine.scheduler.is_none(),
        "fruits bench measures the embedded engine; scripts/bench-cluster.sh compares it with a cluster"
    );
    let engine = Engine::start(&args.engine, &args.model).await?;
    engine.register_images(&args.input.input, args.input.scan_options(), None)?;
    let images = sample(&engine, args.sample).await?;
    ensure!(!images.is_empty(), "no images under {}", args.input.input);
    let featurizer = engine.featurizer().context("the embedded engine has a model")?;
    let config = featurizer.config();
    let parallelism = featurizer.parallelism();
    let sessions = parallelism.sessions();
    let per_image = config.input.values_per_image();
    let batch = config.max_batch;
    if text {
        println!(
            "fruits bench: {} sessions x {} threads, batch {batch}, model {}",
            sessions,
            parallelism.threads_per_session(),
            config.model_path.display()
        );
    }

    // Decode + resize + scale, one thread per session, as the tasks do.
    let duration = Duration::from_secs(args.seconds);
    let preprocess_rate = per_thread_rate(duration, sessions, |thread, deadline| {
        let mut tensor = vec![0f32; per_image];
        let mut done = 0;
        for bytes in images.iter().skip(thread).step_by(sessions).cycle() {
            if Instant::now() >= deadline {
                break;
            }
            if featurizer.preprocess_into(bytes, &mut tensor).is_ok() {
                done += 1;
            }
        }
        done
    });

    // The ready tensors both runtimes cycle through, whole batches of them.
    let wanted = TENSORS.max(batch);
    let mut tensors = Vec::with_capacity(wanted * per_image);
    let mut tensor = vec![0f32; per_image];
    for bytes in &images {
        if tensors.len() == wanted * per_image {
            break;
        }
        if featurizer.preprocess_into(bytes, &mut tensor).is_ok() {
            tensors.extend_from_slice(&tensor);
        }
    }
    let batches: Vec<&[f32]> = tensors.chunks_exact(batch * per_image).collect();
    ensure!(!batches.is_empty(), "not enough decodable images in the sample for a batch of {batch}");

    let raw_rate = per_thread_rate(duration, sessions, |thread, deadline| {
        let mut done = 0;
        for tensor in batches.iter().cycle().skip(thread) {
            if Instant::now() >= deadline {
                break;
            }
            if featurizer.infer(tensor, batch).is_ok() {
                done += batch;
            }
        }
        done
    });
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let used = batches.len() * batch;
    let python = python_rate(
        args.python.as_deref(),
        config,
        parallelism,
        &tensors[..used * per_image],
        duration,
        scratch.path(),
    );
    if text {
        match &python {
            PythonRate::Measured(rate) => println!(
                "  python onnxruntime {:<8} ready tensors    {:8.1} images/s",
                rate.onnxruntime, rate.images_per_second
            ),
            PythonRate::NotMeasured { why } => println!("  python onnxruntime: not measured ({why})"),
        }
        println!("  fruits' onnxruntime, ready tensors     {raw_rate:8.1} images/s");
        println!("  decode + resize + scale                {preprocess_rate:8.1} images/s");
    }

    // The whole job, into the scratch folder: written and never committed.
    let scratch = scratch.path().to_str().context("scratch folder path is not UTF-8")?;
    let output = Location::create(scratch, &engine.ctx.runtime_env())?;
    let features = FeaturesDir::new(output.child(featurize::FEATURES_DIR)?);
    let run = RunId::new();
    let started = Instant::now();
    let model = featurize::model_fingerprint(&engine).await?;
    let work = featurize::list(&engine, &args.input.input, &features, &run, |_, _| true).await?;
    let job = featurize::run(&engine, &args.input, &work, &features, &run, &model, false, true).await?;
    let job_seconds = started.elapsed().as_secs_f64();
    let images = job.manifest.rows as usize;
    let job_rate = images as f64 / job_seconds;

    let limit = match &python {
        PythonRate::Measured(rate) => rate.images_per_second.max(raw_rate),
        PythonRate::NotMeasured { .. } => raw_rate,
    };
    let summary = BenchSummary {
        model: config.model_path.display().to_string(),
        model_fingerprint: model,
        images,
        sessions,
        threads_per_session: parallelism.threads_per_session(),
        batch,
        python,
        raw_images_per_second: raw_rate,
        preprocess_images_per_second: preprocess_rate,
        job_images_per_second: job_rate,
        job_seconds,
        limit_images_per_second: limit,
        job_of_limit: job_rate / limit,
    };
    if text {
        println!("  featurize job, {images} images          {job_rate:8.1} images/s  ({job_seconds:.1} s)");
        println!("  job / limit (the better ready-tensor rate)  {:.3}", summary.job_of_limit);
    }
    Ok(summary)
}

/// Python onnxruntime's rate on `tensors` with the featurizer's sessions, threads and batch, or
/// why it could not be measured (no Python with onnxruntime is not an error of the bench).
fn python_rate(
    python: Option<&Path>,
    config: &ModelConfig,
    parallelism: Parallelism,
    tensors: &[f32],
    duration: Duration,
    scratch: &Path,
) -> PythonRate {
    let measure = || -> Result<PythonReport> {
        let python = python::locate(python, "import onnxruntime, numpy")
            .map_err(|e| anyhow::anyhow!("{e}; {}", python::SETUP))?;
        let file = scratch.join("tensors.npy");
        let n = tensors.len() / config.input.values_per_image();
        python::write_npy(&file, &config.input.shape(n), tensors)?;
        let args = [
            "--model".into(),
            config.model_path.clone().into_os_string(),
            "--tensors".into(),
            file.into_os_string(),
            "--input-name".into(),
            config.input_name.clone().into(),
            "--sessions".into(),
            parallelism.sessions().to_string().into(),
            "--threads".into(),
            parallelism.threads_per_session().to_string().into(),
            "--batch".into(),
            config.max_batch.to_string().into(),
            "--seconds".into(),
            duration.as_secs_f64().to_string().into(),
        ];
        python::run_script(&python, scratch, PYTHON_SCRIPT, args, "Python onnxruntime's measurement")
    };
    match measure() {
        Ok(report) => PythonRate::Measured(report),
        Err(e) => PythonRate::NotMeasured { why: format!("{e:#}") },
    }
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

/// Runs `work(thread, deadline)` on `threads` threads at once, each working until `duration`
/// from now (long-lived threads, as the tasks' are); returns the items they report per second.
fn per_thread_rate(duration: Duration, threads: usize, work: impl Fn(usize, Instant) -> usize + Sync) -> f64 {
    let work = &work;
    let started = Instant::now();
    let deadline = started + duration;
    let done = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|t| scope.spawn(move || work(t, deadline))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum::<usize>()
    });
    done as f64 / started.elapsed().as_secs_f64()
}
