//! Running the composed model with ONNX Runtime, for parity checks and the latency `fruits
//! train` reports. The caller owns the process's one ONNX Runtime environment and passes a
//! session built from it: this crate never initialises the runtime.

use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::TensorRef;

use crate::error::{ClassifierError, Result};
use crate::onnx::{PROBABILITIES, UNKNOWN_SCORE};
use crate::rng::SplitMix64;

/// The composed model's outputs for a batch, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierOutputs {
    /// `[n, classes]`.
    pub probabilities: Vec<f32>,
    /// `[n]`.
    pub unknown_score: Vec<f32>,
    /// `[n, dim]` when the model kept the backbone's output named `features`.
    pub features: Option<Vec<f32>>,
}

fn runtime_error(what: &str) -> impl Fn(ort::Error) -> ClassifierError + '_ {
    move |e| ClassifierError::Runtime { what: what.to_owned(), message: e.to_string() }
}

/// Runs the composed model on `n` preprocessed images, `images` laid out as
/// `[n, image_shape...]` (e.g. `[224, 224, 3]`), fed to the input `input_name`.
pub fn run_classifier(
    session: &mut Session,
    input_name: &str,
    image_shape: [usize; 3],
    images: &[f32],
    n: usize,
) -> Result<ClassifierOutputs> {
    let [a, b, c] = image_shape;
    if images.len() != n * a * b * c {
        return Err(ClassifierError::Runtime {
            what: "input".into(),
            message: format!("{} values for {n} images of {a}x{b}x{c}", images.len()),
        });
    }
    let input = TensorRef::from_array_view(([n, a, b, c], images)).map_err(runtime_error("input tensor"))?;
    let outputs = session.run(ort::inputs![input_name => input]).map_err(runtime_error("inference"))?;
    let extract = |name: &str| -> Result<Option<Vec<f32>>> {
        match outputs.get(name) {
            None => Ok(None),
            Some(value) => {
                let (_, values) = value.try_extract_tensor::<f32>().map_err(runtime_error(name))?;
                Ok(Some(values.to_vec()))
            }
        }
    };
    let missing = |name: &str| ClassifierError::Runtime { what: name.to_owned(), message: "no such output".into() };
    Ok(ClassifierOutputs {
        probabilities: extract(PROBABILITIES)?.ok_or_else(|| missing(PROBABILITIES))?,
        unknown_score: extract(UNKNOWN_SCORE)?.ok_or_else(|| missing(UNKNOWN_SCORE))?,
        features: extract("features")?,
    })
}

/// Inference time per image of a session at `batch` images per call: the median of `runs`
/// timed calls after one warm-up, on seeded random inputs in [-1, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub batch: usize,
    pub runs: usize,
    pub per_image: Duration,
}

pub fn measure_latency(
    session: &mut Session,
    input_name: &str,
    image_shape: [usize; 3],
    batch: usize,
    runs: usize,
) -> Result<Latency> {
    let (batch, runs) = (batch.max(1), runs.max(1));
    let mut rng = SplitMix64::new(0x01a7_e2c1);
    let values = batch * image_shape.iter().product::<usize>();
    let images: Vec<f32> = (0..values).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
    let [a, b, c] = image_shape;
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let input =
            TensorRef::from_array_view(([batch, a, b, c], images.as_slice())).map_err(runtime_error("input tensor"))?;
        let start = Instant::now();
        session.run(ort::inputs![input_name => input]).map_err(runtime_error("inference"))?;
        if i > 0 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    Ok(Latency { batch, runs, per_image: times[times.len() / 2] / batch as u32 })
}
