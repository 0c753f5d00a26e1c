//! `fruits run` and `fruits sql` on the embedded engine, as a user runs them: the real binary,
//! the real model, the shared sample images.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::*;

fn model() -> String {
    model_path().display().to_string()
}

pub(crate) fn run_job(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let (input, output, model) = (input.display().to_string(), output.display().to_string(), model());
    let mut args = vec!["run", "--input", &input, "--output", &output, "--model", &model];
    args.extend_from_slice(extra);
    fruits(&args)
}

#[test]
fn run_featurizes_the_whole_sample_like_the_reference() {
    let out = tempfile::tempdir().expect("temp dir");
    let output = run_job(&sample_dir(), out.path(), &[]);
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("4835 images from"), "{stdout}");
    assert!(stdout.contains("featurized 4835, failed 0"), "{stdout}");

    let summary = read_summary(out.path());
    assert_eq!((summary.rows_in, summary.rows_out, summary.featurized), (4835, 4835, 4835));
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);

    let Committed { manifest, rows } = read_committed(&out.path().join("features"));
    assert_eq!((manifest.rows, manifest.failed), (4835, 0));
    assert_eq!(manifest.files.iter().map(|f| f.file.clone()).collect::<Vec<_>>(), summary.files);
    assert!(manifest.files.iter().all(|f| f.file.contains(&summary.run_id)), "{manifest:?}");
    assert_eq!(rows.len(), 4835);
    let mut per_label = BTreeMap::new();
    for row in &rows {
        *per_label.entry(row.label.clone().expect("every sample image has a label")).or_insert(0) += 1;
        let features = row.features.as_ref().unwrap_or_else(|| panic!("{} has no features", row.path));
        assert_eq!(features.len(), 1280, "{}", row.path);
        assert!(row.path.starts_with("file:///"), "{}", row.path);
    }
    let expected: BTreeMap<String, usize> = SAMPLE_COUNTS.iter().map(|(l, n)| (l.to_string(), *n)).collect();
    assert_eq!(per_label, expected);

    // Every path is distinct and its label is its folder.
    let paths: std::collections::HashSet<_> = rows.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths.len(), rows.len());
    for row in &rows {
        let folder = row.path.rsplit('/').nth(1).expect("path has a folder");
        assert_eq!(Some(folder), row.label.as_deref());
    }

    // Features agree with Pillow + onnxruntime on the reference images.
    let reference = Reference::load();
    let by_image: BTreeMap<String, &FeatureRow> = rows.iter().map(|r| (label_and_file(&r.path), r)).collect();
    let mut worst = 1.0f64;
    for image in &reference.images {
        let row = by_image.get(&image.path).unwrap_or_else(|| panic!("{} missing from the output", image.path));
        let similarity = cosine(row.features.as_ref().expect("features"), &image.features);
        assert!(similarity >= 0.999, "{}: cosine {similarity}", image.path);
        worst = worst.min(similarity);
    }
    println!(
        "minimum cosine against the Pillow+onnxruntime reference over {} images: {worst:.7}",
        reference.images.len()
    );
}

#[test]
fn bad_files_give_null_features_and_a_report_and_lose_nothing_else() {
    let input = tempfile::tempdir().expect("temp dir");
    copy_sample_images(input.path(), "Banana", 3);
    copy_sample_images(input.path(), "Apple Golden 1", 2);
    let broken = input.path().join("Broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    let jpeg = std::fs::read(sample_dir().join("Banana/0_100.jpg")).expect("read jpeg");
    std::fs::write(broken.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).expect("write");
    std::fs::write(broken.join("empty.jpg"), b"").expect("write");
    std::fs::write(broken.join("text.JPG"), b"this is not an image\n").expect("write");
    std::fs::write(broken.join(".DS_Store"), b"\0\0\0\x01Bud1").expect("write");
    std::fs::write(broken.join("notes.txt"), b"notes").expect("write");

    let out = tempfile::tempdir().expect("temp dir");
    let output = run_job(input.path(), out.path(), &[]);
    assert_success(&output);

    let summary = read_summary(out.path());
    assert_eq!((summary.rows_in, summary.rows_out, summary.featurized), (8, 8, 5), "{summary:?}");
    let failed: BTreeMap<String, String> = summary
        .failed
        .iter()
        .map(|f| (f.path.rsplit('/').next().expect("file name").to_owned(), f.error.clone()))
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed["truncated.jpg"], "truncated JPEG: the data ends before the image does");
    assert_eq!(failed["empty.jpg"], "empty file (0 bytes)");
    assert!(
        failed["text.JPG"].starts_with("not a JPEG or PNG image (file starts with 74 68 69 73"),
        "{}",
        failed["text.JPG"]
    );
    assert!(summary.failed.iter().all(|f| f.label.as_deref() == Some("Broken")));

    let rows = read_committed(&out.path().join("features")).rows;
    assert_eq!(rows.len(), 8);
    let nulls: BTreeMap<_, _> = rows
        .iter()
        .filter(|r| r.features.is_none())
        .map(|r| (r.path.rsplit('/').next().unwrap_or_default().to_owned(), r.error.clone().unwrap_or_default()))
        .collect();
    assert_eq!(nulls, failed, "the files carry the same errors as the summary");
    assert!(rows.iter().all(|r| !r.path.ends_with(".DS_Store") && !r.path.ends_with(".txt")));

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("featurized 5, failed 3"), "{stdout}");
    assert!(stdout.contains("truncated.jpg: truncated JPEG"), "{stdout}");
}

/// Four-channel JPEGs, 16-bit, palette and grey-alpha PNGs featurize like the reference, and
/// the decode limits are flags (and environment variables) of the job: images above them fail
/// with the reason and the others go on.
#[test]
fn other_formats_featurize_and_decode_limits_are_flags() {
    let input = tempfile::tempdir().expect("temp dir");
    let formats = input.path().join("Formats");
    std::fs::create_dir_all(&formats).expect("mkdir");
    let reference = Reference::load();
    for fixture in &reference.decode_fixtures {
        std::fs::copy(decode_fixtures_dir().join(&fixture.file), formats.join(&fixture.file)).expect("copy");
    }
    let count = reference.decode_fixtures.len();

    let out = tempfile::tempdir().expect("temp dir");
    assert_success(&run_job(input.path(), out.path(), &[]));
    let summary = read_summary(out.path());
    assert_eq!((summary.rows_in, summary.featurized), (count as u64, count as u64), "{:?}", summary.failed);
    let rows: BTreeMap<String, FeatureRow> = read_committed(&out.path().join("features"))
        .rows
        .into_iter()
        .map(|r| (r.path.rsplit('/').next().unwrap_or_default().to_owned(), r))
        .collect();
    for fixture in &reference.decode_fixtures {
        let features =
            rows[&fixture.file].features.as_ref().unwrap_or_else(|| panic!("{} has no features", fixture.file));
        let similarity = cosine(features, &fixture.features);
        assert!(similarity >= 0.999, "{}: cosine {similarity}", fixture.file);
    }

    // 100x100 images under a limit of 9,999 pixels; 30,000 bytes of RGB under 29,999 bytes. With
    // every image failed there is nothing for the PCA stage to fit.
    for (flag, env, limit, error) in [
        (
            "--max-image-pixels",
            "FRUITS_MAX_IMAGE_PIXELS",
            "9999",
            "image of 100x100 pixels is above the limit of 9999 pixels",
        ),
        (
            "--max-decode-memory",
            "FRUITS_MAX_DECODE_MEMORY",
            "29999",
            "needs more than the limit of 29999 bytes of memory",
        ),
    ] {
        let out = tempfile::tempdir().expect("temp dir");
        assert_success(&run_job(input.path(), out.path(), &[flag, limit, "--no-pca"]));
        let summary = read_summary(out.path());
        assert_eq!((summary.featurized, summary.failed.len()), (0, count), "{flag}");
        assert!(summary.failed.iter().all(|f| f.error.contains(error)), "{flag}: {:?}", summary.failed);

        let out = tempfile::tempdir().expect("temp dir");
        let (input, output, model) = (input.path().display().to_string(), out.path().display().to_string(), model());
        let status = std::process::Command::new(binary("fruits"))
            .args(["run", "--input", &input, "--output", &output, "--model", &model, "--no-pca"])
            .env(env, limit)
            .output()
            .expect("cannot start fruits");
        assert_success(&status);
        assert_eq!(read_summary(out.path()).featurized, 0, "{env}");
    }
}

#[test]
fn errors_name_the_problem_and_exit_non_zero() {
    let out = tempfile::tempdir().expect("temp dir");
    let empty = tempfile::tempdir().expect("temp dir");
    let (sample, model) = (sample_dir().display().to_string(), model());
    let empty = empty.path().display().to_string();
    let output_dir = out.path().display().to_string();
    // (input, model, extra flags, expected message)
    let cases: [(&str, &str, &[&str], &str); 6] = [
        ("/nonexistent/photos", &model, &[], "input folder /nonexistent/photos does not exist"),
        (&empty, &model, &[], "no image files (.jpg, .jpeg, .png) found under"),
        (&sample, "/nonexistent/model.onnx", &[], "model file /nonexistent/model.onnx not found"),
        (&sample, &model, &["--model-layout", "nchw"], "expected float32 [N, 3, 224, 224] (NCHW)"),
        (&sample, &model, &["--model-output", "logits"], "no output named 'logits' (the model's outputs: features)"),
        (
            &sample,
            &model,
            &["--ort-library", "/nonexistent/libonnxruntime.so"],
            "ONNX Runtime 1.31.1 library not found (looked for /nonexistent/libonnxruntime.so)",
        ),
    ];
    for (input, model, extra, expected) in cases {
        let mut args = vec!["run", "--input", input, "--output", &output_dir, "--model", model];
        args.extend_from_slice(extra);
        let output = fruits(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}\n{stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in\n{stderr}");
    }
    assert!(!out.path().join("summary.json").exists());
    assert!(!out.path().join("features/_SUCCESS").exists());

    // For scripts: the same failure as one JSON line on stdout, and the same exit code.
    let output =
        fruits(&["run", "--input", "/nonexistent/photos", "--output", &output_dir, "--model", &model, "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let error = last_json_line(&output.stdout)["error"].as_str().map(str::to_owned);
    assert!(
        error.as_deref().is_some_and(|e| e.contains("input folder /nonexistent/photos does not exist")),
        "{error:?}"
    );
}

#[test]
fn sql_runs_queries_against_images() {
    let sample = sample_dir().display().to_string();
    let model = model();
    let output = fruits(&[
        "sql",
        "--input",
        &sample,
        "--model",
        &model,
        "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label",
    ]);
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for (label, n) in SAMPLE_COUNTS {
        let line = stdout.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("{label} missing:\n{stdout}"));
        assert!(line.contains(&format!(" {n} ")), "{line}");
    }
}

#[test]
fn sql_writes_featurize_results_to_parquet() {
    let input = tempfile::tempdir().expect("temp dir");
    copy_sample_images(input.path(), "Orange", 3);
    let out = tempfile::tempdir().expect("temp dir");
    let (input_arg, out_arg, model) =
        (input.path().display().to_string(), out.path().join("q").display().to_string(), model());
    let output = fruits(&[
        "sql",
        "--input",
        &input_arg,
        "--model",
        &model,
        "--output",
        &out_arg,
        "SELECT path, label, featurize(content) AS features FROM images",
    ]);
    assert_success(&output);
    let rows = read_parquet_dir(&out.path().join("q"));
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.label.as_deref() == Some("Orange") && r.features.as_ref().is_some_and(|f| f.len() == 1280))
    );

    // Again into the same folder: the earlier result is replaced.
    let count = "SELECT label, count(*) AS n FROM images GROUP BY label";
    assert_success(&fruits(&["sql", "--input", &input_arg, "--model", &model, "--output", &out_arg, count]));
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&out.path().join("q")), ["part-00000.parquet"]);

    // A folder that holds anything else is refused, and nothing in it is touched.
    let keep = out.path().join("q/keep");
    std::fs::create_dir_all(&keep).expect("mkdir");
    std::fs::write(keep.join("x.txt"), b"mine").expect("write");
    let refused = fruits(&["sql", "--input", &input_arg, "--model", &model, "--output", &out_arg, count]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("that `fruits sql` did not write (keep/x.txt)"), "{stderr}");
    assert_eq!(std::fs::read(keep.join("x.txt")).expect("kept"), b"mine");
    assert_eq!(names(&out.path().join("q")), ["keep", "part-00000.parquet"]);
}

/// `fruits bench --json` measures every figure the README's performance table quotes, on the
/// same tensors: Python onnxruntime (the quantize venv `make test` sets up), fruits' own
/// sessions, preprocessing and the job, whose rows are the input's images.
#[test]
fn bench_measures_the_limit_and_the_job_on_the_same_tensors() {
    let input = tempfile::tempdir().expect("temp dir");
    copy_sample_images(input.path(), "Banana", 12);
    copy_sample_images(input.path(), "Orange", 12);
    let dir = input.path().display().to_string();
    let output =
        fruits(&["--json", "bench", "--input", &dir, "--model", &model(), "--seconds", "1", "--parallelism", "2"]);
    assert_success(&output);
    let bench = last_json_line(&output.stdout);
    assert_eq!(bench["images"], 24, "{bench}");
    assert_eq!((bench["sessions"].as_u64(), bench["threads_per_session"].as_u64()), (Some(2), Some(1)), "{bench}");
    assert_eq!(bench["batch"], 1, "{bench}");
    assert_eq!(bench["python"]["status"], "measured", "{bench}");
    assert_eq!(bench["python"]["onnxruntime"], "1.31.1", "{bench}");
    let rate = |key: &str| bench[key].as_f64().unwrap_or_else(|| panic!("no {key} in {bench}"));
    let python = bench["python"]["images_per_second"].as_f64().expect("python rate");
    for value in
        [python, rate("raw_images_per_second"), rate("preprocess_images_per_second"), rate("job_images_per_second")]
    {
        assert!(value > 1.0, "{bench}");
    }
    assert_eq!(rate("limit_images_per_second"), python.max(rate("raw_images_per_second")));
    let share = rate("job_images_per_second") / rate("limit_images_per_second");
    assert!((rate("job_of_limit") - share).abs() < 1e-9, "{bench}");

    // Without a Python with onnxruntime the bench still runs and says why it skipped that figure.
    let output = fruits(&[
        "--json",
        "bench",
        "--input",
        &dir,
        "--model",
        &model(),
        "--seconds",
        "1",
        "--python",
        "/nonexistent/python",
    ]);
    assert_success(&output);
    let bench = last_json_line(&output.stdout);
    assert_eq!(bench["python"]["status"], "not_measured", "{bench}");
    let why = bench["python"]["why"].as_str().expect("a reason");
    assert!(why.contains("/nonexistent/python does not exist") && why.contains("make setup-quantize"), "{why}");
    assert_eq!(bench["limit_images_per_second"], bench["raw_images_per_second"], "{bench}");
}
