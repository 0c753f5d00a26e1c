//! The clean-up of unfinished multipart uploads on a real S3 server (Garage): what attempts
//! killed mid-write leave is found with ListMultipartUploads, the fruits uploads are aborted and
//! everyone else's are left alone; a key that may not list them gets an error that says so.

use fruits_udfs::{Location, ObjectStores, S3Options, StoreError};
use object_store::path::Path;
use object_store::{ClientOptions, MultipartUpload, ObjectStoreExt, PutPayload};

use crate::support::garage::Garage;
use crate::support::s3::block_on;

/// The smallest part S3 accepts in an upload of more than one part.
const PART_SIZE: usize = 5 * 1024 * 1024;

/// What fruits writes into a features folder.
fn fruits_file(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    file.starts_with("part-") && file.ends_with(".parquet")
}

#[test]
fn unfinished_fruits_uploads_are_aborted_and_others_kept() {
    let garage = Garage::start();
    let bucket = garage.bucket().to_owned();
    let store = garage.account().store(&bucket);
    block_on(async {
        let begin = |key: &'static str| {
            let store = store.clone();
            async move {
                let mut upload = store.put_multipart(&Path::from(key)).await.expect("begin an upload");
                upload.put_part(PutPayload::from(vec![7u8; PART_SIZE])).await.expect("upload a part");
                upload
            }
        };
        // The handles stand for writers that were killed: nobody completes or aborts them until
        // the end, where completing tells, through S3 itself, whether the upload is still there.
        let mut ours = begin("run/features/part-x.parquet").await;
        let mut users = begin("run/user/keep.bin").await;
        let mut outside = begin("elsewhere/features/part-y.parquet").await;

        let stores = ObjectStores::new(S3Options::default());
        stores
            .register_s3_bucket(garage.account().builder(&bucket, ClientOptions::new()))
            .expect("register the bucket");
        let runtime = stores.runtime_env().expect("runtime");
        let folder = Location::parse(&format!("s3://{bucket}/run"), &runtime).expect("folder");

        let mut pending = stores.incomplete_uploads(&folder).await.expect("list the uploads");
        pending.sort();
        assert_eq!(pending, ["features/part-x.parquet", "user/keep.bin"]);

        let aborted = stores.abort_incomplete_uploads(&folder, fruits_file).await.expect("abort the uploads");
        assert_eq!(aborted, [format!("s3://{bucket}/run/features/part-x.parquet")]);

        // A fresh listing, of the folder and of the whole bucket.
        assert_eq!(stores.incomplete_uploads(&folder).await.expect("list again"), ["user/keep.bin"]);
        let root = Location::parse(&format!("s3://{bucket}"), &runtime).expect("bucket root");
        let mut everywhere = stores.incomplete_uploads(&root).await.expect("list the bucket");
        everywhere.sort();
        assert_eq!(everywhere, ["elsewhere/features/part-y.parquet", "run/user/keep.bin"]);
        // Nothing left to do a second time.
        assert!(stores.abort_incomplete_uploads(&folder, fruits_file).await.expect("abort again").is_empty());

        // S3 agrees: the aborted upload cannot be completed, the others can.
        assert!(ours.complete().await.is_err(), "the aborted upload could still be completed");
        users.complete().await.expect("the user's upload survives");
        outside.complete().await.expect("the upload outside the folder survives");
    });
    assert_eq!(garage.list(&bucket, "run"), [("run/user/keep.bin".to_owned(), PART_SIZE as u64)]);
}

#[test]
fn a_key_that_may_not_list_uploads_gets_a_clear_error() {
    let garage = Garage::start();
    let bucket = garage.bucket().to_owned();
    let mut account = garage.account();
    account.secret_access_key = "0".repeat(64);
    block_on(async {
        let stores = ObjectStores::new(S3Options::default());
        stores.register_s3_bucket(account.builder(&bucket, ClientOptions::new())).expect("register the bucket");
        let runtime = stores.runtime_env().expect("runtime");
        let folder = Location::parse(&format!("s3://{bucket}/run"), &runtime).expect("folder");
        let error = stores.abort_incomplete_uploads(&folder, fruits_file).await.expect_err("a refused listing");
        let message = error.to_string();
        assert!(
            matches!(error, StoreError::Request { status: Some(403), .. }),
            "expected a 403 refusal, got: {message}"
        );
        assert!(!error.is_transient(), "{message}");
        assert!(message.contains(&format!("s3://{bucket}/run/")) && message.contains("403"), "{message}");
    });
}
