//! `fruits quantize`: an int8 model calibrated on a small sample of the images, its fidelity
//! against the fp32 model, and `fruits run` with it: its own fingerprint, never mixed with fp32
//! features. Needs the quantize venv (`make setup-quantize`, part of `make test`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fruits_udfs::{Featurizer, ModelConfig, Parallelism};
use tempfile::TempDir;

use crate::support::*;

/// Calibration images of the suite: few, to stay fast (the default is 200).
const CALIBRATION_IMAGES: usize = 40;

/// The sample's model quantized once for the suite: the folder holding `int8.onnx`, and the
/// `--json` summary.
fn quantized() -> &'static (TempDir, serde_json::Value) {
    static QUANTIZED: OnceLock<(TempDir, serde_json::Value)> = OnceLock::new();
    QUANTIZED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = dir.path().join("models/int8.onnx");
        let quantize = quantize(&sample_dir(), &output, &[]);
        assert_success(&quantize);
        (dir, last_json_line(&quantize.stdout))
    })
}

fn int8_model() -> PathBuf {
    quantized().0.path().join("models/int8.onnx")
}

/// `fruits quantize --json` of the sample model calibrated on `calibrate`, with `envs` set.
fn quantize(calibrate: &Path, output: &Path, envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(binary("fruits"));
    command.args(["quantize", "--json", "--calibration-images", &CALIBRATION_IMAGES.to_string()]);
    command.arg("--model").arg(model_path()).arg("--calibrate").arg(calibrate).arg("--output").arg(output);
    for (name, value) in envs {
        command.env(name, value);
    }
    command.output().expect("cannot start fruits")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn quantize_writes_an_int8_model_close_to_fp32() {
    let (_, summary) = quantized();
    let path = int8_model();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let fp32_size = std::fs::metadata(model_path()).expect("model").len();
    assert!(size > 0 && size < fp32_size / 2, "int8 model of {size} bytes against {fp32_size} fp32");
    assert!(!path.with_extension("onnx.part").exists(), "no partial file is left");

    // A model fruits runs, with the fp32 model's input and output.
    let int8 =
        Featurizer::load(ModelConfig::new(&path), Parallelism::one_session_on_all_cores()).expect("a valid model");
    assert_eq!(int8.feature_dim(), 1280);
    assert_eq!(summary["output_fingerprint"], int8.fingerprint());
    assert_ne!(summary["output_fingerprint"], summary["model_fingerprint"]);

    assert_eq!(summary["calibration_images"], CALIBRATION_IMAGES);
    assert_eq!(summary["listed"], 4835);
    assert_eq!(summary["tool"]["calibration_images"], CALIBRATION_IMAGES);
    let (median, min) = (summary["cosine"]["median"].as_f64(), summary["cosine"]["min"].as_f64());
    assert!(median >= Some(0.9), "median cosine {median:?}: {summary}");
    assert!(min >= Some(0.8), "min cosine {min:?}: {summary}");

    // The linear probe, for both models: same folds, same training.
    for probe in ["probe_fp32", "probe_int8"] {
        let report = &summary[probe];
        assert_eq!(report["folds"], 5, "{probe}: {summary}");
        assert_eq!(report["rows"], CALIBRATION_IMAGES, "{probe}");
        let accuracy = report["accuracy"].as_f64().unwrap_or_else(|| panic!("{probe} has no accuracy: {summary}"));
        assert!(accuracy >= 0.7, "{probe} accuracy {accuracy} on 10 well separated fruits");
    }
}

#[test]
fn an_int8_run_has_its_own_fingerprint_and_never_mixes_with_fp32_features() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in");
    copy_sample_images(&input, "Banana", 4);
    copy_sample_images(&input, "Pear", 4);
    let (input, out) = (input.display().to_string(), dir.path().join("out"));
    let run = |model: &Path| {
        let model = model.display().to_string();
        let args = ["run", "--input", &input, "--output", &out.display().to_string(), "--model", &model, "--no-pca"];
        let output = fruits(&[&args[..], &["--json"]].concat());
        assert_success(&output);
        (last_summary(&output.stdout), read_committed(&out.join("features")))
    };

    let (_, fp32) = run(&model_path());
    let (summary, int8) = run(&int8_model());
    let fingerprint = |committed: &Committed| committed.manifest.model.clone().expect("the manifest names its model");
    assert_ne!(fingerprint(&int8), fingerprint(&fp32));
    assert_eq!(quantized().1["output_fingerprint"], fingerprint(&int8));

    // Over the fp32 result the int8 model featurizes everything again, and says why.
    assert_eq!(summary.incremental, None);
    assert_eq!(summary.featurized_this_run, 8);
    let reason = summary.full_run_reason.expect("a full run over another model's result says why");
    assert!(reason.contains("another model") && reason.contains(&fingerprint(&int8)), "{reason}");
    let paths: std::collections::BTreeSet<&str> = int8.rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!((int8.rows.len(), paths.len()), (8, 8), "every image once");
    let written = read_summary(&out);
    assert_eq!(written.full_run_reason.as_deref(), Some(reason.as_str()), "summary.json says it too");

    // Its features are the int8 model's: close to the fp32 ones, not the same.
    let fp32_features: std::collections::HashMap<&str, &[f32]> =
        fp32.rows.iter().map(|r| (r.path.as_str(), r.features.as_deref().expect("features"))).collect();
    for row in &int8.rows {
        let cosine = cosine(fp32_features[row.path.as_str()], row.features.as_deref().expect("features"));
        assert!(cosine > 0.8 && cosine < 0.99999, "{}: {cosine}", row.path);
    }

    // Run again with the int8 model: now incremental, nothing to do.
    let (again, _) = run(&int8_model());
    assert_eq!(again.featurized_this_run, 0, "{:?}", again.full_run_reason);
    assert_eq!(again.incremental.map(|i| i.unchanged), Some(8));
}

#[test]
fn calibrating_on_a_folder_without_images_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("photos");
    std::fs::create_dir_all(empty.join("Banana")).expect("mkdir");
    std::fs::write(empty.join("Banana/notes.txt"), "not an image").expect("write");
    let output = dir.path().join("int8.onnx");
    let failed = quantize(&empty, &output, &[]);
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("no images under"), "{}", stderr(&failed));
    assert!(!output.exists());
}

#[test]
fn a_missing_quantization_tool_names_its_set_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("int8.onnx");
    let input = dir.path().join("in");
    copy_sample_images(&input, "Banana", 2);
    // No venv in this cache folder, and none given.
    let mut command = Command::new(binary("fruits"));
    command.args(["quantize", "--model"]).arg(model_path()).arg("--calibrate").arg(&input).arg("--output").arg(&output);
    let failed =
        command.env("FRUITS_CACHE_DIR", dir.path()).env_remove("FRUITS_QUANTIZE_PYTHON").output().expect("fruits");
    assert!(!failed.status.success());
    let message = stderr(&failed);
    assert!(message.contains("make setup-quantize") && message.contains("scripts/setup-quantize.sh"), "{message}");
    assert!(message.contains(&dir.path().join("quantize-venv").display().to_string()), "{message}");
    // A Python that is not there, given explicitly.
    let failed = quantize(&input, &output, &[("FRUITS_QUANTIZE_PYTHON", &dir.path().join("no/python"))]);
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("make setup-quantize"), "{}", stderr(&failed));
    assert!(!output.exists());

    // Writing over the fp32 model is refused before anything runs.
    let failed = quantize(&input, &model_path(), &[]);
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("is the model itself"), "{}", stderr(&failed));
}
