//! What a run never does: delete what fruits did not write, leave no committed result behind
//! when it dies, let a second run write into the same output, read its own output as input,
//! or lose an image because of its name, its size or a bad neighbour in the listing. The real
//! `fruits` binary on the embedded engine, on local folders and on Garage.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fruits_udfs::{LEASE_FILE, Lease, LeaseError, Location, ObjectStores, PartFile, S3Options};
use object_store::{ClientOptions, MultipartUpload, ObjectStoreExt};

use crate::embedded::run_job;
use crate::support::garage::Garage;
use crate::support::s3::block_on;
use crate::support::*;

/// Names people give files: accents (NFC and NFD), spaces and every character that URLs or
/// object_store paths treat specially.
const AWKWARD_NAMES: [&str; 4] = [
    "p\u{ea}che 1.jpg",
    "pe\u{302}che 2.jpg",
    "50% #1 [a] {b} ^c `d` <e> |f| ~g \"h\" *i ?j.jpg",
    "back\\slash;=&+$,@!'().jpg",
];

/// `dir/Pêche/<name>` for each awkward name, all copies of one sample image, and that image
/// under its own name in `dir/Pear/`. Returns the sample image's file name.
fn awkward_input(dir: &Path) -> String {
    let original = copy_sample_images(dir, "Pear", 1).remove(0);
    let bytes = std::fs::read(dir.join("Pear").join(&original)).expect("read sample");
    let folder = dir.join("P\u{ea}che");
    std::fs::create_dir_all(&folder).expect("mkdir");
    for name in AWKWARD_NAMES {
        std::fs::write(folder.join(name), &bytes).expect("write awkward name");
    }
    original
}

/// Each awkward name was read, labelled with its folder, and featurized like the original.
fn assert_awkward_names_featurized(rows: &[FeatureRow], original: &str) {
    let by_name: BTreeMap<String, &FeatureRow> =
        rows.iter().map(|r| (r.path.rsplit('/').next().expect("file name").to_owned(), r)).collect();
    let reference = by_name[original].features.as_ref().expect("the original has features");
    for name in AWKWARD_NAMES {
        let row = by_name.get(name).unwrap_or_else(|| panic!("{name:?} missing from {:?}", by_name.keys()));
        assert_eq!(row.label.as_deref(), Some("P\u{ea}che"), "{name}");
        assert!(row.path.ends_with(&format!("/P\u{ea}che/{name}")), "{}", row.path);
        let features = row.features.as_ref().unwrap_or_else(|| panic!("{name:?}: {:?}", row.error));
        assert!(cosine(features, reference) > 0.99999, "{name}");
    }
}

#[test]
fn awkward_names_huge_files_and_unlistable_entries_lose_nothing_else() {
    use std::os::unix::ffi::OsStrExt;
    let input = tempfile::tempdir().expect("temp dir");
    let original = awkward_input(input.path());
    let odd = input.path().join("Odd");
    std::fs::create_dir_all(&odd).expect("mkdir");
    // A sparse file of 3 GiB under an image name: above the default size limit, never read.
    std::fs::File::create(odd.join("huge.jpg")).and_then(|f| f.set_len(3 << 30)).expect("sparse file");
    // A name that is not UTF-8, and a symlink loop: each one entry the listing cannot name.
    std::fs::write(odd.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg")), b"x").expect("latin-1 name");
    std::os::unix::fs::symlink(input.path(), odd.join("loop")).expect("symlink");

    let out = tempfile::tempdir().expect("temp dir");
    let output = run_job(input.path(), out.path(), &["--no-pca"]);
    assert_success(&output);
    let summary = read_summary(out.path());
    let failed: BTreeMap<String, String> = summary
        .failed
        .iter()
        .map(|f| (f.path.rsplit('/').next().unwrap_or_default().to_owned(), f.error.clone()))
        .collect();
    assert_eq!((summary.rows_in, summary.featurized), (8, 5), "{failed:?}");
    assert_eq!(failed["huge.jpg"], "file of 3.0 GiB is above the limit of 256.0 MiB (--max-image-bytes)");
    assert!(failed["caf\u{fffd}.jpg"].contains("not valid UTF-8"), "{failed:?}");
    assert!(failed["loop"].starts_with("skipped while listing: symlink loop"), "{failed:?}");

    let rows = read_committed(&out.path().join("features")).rows;
    assert_awkward_names_featurized(&rows, &original);

    // The limit is a flag: at 1 KB every image is over it, and says so.
    let out = tempfile::tempdir().expect("temp dir");
    assert_success(&run_job(input.path(), out.path(), &["--no-pca", "--max-image-bytes", "1000"]));
    let summary = read_summary(out.path());
    assert_eq!(summary.featurized, 0);
    let over = summary.failed.iter().filter(|f| f.error.contains("is above the limit of 1000 B")).count();
    assert_eq!(over, 6, "{:?}", summary.failed);
}

/// Names of the files under `dir`, recursively, relative to it and sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, names: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, names);
            } else {
                names.push(path.strip_prefix(root).expect("under root").display().to_string());
            }
        }
    }
    let mut names = Vec::new();
    walk(dir, dir, &mut names);
    names.sort();
    names
}

#[test]
fn reruns_replace_only_what_fruits_wrote() {
    let input = tempfile::tempdir().expect("temp dir");
    copy_sample_images(input.path(), "Pear", 2);
    let out = tempfile::tempdir().expect("temp dir");
    let features = out.path().join("features");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    std::fs::write(elsewhere.path().join("keep.txt"), b"mine").expect("write");
    std::fs::create_dir_all(features.join("nested")).expect("mkdir");
    std::os::unix::fs::symlink(elsewhere.path(), features.join("linked")).expect("symlink");
    std::fs::create_dir_all(out.path().join("pca")).expect("mkdir");
    let user_files =
        ["features/readme.txt", "features/nested/x.parquet", "features/part-00007-old-run.parquet", "pca/notes.md"];
    for name in user_files {
        std::fs::write(out.path().join(name), b"mine").expect("write");
    }
    assert_success(&run_job(input.path(), out.path(), &[]));
    let first = read_summary(out.path());
    // What a killed run leaves: a part file of its own naming.
    let leftover = format!("part-{}-0123456789ab.parquet", "1700000000-abcdef");
    assert!(PartFile::parse(&leftover).is_some());
    std::fs::write(features.join(&leftover), b"killed").expect("write");

    copy_sample_images(input.path(), "Avocado", 1);
    let quiet = run_job(input.path(), out.path(), &["--quiet"]);
    assert_success(&quiet);
    assert!(quiet.stdout.is_empty() && quiet.stderr.is_empty(), "--quiet printed {quiet:?}");
    let second = read_summary(out.path());
    assert_ne!(first.run_id, second.run_id);
    assert_eq!(read_committed(&features).rows.len(), 3);

    // The committed files (the first run's, kept, and this run's new one), this run's views,
    // and every file fruits did not write; nothing else of the first run.
    let mut expected: Vec<String> = second.files.iter().map(|f| format!("features/{f}")).collect();
    expected.extend(["features/_SUCCESS", "features/linked", "pca.png", "summary.json"].map(String::from));
    expected.push(format!("pca/part-{}.parquet", second.run_id));
    expected.extend(user_files.map(String::from));
    expected.sort();
    assert_eq!(tree(out.path()), expected);
    assert_eq!(std::fs::read(elsewhere.path().join("keep.txt")).expect("kept"), b"mine");
    assert_eq!(plot_run(&out.path().join("pca.png")).as_deref(), Some(second.run_id.as_str()));
}

/// The run a `pca.png` names in its `fruits:run` text chunk.
fn plot_run(png: &Path) -> Option<String> {
    let bytes = std::fs::read(png).ok()?;
    let key = b"tEXtfruits:run\0";
    let at = bytes.windows(key.len()).position(|w| w == key)?;
    let length = u32::from_be_bytes(bytes.get(at.checked_sub(4)?..at)?.try_into().ok()?) as usize;
    let text = bytes.get(at + key.len()..at + 4 + length)?;
    Some(String::from_utf8_lossy(text).into_owned())
}

#[test]
fn an_output_inside_the_input_is_refused() {
    let input = tempfile::tempdir().expect("temp dir");
    copy_sample_images(input.path(), "Pear", 1);
    let out = input.path().join("out");
    let output = run_job(input.path(), &out, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is inside the input") && stderr.contains("choose an output folder outside"), "{stderr}");
    assert!(tree(&out).is_empty(), "{:?}", tree(&out));
}

/// `fruits run` over `input` into `output`, started in the background.
fn spawn_run(input: &Path, output: &Path) -> Child {
    let model = model_path().display().to_string();
    Command::new(binary("fruits"))
        // --full: every run writes files of its own, so each kill point is reached.
        .args(["run", "--quiet", "--full", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--model", &model])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start fruits")
}

/// Waits up to a minute for `condition`, polling every millisecond; false on timeout.
fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn a_second_run_into_the_same_output_is_refused_while_the_first_holds_it() {
    let input = tempfile::tempdir().expect("temp dir");
    copy_sample_images(input.path(), "Banana", 40);
    let out = tempfile::tempdir().expect("temp dir");
    let first = spawn_run(input.path(), out.path());
    assert!(wait_for(|| out.path().join(LEASE_FILE).exists()), "the first run took no lease");

    let second = run_job(input.path(), out.path(), &[]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("is in use by run") && stderr.contains(&format!("(pid {})", first.id())), "{stderr}");

    assert_success(&first.wait_with_output().expect("first run"));
    assert!(!out.path().join(LEASE_FILE).exists(), "the lease is released");
    assert_eq!(read_committed(&out.path().join("features")).rows.len(), 40);
}

/// What a reader of `out` must always find: a committed manifest whose files all exist, with
/// the projections of that run, and views (`summary.json`, `pca.png`) of that run or none.
fn assert_consistent(out: &Path, runs: &[&str]) -> String {
    let committed = read_committed(&out.join("features"));
    let run = committed.manifest.run_id.clone();
    assert!(runs.contains(&run.as_str()), "committed run {run} is none of {runs:?}");
    assert!(out.join(format!("pca/part-{run}.parquet")).is_file(), "projections of {run}: {:?}", tree(out));
    if out.join("summary.json").exists() {
        assert_eq!(read_summary(out).run_id, run, "summary.json names another run");
    }
    if out.join("pca.png").exists() {
        assert_eq!(plot_run(&out.join("pca.png")).as_deref(), Some(run.as_str()), "pca.png names another run");
    }
    run
}

#[test]
fn a_run_killed_at_any_point_leaves_the_previous_result_and_the_next_run_cleans_up() {
    let input = tempfile::tempdir().expect("temp dir");
    copy_sample_images(input.path(), "Banana", 20);
    copy_sample_images(input.path(), "Pear", 20);
    let out = tempfile::tempdir().expect("temp dir");
    assert_success(&run_job(input.path(), out.path(), &[]));
    let previous = read_summary(out.path()).run_id;
    let features = out.path().join("features");
    let part_of = |name: &str| PartFile::parse(name).map(|p| p.run.to_string());
    let new_parts = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|name| part_of(name).is_some_and(|run| run != previous))
            .collect()
    };
    let new_projections = |out: &Path| -> bool {
        std::fs::read_dir(out.join("pca"))
            .map(|entries| {
                entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).any(|n| !n.contains(&previous))
            })
            .unwrap_or(false)
    };

    // Kill points: the lease taken, the first file written, the projections written (right
    // before the commit), the views withdrawn (inside the commit).
    type Point<'a> = Box<dyn Fn() -> bool + 'a>;
    let points: Vec<(&str, Point)> = vec![
        ("lease taken", Box::new(|| out.path().join(LEASE_FILE).exists())),
        ("first file written", Box::new(|| !new_parts(&features).is_empty())),
        ("projections written", Box::new(|| new_projections(out.path()))),
        ("views withdrawn", Box::new(|| !out.path().join("summary.json").exists())),
    ];
    for (point, reached) in &points {
        let mut child = spawn_run(input.path(), out.path());
        let hit = wait_for(|| reached() || child.try_wait().ok().flatten().is_some());
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        println!("killed at {point} (reached: {hit}, {status})");
        // Committed: the previous result, or the run just killed if it got that far.
        let mut runs: Vec<String> = new_parts(&features).iter().filter_map(|n| part_of(n)).collect();
        runs.push(read_committed(&features).manifest.run_id.clone());
        let before: Vec<&str> = runs.iter().map(String::as_str).collect();
        assert_consistent(out.path(), &before);
    }
    // What a kill inside a local write leaves: object_store stages every write as `name#N`.
    std::fs::write(features.join("_SUCCESS#7"), b"{").expect("write");
    std::fs::write(out.path().join("summary.json#3"), b"{").expect("write");
    // The next run takes the dead run's lease at once (its process is gone) and leaves only its
    // own files.
    let output = run_job(input.path(), out.path(), &[]);
    assert_success(&output);
    let last = read_summary(out.path());
    assert_eq!(assert_consistent(out.path(), &[last.run_id.as_str()]), last.run_id);
    let mut expected: Vec<String> = last.files.clone();
    expected.push("_SUCCESS".to_owned());
    expected.sort();
    assert_eq!(tree(&features), expected);
    assert_eq!(tree(&out.path().join("pca")), [format!("part-{}.parquet", last.run_id)]);
    assert!(!out.path().join("summary.json#3").exists(), "a staged view of a killed run is left");
    assert_eq!(read_committed(&features).rows.len(), 40);
}

#[test]
fn on_s3_awkward_keys_are_read_user_objects_kept_and_the_lease_is_exclusive() {
    let garage = Garage::start();
    let bucket = garage.bucket().to_owned();
    let local = tempfile::tempdir().expect("temp dir");
    let original = awkward_input(local.path());
    // Uploaded with the keys as they are, as the AWS CLI does.
    garage.upload_dir(local.path(), &bucket, "photos");
    let account = garage.account();
    let objects = account.bucket(&bucket);
    block_on(async {
        let store = account.store(&bucket);
        let key = object_store::path::Path::parse("out/features/readme.txt").expect("key");
        store.put(&key, object_store::PutPayload::from_static(b"mine")).await.expect("put")
    });

    let (input, output) = (format!("s3://{bucket}/photos/"), format!("s3://{bucket}/out/"));
    let model = model_path().display().to_string();
    let mut command = Command::new(binary("fruits"));
    garage.configure(&mut command).args(["run", "--no-pca", "--input", &input, "--output", &output, "--model", &model]);
    assert_success(&command.output().expect("fruits run"));
    // What killed attempts leave on S3: unfinished multipart uploads, of a fruits part file and
    // of a user's object. The next run aborts the first only.
    let stores = ObjectStores::new(S3Options::default());
    stores.register_s3_bucket(account.builder(&bucket, ClientOptions::new())).expect("register the bucket");
    let runtime = stores.runtime_env().expect("runtime");
    let out = Location::parse(&output, &runtime).expect("output location");
    block_on(async {
        let store = account.store(&bucket);
        for key in ["out/features/part-1700000000-abcdef-0123456789ab.parquet", "out/user/big.bin"] {
            let mut upload = store.put_multipart(&object_store::path::Path::from(key)).await.expect("begin an upload");
            upload.put_part(object_store::PutPayload::from(vec![7u8; 5 << 20])).await.expect("upload a part");
            std::mem::forget(upload);
        }
        let mut pending = stores.incomplete_uploads(&out).await.expect("list the uploads");
        pending.sort();
        assert_eq!(pending, ["features/part-1700000000-abcdef-0123456789ab.parquet", "user/big.bin"]);
    });
    assert_success(&command.output().expect("fruits run"));
    let pending = block_on(stores.incomplete_uploads(&out)).expect("list the uploads");
    assert_eq!(pending, ["user/big.bin"], "the run aborts only its own kind of unfinished upload");
    let committed = read_committed_with(|name| objects.try_get(&format!("out/features/{name}")));
    assert_eq!(committed.rows.len(), 1 + AWKWARD_NAMES.len());
    assert_awkward_names_featurized(&committed.rows, &original);
    assert_eq!(objects.get("out/features/readme.txt").as_ref(), b"mine");
    assert_eq!(objects.try_get(&format!("out/{LEASE_FILE}")), None, "the lease is released");

    // Garage decides the conditional write: a second holder is refused while the first holds.
    block_on(async {
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let url = url::Url::parse(&format!("s3://{bucket}")).expect("bucket URL");
        runtime.register_object_store(&url, account.store(&bucket));
        let folder = Location::parse(&format!("s3://{bucket}/leases/"), &runtime).expect("location");
        let probes = [folder.put_new("probe", b"1".to_vec()).await, folder.put_new("probe", b"2".to_vec()).await];
        println!("Garage conditional writes (If-None-Match: *): {probes:?}");
        let first = Lease::acquire(&folder, "1764650000-aaaaaa").await.expect("first lease");
        let second = Lease::acquire(&folder, "1764650000-bbbbbb").await;
        assert!(matches!(second, Err(LeaseError::Held { .. })), "{second:?}");
        first.check().await.expect("the first still holds it");
        first.release().await.expect("release");
        Lease::acquire(&folder, "1764650000-bbbbbb").await.expect("after release").release().await.expect("release");
    });
}
