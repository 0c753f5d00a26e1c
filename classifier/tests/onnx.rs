//! The composed ONNX file through the real ONNX Runtime and the real backbone: the graph must
//! compute what `Model::predict` computes from the backbone's features. Plus, with
//! `--ignored`, the measurements on the real sample's features (see `real_sample`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fruits_classifier::{
    ComposeOptions, HoldOut, LeaveClassesOut, LeaveOutOptions, Metric, Model, Preprocessing, ScoreKind, Space,
    SplitMix64, TrainOptions, Trainer, confusion_png, measure_latency, model_files, read_model_dir, run_classifier,
    write_model_dir,
};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

const IMAGE: [usize; 3] = [224, 224, 3];

fn shared_dir() -> PathBuf {
    std::env::var_os("FRUITS_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

fn backbone_path() -> PathBuf {
    shared_dir().join("models/mobilenetv2_features.onnx")
}

/// The process's one ONNX Runtime environment.
fn environment() -> &'static Environment {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let library = std::env::var_os("FRUITS_ORT_LIBRARY").map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.runtime/onnxruntime/libonnxruntime.so.1.31.1")
        });
        assert!(library.is_file(), "ONNX Runtime not found at {} (run `make setup`)", library.display());
        ort::init_from(&library).unwrap().with_name("fruits-classifier-tests").build().unwrap()
    })
}

fn session(bytes: &[u8], threads: usize) -> Session {
    Session::builder(environment())
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .unwrap()
        .with_intra_threads(threads)
        .unwrap()
        .commit_from_memory(bytes)
        .unwrap()
}

/// Seeded "images" in [-1, 1]: class `c` has a brightness offset and its own stripe period,
/// so the backbone's features of the classes differ and a head trained on them has
/// probabilities that are neither 0 nor 1 on fresh draws.
fn images(class: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let per_image = IMAGE.iter().product::<usize>();
    (0..n * per_image)
        .map(|i| {
            let pixel = (i % per_image) / 3;
            let stripe = if ((pixel % 224) / (4 + 6 * class)).is_multiple_of(2) { 0.4 } else { -0.4 };
            let v = 0.35 * (class as f64 - 1.0) + stripe + 0.5 * (rng.next_f64() * 2.0 - 1.0);
            v.clamp(-1.0, 1.0) as f32
        })
        .collect()
}

fn backbone_features(backbone: &mut Session, images: &[f32], n: usize) -> Vec<f32> {
    let input = TensorRef::from_array_view(([n, IMAGE[0], IMAGE[1], IMAGE[2]], images)).unwrap();
    let outputs = backbone.run(ort::inputs!["input" => input]).unwrap();
    let (_, values) = outputs["features"].try_extract_tensor::<f32>().unwrap();
    values.to_vec()
}

/// Trains on the backbone's features of 3 x 12 seeded images.
fn trained_on_backbone(backbone: &mut Session, score: ScoreKind) -> Model {
    let mut rows = Vec::new();
    for class in 0..3 {
        let batch = images(class, 12, 100 + class as u64);
        let features = backbone_features(backbone, &batch, 12);
        for (i, f) in features.chunks_exact(1280).enumerate() {
            rows.push((format!("synthetic/{class}/{i}.jpg"), format!("class {class}"), f.to_vec()));
        }
    }
    // A strong penalty keeps the probabilities of fresh draws away from 0 and 1.
    let options = TrainOptions { score, validation_fraction: 0.25, l2: 0.05, ..TrainOptions::default() };
    let mut trainer = Trainer::new(options).unwrap();
    while trainer.next_pass().is_some() {
        for (key, label, f) in &rows {
            trainer.feed_row(key, label, f).unwrap();
        }
        trainer.end_pass().unwrap();
    }
    trainer.finish().unwrap().model
}

#[test]
fn composed_model_matches_rust_prediction() {
    let backbone_bytes = std::fs::read(backbone_path()).expect("the backbone model in ../shared/models");
    let mut backbone = session(&backbone_bytes, 2);
    let kinds = [
        ScoreKind::DEFAULT,
        ScoreKind::MaxSoftmax,
        ScoreKind::Prototypes { space: Space::Raw, metric: Metric::Cosine, per_class: 4 },
        ScoreKind::Prototypes { space: Space::Standardized, metric: Metric::Euclidean, per_class: 2 },
        ScoreKind::Prototypes { space: Space::Raw, metric: Metric::Euclidean, per_class: 1 },
    ];
    // Blends of fresh draws of two classes (between the classes: probabilities neither 0 nor
    // 1), one fresh draw, and pure noise (an "unknown").
    let n = 5;
    let blend = |a: usize, b: usize, w: f32, seed: u64| -> Vec<f32> {
        images(a, 1, seed).iter().zip(images(b, 1, seed + 1)).map(|(x, y)| w * x + (1.0 - w) * y).collect()
    };
    let mut test_images = blend(0, 1, 0.5, 900);
    test_images.extend(blend(1, 2, 0.5, 910));
    test_images.extend(blend(0, 2, 0.4, 920));
    test_images.extend(images(2, 1, 930));
    let mut rng = SplitMix64::new(77);
    test_images.extend((0..IMAGE.iter().product::<usize>()).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32));
    let features = backbone_features(&mut backbone, &test_images, n);

    let dir = tempfile::tempdir().unwrap();
    let mut non_trivial = 0;
    for kind in kinds {
        let model = trained_on_backbone(&mut backbone, kind);
        let files = model_files(&model, &backbone_bytes, &ComposeOptions::default(), Preprocessing::default()).unwrap();
        // The trained head is sure of every image; a softened copy (weights / 20) gives
        // probabilities between 0 and 1 to compare as well.
        let mut softened = model.clone();
        softened.head.weights.iter_mut().chain(&mut softened.head.bias).for_each(|w| *w *= 0.05);
        for (model, soft) in [(&model, false), (&softened, true)] {
            let onnx = if soft {
                model_files(model, &backbone_bytes, &ComposeOptions::default(), Preprocessing::default()).unwrap().onnx
            } else {
                files.onnx.clone()
            };
            let mut composed = session(&onnx, 2);
            let out = run_classifier(&mut composed, "input", IMAGE, &test_images, n).unwrap();
            assert_eq!(out.probabilities.len(), n * 3);
            assert_eq!(out.unknown_score.len(), n);
            let kept = out.features.as_ref().expect("the features output is kept");
            let feature_diff = kept.iter().zip(&features).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(feature_diff < 1e-5, "{kind}: the composed model's features differ by {feature_diff}");

            for i in 0..n {
                let rust = model.predict(&features[i * 1280..(i + 1) * 1280]).unwrap();
                let onnx_p = &out.probabilities[i * 3..(i + 1) * 3];
                for (a, b) in rust.probabilities.iter().zip(onnx_p) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{kind}, image {i}: probabilities {:?} vs {onnx_p:?}",
                        rust.probabilities
                    );
                }
                let onnx_best = (0..3).fold(0, |best, c| if onnx_p[c] > onnx_p[best] { c } else { best });
                assert_eq!(rust.best(), onnx_best, "{kind}, image {i}");
                let (a, b) = (rust.unknown_score, out.unknown_score[i]);
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{kind}, image {i}: unknown_score {a} vs {b}");
                if (b - model.unknown_threshold).abs() > 1e-3 {
                    assert_eq!(rust.unknown, b > model.unknown_threshold, "{kind}, image {i}");
                }
                non_trivial += usize::from(rust.probabilities.iter().any(|&p| p > 0.01 && p < 0.99));
                if std::env::var_os("FRUITS_TEST_VERBOSE").is_some() {
                    println!(
                        "{kind} (softened {soft}) image {i}: {onnx_p:?} score {b} (threshold {})",
                        model.unknown_threshold
                    );
                }
            }
        }

        // The model directory round trip.
        let sub = dir.path().join(kind.to_string());
        write_model_dir(&sub, &files).unwrap();
        let (back, manifest) = read_model_dir(&sub).unwrap();
        assert_eq!(back, model);
        assert_eq!(manifest.labels, ["class 0", "class 1", "class 2"]);
        assert_eq!(manifest.unknown_score, kind.to_string());
        assert_eq!(manifest.input.name, "input");
        let outputs: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["probabilities", "unknown_score", "features"]);
        assert_eq!(std::fs::read(sub.join("fruits-classifier.onnx")).unwrap(), files.onnx);
    }
    // Not every image is classified with certainty: the comparison is of real numbers.
    assert!(non_trivial >= kinds.len(), "only {non_trivial} predictions were not saturated");

    // Without the features output, and with a wrong output name.
    let model = trained_on_backbone(&mut backbone, ScoreKind::DEFAULT);
    let lean = ComposeOptions { keep_features: false, ..ComposeOptions::default() };
    let files = model_files(&model, &backbone_bytes, &lean, Preprocessing::default()).unwrap();
    let out = run_classifier(&mut session(&files.onnx, 1), "input", IMAGE, &test_images, n).unwrap();
    assert!(out.features.is_none());
    let wrong = ComposeOptions { features_output: "logits".into(), ..ComposeOptions::default() };
    let err = model_files(&model, &backbone_bytes, &wrong, Preprocessing::default()).unwrap_err();
    assert!(err.to_string().contains("no output named 'logits'"), "{err}");
    let err = model_files(&model, &backbone_bytes[..1000], &ComposeOptions::default(), Preprocessing::default());
    assert!(err.is_err());
}

/// Reads features dumped as `<prefix>.f32` (little-endian, rows of 1280) and `<prefix>.tsv`
/// (`key\tlabel` per row).
fn read_dump(prefix: &str) -> (Vec<String>, Vec<String>, Vec<f32>) {
    let bytes = std::fs::read(format!("{prefix}.f32")).unwrap();
    let features: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let tsv = std::fs::read_to_string(format!("{prefix}.tsv")).unwrap();
    let (keys, labels) =
        tsv.lines().filter_map(|l| l.split_once('\t')).map(|(k, l)| (k.to_owned(), l.to_owned())).unzip();
    (keys, labels, features)
}

/// The measurements on the real sample: `FRUITS_SAMPLE_FEATURES=/tmp/cls/sample cargo test
/// --release -p fruits-classifier -- --ignored --nocapture real_sample` (features computed
/// outside the repository; the in-repo check runs through `fruits train`).
#[test]
#[ignore]
fn real_sample() {
    let prefix = std::env::var("FRUITS_SAMPLE_FEATURES").expect("FRUITS_SAMPLE_FEATURES=<prefix of .f32/.tsv>");
    let (keys, labels, features) = read_dump(&prefix);
    let dim = features.len() / keys.len();
    let start = std::time::Instant::now();
    let mut trainer =
        Trainer::new(TrainOptions { extra_scores: ScoreKind::candidates(), ..TrainOptions::default() }).unwrap();
    while trainer.next_pass().is_some() {
        trainer.feed_columns(&keys, &labels, &features, dim).unwrap();
        trainer.end_pass().unwrap();
    }
    let trained = trainer.finish().unwrap();
    println!("trained in {:.2} s: {:?}", start.elapsed().as_secs_f64(), trained.metrics.training);
    println!("validation accuracy {} on {} rows", trained.metrics.accuracy, trained.metrics.validation_rows);
    for s in &trained.scores {
        println!("  {:<26} threshold {:.5} kept {:.4}", s.score, s.threshold, s.kept);
    }
    assert!(trained.metrics.accuracy >= 0.99);

    let backbone_bytes = std::fs::read(backbone_path()).unwrap();
    let files =
        model_files(&trained.model, &backbone_bytes, &ComposeOptions::default(), Preprocessing::default()).unwrap();
    println!("fruits-classifier.onnx: {} bytes (backbone {})", files.onnx.len(), backbone_bytes.len());
    let mut composed = session(&files.onnx, 1);
    let latency = measure_latency(&mut composed, "input", IMAGE, 1, 30).unwrap();
    println!("latency, 1 thread, batch 1: {:.2} ms per image", latency.per_image.as_secs_f64() * 1e3);
    let mut backbone = session(&backbone_bytes, 1);
    let latency = measure_latency(&mut backbone, "input", IMAGE, 1, 30).unwrap();
    println!("backbone alone, 1 thread, batch 1: {:.2} ms per image", latency.per_image.as_secs_f64() * 1e3);
    if let Ok(dir) = std::env::var("FRUITS_SAMPLE_OUTPUT") {
        let dir = PathBuf::from(dir);
        write_model_dir(&dir, &files).unwrap();
        std::fs::write(dir.join("metrics.json"), trained.metrics.to_json().unwrap()).unwrap();
        std::fs::write(dir.join("confusion.png"), confusion_png(&trained.metrics.confusion, 1200, 900).unwrap())
            .unwrap();
    }

    let hold_out =
        if std::env::var_os("FRUITS_ALL_PAIRS").is_some() { HoldOut::AllPairs } else { HoldOut::DisjointPairs };
    let start = std::time::Instant::now();
    // FRUITS_KEEP=0.99 asks for a stricter threshold, which separates scores that all reach
    // an AUROC of 1 at the default 0.95.
    let keep_known = std::env::var("FRUITS_KEEP").ok().and_then(|k| k.parse().ok()).unwrap_or(0.95);
    let train = TrainOptions { keep_known, ..TrainOptions::default() };
    let mut eval = LeaveClassesOut::new(LeaveOutOptions { hold_out, train, ..LeaveOutOptions::default() }).unwrap();
    while eval.next_pass().is_some() {
        eval.feed_columns(&keys, &labels, &features, dim).unwrap();
        eval.end_pass().unwrap();
    }
    let report = eval.finish().unwrap();
    println!("leave-classes-out in {:.1} s\n{}", start.elapsed().as_secs_f64(), report.table());
    let default = report.summary.iter().find(|s| s.score == ScoreKind::DEFAULT.to_string()).unwrap();
    assert!(default.mean_auroc >= 0.95, "{default:?}");
}
