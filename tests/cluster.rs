//! The job on a real loopback cluster: Garage as S3, `fruits-scheduler`, two
//! `fruits-executor`s and the `fruits` client, all separate processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{Cluster, ClusterOptions};
use crate::support::garage::Garage;
use crate::support::*;

/// Garage with the sample uploaded under `Test/<Class>/...`, and a cluster using it whose
/// executors get `executor_args`; also returns the number of images uploaded.
fn cluster_over_sample(garage: Garage, executors: usize, executor_args: Vec<String>) -> (Garage, Cluster, usize) {
    garage.upload_dir(&sample_dir(), garage.bucket(), "Test");
    let images = garage.list(garage.bucket(), "Test").iter().filter(|(key, _)| key.ends_with(".jpg")).count();
    assert_eq!(images, SAMPLE_COUNTS.iter().map(|(_, n)| n).sum::<usize>());
    let cluster = Cluster::start(ClusterOptions { executors, vcores: 1, env: garage.env(), executor_args });
    (garage, cluster, images)
}

/// `fruits` with the cluster's S3 settings and credentials (and no others).
fn client(garage: &Garage, args: &[&str]) -> Command {
    let mut command = Command::new(binary("fruits"));
    garage.configure(&mut command).args(args).stdin(Stdio::null());
    command
}

/// Runs `command` with a pseudo-terminal (120 columns) as its stdout and stderr, by util-linux's
/// `script`, so the progress bar draws as it does for a person; returns all it printed as stdout.
fn run_in_terminal(command: &Command) -> Output {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let line = std::iter::once(quote(command.get_program()))
        .chain(command.get_args().map(quote))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = Command::new("script");
    script.args(["-qfec", &format!("stty cols 120 rows 40; exec {line}"), "/dev/null"]).stdin(Stdio::null());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    script.env("TERM", "xterm").output().expect("cannot start script (util-linux)")
}

fn run_on(garage: &Garage, cluster: &Cluster, input: &str, output: &str) -> Output {
    let scheduler = cluster.scheduler_url();
    client(garage, &["run", "--scheduler", &scheduler, "--input", input, "--output", output])
        .output()
        .expect("cannot start fruits")
}

/// The `(label, n)` rows of a Parquet file.
fn label_counts(parquet: Bytes) -> Vec<(String, i64)> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let reader = ParquetRecordBatchReaderBuilder::try_new(parquet).expect("Parquet metadata").build().expect("reader");
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.expect("Parquet batch");
        let labels = datafusion::arrow::compute::cast(batch.column_by_name("label").expect("label"), &DataType::Utf8)
            .expect("labels as text");
        let counts = batch.column_by_name("n").expect("n column").as_primitive::<Int64Type>();
        let labels = labels.as_string::<i32>();
        rows.extend((0..batch.num_rows()).map(|i| (labels.value(i).to_owned(), counts.value(i))));
    }
    rows
}

/// The `(label, predicted, unknown)` rows of a Parquet file.
fn predictions(parquet: Bytes) -> Vec<(String, Option<String>, Option<bool>)> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let reader = ParquetRecordBatchReaderBuilder::try_new(parquet).expect("Parquet metadata").build().expect("reader");
    let text = |batch: &datafusion::arrow::array::RecordBatch, name: &str| {
        datafusion::arrow::compute::cast(batch.column_by_name(name).expect(name), &DataType::Utf8).expect("text")
    };
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.expect("Parquet batch");
        let (labels, predicted) = (text(&batch, "label"), text(&batch, "predicted"));
        let (labels, predicted) = (labels.as_string::<i32>(), predicted.as_string::<i32>());
        let unknown = batch.column_by_name("unknown").expect("unknown").as_boolean();
        rows.extend((0..batch.num_rows()).map(|i| {
            (
                labels.value(i).to_owned(),
                predicted.is_valid(i).then(|| predicted.value(i).to_owned()),
                unknown.is_valid(i).then(|| unknown.value(i)),
            )
        }));
    }
    rows
}

/// The committed features under `s3://<bucket>/<prefix>/features/`.
fn read_committed_s3(garage: &Garage, prefix: &str) -> Committed {
    let present: HashSet<String> = garage.list(garage.bucket(), prefix).into_iter().map(|(key, _)| key).collect();
    read_committed_with(|name| {
        let key = format!("{prefix}/features/{name}");
        present.contains(&key).then(|| garage.get(garage.bucket(), &key))
    })
}

#[test]
fn job_over_s3_runs_on_both_executors_and_matches_the_embedded_engine() {
    // The embedded run first: the classifier trained on its features is in S3 before the
    // executors start with `--classifier`, which loads it once per executor.
    let local = tempfile::tempdir().expect("temp dir");
    let (_, classifier_dir) = train_on_sample(local.path());
    let garage = Garage::start();
    garage.upload_dir(&classifier_dir, garage.bucket(), "classifier");
    let classifier = format!("s3://{}/classifier", garage.bucket());
    let (garage, cluster, images) = cluster_over_sample(garage, 2, vec!["--classifier".into(), classifier]);
    let bucket = garage.bucket().to_owned();
    let (scheduler, input, output) =
        (cluster.scheduler_url(), format!("s3://{bucket}/Test"), format!("s3://{bucket}/out"));
    let args = ["run", "--scheduler", &scheduler, "--input", &input, "--output", &output];
    let run = run_in_terminal(client(&garage, &args).args(["--pca-mode", "distributed", "--json"]));
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{printed}\n{}", cluster.logs());

    // On a terminal the bar follows the job on the scheduler: tasks and images done.
    assert!(printed.contains("tasks done") && printed.contains(&format!("/{images} images")), "{printed}");

    let Committed { manifest, rows } = read_committed_s3(&garage, "out");
    assert_eq!(manifest.rows as usize, images);
    assert_eq!(manifest.failed, 0);
    assert_each_image_once(&rows, images);
    assert!(rows.iter().all(|r| r.path.starts_with(&format!("s3://{bucket}/Test/"))), "{:?}", rows[0].path);

    let writers: HashSet<&str> = manifest.files.iter().map(|f| f.written_by.as_str()).collect();
    assert_eq!(writers.len(), 2, "both executors write files: {writers:?}");

    let summary = parse_summary(&garage.get(&bucket, "out/summary.json"));
    assert_eq!((summary.rows_in, summary.featurized), (images as u64, images as u64));

    // The PCA from the moments the executors aggregated within the job equals scikit-learn's.
    let json = last_json_line(&run.stdout);
    assert_eq!(json["run_id"], summary.run_id.as_str(), "--json prints the run's summary");
    assert_eq!(json["pca"]["mode"], "distributed");
    let projections = crate::support::pca::parse_projections(
        garage.get(&bucket, &format!("out/pca/part-{}.parquet", summary.run_id)),
    );
    crate::support::pca::ReferencePca::load().assert_matches(&json["pca"], &projections);
    let sample_bytes: u64 = garage.list(&bucket, "Test").iter().map(|(_, size)| size).sum();
    let client_read = summary.client_bytes_read.expect("measured on Linux");
    // Besides small reports, the distributed PCA sends the client one merged moments state:
    // count, mean and the scatter's lower triangle, as f64 (6.6 MB for 1,280 features).
    let moments_state = (2 + 1280 + 1280 * 1281 / 2) * 8;
    assert!(
        client_read < sample_bytes / 20 + moments_state,
        "the client read {client_read} bytes for {sample_bytes} bytes of images: image data passed through it"
    );

    // Ad-hoc SQL runs on the cluster too.
    let scheduler = cluster.scheduler_url();
    let input = format!("s3://{bucket}/Test");
    let query = "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label";
    let sql =
        client(&garage, &["sql", "--scheduler", &scheduler, "--input", &input, query]).output().expect("fruits sql");
    assert_success(&sql);
    let printed = String::from_utf8_lossy(&sql.stdout);
    for (label, n) in SAMPLE_COUNTS {
        assert!(printed.lines().any(|l| l.contains(label) && l.contains(&format!(" {n} "))), "{label}:\n{printed}");
    }
    // COPY ... STORED AS PARQUET travels to the cluster too (its file format through both
    // codecs) and the executors write Parquet that reads back.
    let copy = format!(
        "COPY (SELECT label, count(*) AS n FROM images GROUP BY label) TO 's3://{bucket}/counts/' STORED AS PARQUET"
    );
    let copied =
        client(&garage, &["sql", "--scheduler", &scheduler, "--input", &input, &copy]).output().expect("fruits sql");
    assert_success(&copied);
    let parts: Vec<String> =
        garage.list(&bucket, "counts").into_iter().map(|(key, _)| key).filter(|k| k.ends_with(".parquet")).collect();
    assert!(!parts.is_empty(), "COPY wrote no Parquet file: {:?}", garage.list(&bucket, "counts"));
    let counts: BTreeMap<String, i64> = parts.iter().flat_map(|key| label_counts(garage.get(&bucket, key))).collect();
    let expected: BTreeMap<String, i64> = SAMPLE_COUNTS.iter().map(|(l, n)| (l.to_string(), *n as i64)).collect();
    assert_eq!(counts, expected);

    // `predict` on the executors: every image through the classifier they loaded.
    let query = "SELECT label, predict(content)['label'] AS predicted, predict(content)['unknown'] AS unknown \
                 FROM images";
    let output = format!("s3://{bucket}/predicted/");
    let predicted = client(&garage, &["sql", "--scheduler", &scheduler, "--input", &input, "--output", &output, query])
        .output()
        .expect("fruits sql");
    assert_success(&predicted);
    let (mut predicted_rows, mut right, mut unknown) = (0, 0, 0);
    for (key, _) in garage.list(&bucket, "predicted").iter().filter(|(k, _)| k.ends_with(".parquet")) {
        for (label, predicted, is_unknown) in predictions(garage.get(&bucket, key)) {
            predicted_rows += 1;
            right += usize::from(predicted.as_deref() == Some(label.as_str()));
            unknown += usize::from(is_unknown == Some(true));
            assert!(predicted.is_some() && is_unknown.is_some(), "{label}: no prediction");
        }
    }
    assert_eq!(predicted_rows, images);
    assert!(right as f64 >= 0.99 * images as f64, "{right} of {images} images predicted as their folder's label");
    assert!(unknown as f64 <= 0.1 * images as f64, "{unknown} of {images} known images rejected as unknown");

    // The same images on the embedded engine give the same features.
    let embedded: HashMap<String, Vec<f32>> = read_committed(&local.path().join("out/features"))
        .rows
        .into_iter()
        .map(|r| (label_and_file(&r.path), r.features.expect("features")))
        .collect();
    let mut worst = 0f32;
    for row in &rows {
        let expected = &embedded[&label_and_file(&row.path)];
        let got = row.features.as_ref().expect("features");
        worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    assert!(worst <= 1e-5, "largest difference from the embedded run: {worst}");
}

#[test]
fn a_killed_executor_loses_and_duplicates_nothing() {
    let (garage, mut cluster, images) = cluster_over_sample(Garage::start(), 2, Vec::new());
    let bucket = garage.bucket().to_owned();
    let scheduler = cluster.scheduler_url();
    let (input, output) = (format!("s3://{bucket}/Test"), format!("s3://{bucket}/out"));
    let mut job = client(&garage, &["run", "--scheduler", &scheduler, "--input", &input, "--output", &output])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start fruits");

    // Kill an executor as soon as the first task has committed its file: mid-job, with work
    // done, work running and work waiting.
    let started = Instant::now();
    while !garage.list(&bucket, "out/features").iter().any(|(key, _)| key.starts_with("out/features/part-")) {
        assert!(started.elapsed() < Duration::from_secs(180), "no task finished\n{}", cluster.logs());
        assert!(job.try_wait().expect("job status").is_none(), "the job ended before any file was written");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.executors[0].kill();

    let result = job.wait_with_output().expect("job output");
    assert!(
        result.status.success(),
        "the job did not survive a lost executor:\n{}\n{}",
        String::from_utf8_lossy(&result.stderr),
        cluster.logs()
    );
    let Committed { manifest, rows } = read_committed_s3(&garage, "out");
    assert_each_image_once(&rows, images);

    // Files of attempts that were lost with the executor are gone; only the commit is left.
    let mut left: Vec<String> = garage
        .list(&bucket, "out/features")
        .into_iter()
        .map(|(key, _)| key.trim_start_matches("out/features/").to_owned())
        .collect();
    let mut expected: Vec<String> = manifest.files.iter().map(|f| f.file.clone()).collect();
    expected.push("_SUCCESS".to_owned());
    left.sort();
    expected.sort();
    assert_eq!(left, expected);

    // An incremental run over 300 more images, losing an executor too: each new image once,
    // every committed one kept, nothing else left behind.
    let more = tempfile::tempdir().expect("temp dir");
    for label in ["Banana", "Pear"] {
        copy_sample_images(more.path(), label, 150);
    }
    garage.upload_dir(more.path(), &bucket, "Test/New");
    let replacement = cluster.spawn_executor("executor-c", 1, &garage.env());
    cluster.executors.push(replacement);
    let kept: HashSet<String> = manifest.files.iter().map(|f| format!("out/features/{}", f.file)).collect();
    let args =
        ["run", "--scheduler", &scheduler, "--input", &input, "--output", &output, "--files-per-partition", "20"];
    let job =
        client(&garage, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cannot start fruits");
    let started = Instant::now();
    let new_part = || {
        garage
            .list(&bucket, "out/features")
            .iter()
            .any(|(key, _)| key.starts_with("out/features/part-") && !kept.contains(key))
    };
    while !new_part() {
        assert!(started.elapsed() < Duration::from_secs(180), "no new file\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.executors[1].kill();
    let result = job.wait_with_output().expect("job output");
    assert!(result.status.success(), "{}\n{}", String::from_utf8_lossy(&result.stderr), cluster.logs());
    let summary = parse_summary(&garage.get(&bucket, "out/summary.json"));
    let counts = summary.incremental.as_ref().map(|i| (i.new, i.changed, i.deleted, i.unchanged));
    assert_eq!(counts, Some((300, 0, 0, images as u64)), "{summary:?}");
    let Committed { manifest, rows } = read_committed_s3(&garage, "out");
    let mut per_path: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        *per_path.entry(row.path.as_str()).or_default() += 1;
        assert!(row.features.is_some(), "{}", row.path);
    }
    assert!(per_path.values().all(|&n| n == 1), "duplicated rows");
    assert_eq!(per_path.len(), images + 300);
    assert_eq!(rows.iter().filter(|r| r.path.contains("/Test/New/")).count(), 300);
    let mut left: Vec<String> = garage.list(&bucket, "out/features").into_iter().map(|(key, _)| key).collect();
    let mut expected: Vec<String> = manifest.files.iter().map(|f| format!("out/features/{}", f.file)).collect();
    expected.push("out/features/_SUCCESS".to_owned());
    left.sort();
    expected.sort();
    assert_eq!(left, expected);
    assert!(kept.iter().all(|file| expected.contains(file)), "the committed files of the first run are kept");
}

#[test]
fn cluster_errors_are_clear_and_commit_nothing() {
    let mut garage = Garage::start();
    let bucket = garage.bucket().to_owned();
    let images = tempfile::tempdir().expect("temp dir");
    let pear = images.path().join("Pear");
    std::fs::create_dir_all(&pear).expect("mkdir");
    std::fs::copy(sample_dir().join("Pear/0_100.jpg"), pear.join("0_100.jpg")).expect("copy");
    garage.upload_dir(images.path(), &bucket, "Test");
    let cluster =
        Cluster::start(ClusterOptions { executors: 1, vcores: 1, env: garage.env(), executor_args: Vec::new() });
    let input = format!("s3://{bucket}/Test");

    let dead = format!("df://127.0.0.1:{}", free_port());
    let output = format!("s3://{bucket}/out");
    let cases: [(&str, String, String, String); 3] = [
        ("wrong scheduler", dead.clone(), input.clone(), format!("cannot reach the fruits scheduler at {dead}")),
        (
            "missing input bucket",
            cluster.scheduler_url(),
            "s3://no-such-bucket/Test".into(),
            "cannot list the images under s3://no-such-bucket/Test".into(),
        ),
        (
            "missing output bucket",
            cluster.scheduler_url(),
            input.clone(),
            "cannot take the lease on s3://no-such-output/out/".into(),
        ),
    ];
    for (case, scheduler, input, expected) in cases {
        let output =
            if case == "missing output bucket" { "s3://no-such-output/out".to_owned() } else { output.clone() };
        let result = client(&garage, &["run", "--scheduler", &scheduler, "--input", &input, "--output", &output])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains(&expected), "{case}: expected {expected:?} in\n{stderr}");
    }
    assert!(garage.list(&bucket, "out").is_empty(), "nothing is written when the job cannot run");

    // S3 goes away: every process gets connection errors.
    garage.kill();
    let result = run_on(&garage, &cluster, &input, &output);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    // The first request is for the output's lease.
    let expected = format!("cannot take the lease on {}/", output.trim_end_matches('/'));
    assert!(stderr.contains(&expected) && stderr.contains("error sending request"), "{stderr}");
}
