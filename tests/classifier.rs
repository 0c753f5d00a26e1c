//! `fruits train` and `fruits predict` on the sample, and the ONNX file an app ships: run with
//! ONNX Runtime in this process, it must give what `fruits predict` prints.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::OnceLock;

use fruits_classifier::{Manifest, run_classifier};
use fruits_udfs::{DecodeLimits, decode_rgb, inference_session, input_spec, resize_bicubic};
use tempfile::TempDir;

use crate::support::*;

/// The sample featurized and a classifier trained on it, once for the suite.
fn trained() -> &'static (TempDir, serde_json::Value, PathBuf) {
    static TRAINED: OnceLock<(TempDir, serde_json::Value, PathBuf)> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let (summary, classifier) = train_on_sample(dir.path());
        (dir, summary, classifier)
    })
}

fn read_json(path: PathBuf) -> serde_json::Value {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn train_on_the_sample_writes_an_accurate_model_that_rejects_left_out_fruits() {
    let (_, summary, dir) = trained();
    for file in ["fruits-classifier.onnx", "model.json", "head.json", "metrics.json", "confusion.png"] {
        let size = std::fs::metadata(dir.join(file)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{file} is missing or empty in {}", dir.display());
    }
    assert!(!dir.join(fruits_udfs::LEASE_FILE).exists(), "the lease is released after training");
    let metrics = read_json(dir.join("metrics.json"));
    let accuracy = metrics["accuracy"].as_f64().expect("metrics.json has the accuracy");
    assert!(accuracy >= 0.99, "held-out accuracy {accuracy}");
    assert_eq!(summary["accuracy"].as_f64(), Some(accuracy), "--json reports metrics.json's accuracy");
    let validation = metrics["validation_rows"].as_u64().expect("validation rows");
    assert!((800..=1200).contains(&validation), "{validation} validation rows for a 0.2 split of 4835");
    assert_eq!(summary["rows"], 4835);
    assert_eq!(summary["rows_without_features"], 0);

    let manifest: Manifest = serde_json::from_value(read_json(dir.join("model.json"))).expect("model.json");
    let labels: Vec<&str> = SAMPLE_COUNTS.iter().map(|(label, _)| *label).collect();
    assert_eq!(manifest.labels, labels);
    assert_eq!(summary["unknown_threshold"].as_f64(), Some(f64::from(manifest.unknown_threshold)));

    // The default leave-out: the 5 disjoint pairs, every label held out once.
    let leave_out = &summary["leave_out"];
    assert_eq!(leave_out["rows"].as_array().map(Vec::len), Some(5), "{leave_out}");
    let shipped = summary["unknown_score"].as_str().expect("unknown score");
    let score = leave_out["summary"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["score"] == shipped))
        .unwrap_or_else(|| panic!("no leave-out summary of {shipped}: {leave_out}"));
    let auroc = score["mean_auroc"].as_f64().expect("mean AUROC");
    assert!(auroc >= 0.95, "{shipped}: mean leave-classes-out AUROC {auroc}");
    // Several scores were measured and the best one ships, with its threshold in the model.
    let measured = leave_out["summary"].as_array().map_or(0, Vec::len);
    assert!(measured >= 5, "{measured} scores measured: {leave_out}");
    assert_eq!(leave_out["summary"][0]["score"], shipped, "the best mean AUROC ships");
    assert_eq!(manifest.unknown_score, shipped);
    assert_eq!(metrics["unknown"]["score"], shipped);
    let kept = metrics["unknown"]["kept"].as_f64().expect("kept share");
    assert!(kept >= 0.95, "the threshold keeps {kept} of the known validation images");
    assert!(
        summary["onnx_bytes"].as_u64().unwrap_or(0) > 1_000_000 && summary["latency_ms_per_image"].as_f64() > Some(0.0)
    );
}

#[test]
fn the_onnx_file_gives_what_fruits_predict_prints() {
    let (_, _, dir) = trained();
    let images: Vec<PathBuf> =
        ["Apple Golden 1/0_100.jpg", "Banana/0_100.jpg", "Pear/0_100.jpg", "Watermelon/0_100.jpg"]
            .iter()
            .map(|file| sample_dir().join(file))
            .collect();
    let (model_dir, backbone) = (dir.display().to_string(), model_path().display().to_string());
    let files: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let mut args = vec!["predict", "--model", &model_dir, "--backbone", &backbone, "--json"];
    args.extend(files.iter().map(String::as_str));
    let predicted = fruits(&args);
    assert_success(&predicted);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&predicted.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), images.len());

    // The composed file, as an app runs it: model.json's preprocessing, then one inference.
    let manifest: Manifest = serde_json::from_value(read_json(dir.join("model.json"))).expect("model.json");
    let spec = input_spec(&manifest.preprocessing).expect("a preprocessing fruits implements");
    let per_image = spec.values_per_image();
    let mut tensor = vec![0.0; images.len() * per_image];
    for (image, slot) in images.iter().zip(tensor.chunks_exact_mut(per_image)) {
        let decoded =
            decode_rgb(&std::fs::read(image).expect("sample image"), &DecodeLimits::default()).expect("decode");
        spec.write_tensor(&resize_bicubic(&decoded, spec.width, spec.height), slot);
    }
    let onnx = std::fs::read(dir.join(&manifest.model_file)).expect("the ONNX file");
    let mut session = inference_session(&onnx, None, NonZeroUsize::MIN).expect("a session on the ONNX file");
    let [_, a, b, c] = spec.shape(1);
    let out = run_classifier(&mut session, &manifest.input.name, [a, b, c], &tensor, images.len()).expect("inference");

    let classes = manifest.labels.len();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["file"], files[i].as_str());
        let probabilities = &out.probabilities[i * classes..(i + 1) * classes];
        let top = line["top"].as_array().expect("top labels");
        assert_eq!(top.len(), 3, "{line}");
        let best = (0..classes).fold(0, |best, c| if probabilities[c] > probabilities[best] { c } else { best });
        assert_eq!(top[0]["label"], manifest.labels[best].as_str(), "{}: {line} vs {probabilities:?}", files[i]);
        let folder = images[i].parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).expect("folder");
        assert_eq!(top[0]["label"], folder, "{line}");
        for ranked in top {
            let label = ranked["label"].as_str().expect("label");
            let index = manifest.labels.iter().position(|l| l == label).expect("a known label");
            let printed = ranked["probability"].as_f64().expect("probability");
            let onnx = f64::from(probabilities[index]);
            assert!((printed - onnx).abs() <= 1e-4, "{}: {label} {printed} vs ONNX {onnx}", files[i]);
        }
        let (printed, onnx) = (line["unknown_score"].as_f64().expect("score"), f64::from(out.unknown_score[i]));
        assert!((printed - onnx).abs() <= 1e-4, "{}: unknown score {printed} vs ONNX {onnx}", files[i]);
        assert_eq!(line["unknown"], onnx > f64::from(manifest.unknown_threshold), "{line}");
    }
}

#[test]
fn predict_reports_every_bad_file_and_fails_after_the_last() {
    let (_, _, dir) = trained();
    let scratch = tempfile::tempdir().expect("temp dir");
    let broken = scratch.path().join("broken.jpg");
    std::fs::write(&broken, b"not an image").expect("write");
    let (model_dir, backbone) = (dir.display().to_string(), model_path().display().to_string());
    let good = sample_dir().join("Pear/0_100.jpg").display().to_string();
    let (broken, missing) = (broken.display().to_string(), scratch.path().join("none.jpg").display().to_string());
    let output = fruits(&["predict", "--model", &model_dir, "--backbone", &backbone, &broken, &good, &missing]);
    assert_eq!(output.status.code(), Some(1));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("{good}: Pear ")), "{stdout}");
    assert!(
        stderr.contains(&format!("{broken}: ")) && stderr.contains(&format!("{missing} does not exist")),
        "{stderr}"
    );
    assert!(stderr.contains("2 of 3 images could not be predicted"), "{stderr}");

    // SQL on the embedded engine: `predict` with --classifier, a clear error without.
    let sample = sample_dir().join("Pear").display().to_string();
    let query = "SELECT count(*) AS n FROM images WHERE predict(content)['label'] = 'Pear'";
    let with = fruits(&["sql", "--input", &sample, "--model", &backbone, "--classifier", &model_dir, query]);
    assert_success(&with);
    let printed = String::from_utf8_lossy(&with.stdout);
    let pears = printed.lines().find_map(|l| l.trim().trim_matches('|').trim().parse::<u64>().ok());
    assert!(pears.is_some_and(|n| n >= 487), "99 % of the 492 pears are pears:\n{printed}");
    let without = fruits(&["sql", "--input", &sample, "--model", &backbone, query]);
    assert_eq!(without.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("has no classifier: start it with --classifier"), "{stderr}");
}
