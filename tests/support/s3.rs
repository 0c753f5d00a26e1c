//! A small blocking S3 client for tests: what a test checks in a bucket (list, get) and how it
//! fills one (put, a folder upload), against Garage, the Compose cluster or the EMR simulation.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};

/// Uploads in flight at once in [`S3Bucket::upload_dir`].
const UPLOAD_CONCURRENCY: usize = 32;

/// Where an S3 server is and who may use it.
#[derive(Debug, Clone)]
pub struct S3Account {
    /// `http://127.0.0.1:<port>`; requests are path-style.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Account {
    /// A Garage server (region `garage`) on `port` of this host, as the Compose cluster and the
    /// EMR simulation publish theirs.
    pub fn garage_on_host_port(port: u16, access_key_id: &str, secret_access_key: &str) -> Self {
        S3Account {
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "garage".to_owned(),
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
        }
    }

    /// A store on `bucket`, with `client`'s options (timeouts, say). Use it inside a Tokio
    /// runtime; it holds no connection until first used.
    pub fn builder(&self, bucket: &str, client: ClientOptions) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_client_options(client.with_allow_http(true))
            .with_endpoint(&self.endpoint)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false)
    }

    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(self.builder(bucket, ClientOptions::new()).build().expect("S3 client"))
    }

    /// The blocking client of `bucket`.
    pub fn bucket(&self, bucket: &str) -> S3Bucket {
        S3Bucket { name: bucket.to_owned(), store: self.store(bucket) }
    }
}

/// One bucket, with blocking calls that panic with the key on any failure.
pub struct S3Bucket {
    name: String,
    store: Arc<dyn ObjectStore>,
}

impl S3Bucket {
    /// Every object under `prefix` (a folder: `a/b` matches `a/b/c`, not `a/bc`; empty for the
    /// whole bucket), as `(key, size)` sorted by key.
    pub fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        let folder = (!prefix.is_empty()).then(|| object_path(prefix));
        let listing = self.store.list(folder.as_ref()).map_ok(|meta| (meta.location.to_string(), meta.size));
        let mut objects: Vec<(String, u64)> =
            block_on(listing.try_collect()).unwrap_or_else(|e| panic!("cannot list s3://{}/{prefix}: {e}", self.name));
        objects.sort();
        objects
    }

    /// The content of one object, which must exist.
    pub fn get(&self, key: &str) -> Bytes {
        self.try_get(key).unwrap_or_else(|| panic!("s3://{}/{key} does not exist", self.name))
    }

    /// The content of one object, `None` if it does not exist.
    pub fn try_get(&self, key: &str) -> Option<Bytes> {
        match block_on(async { self.store.get(&object_path(key)).await?.bytes().await }) {
            Ok(bytes) => Some(bytes),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("cannot get s3://{}/{key}: {e}", self.name),
        }
    }

    /// Uploads every file under `local_dir`, recursively, as `<prefix>/<relative path>` (just
    /// the relative path if `prefix` is empty); returns how many.
    pub fn upload_dir(&self, local_dir: &Path, prefix: &str) -> usize {
        let mut files = Vec::new();
        collect_files(local_dir, &mut files);
        let uploads = files.into_iter().map(|file| {
            let relative = file.strip_prefix(local_dir).expect("file under local_dir");
            let relative: Vec<_> = relative.iter().map(|part| part.to_str().expect("UTF-8 file name")).collect();
            let key = join_key(prefix, &relative.join("/"));
            let store = Arc::clone(&self.store);
            async move {
                let content = fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
                store.put(&object_path(&key), PutPayload::from(content)).await.map(|_| ())
            }
        });
        let count = futures::stream::iter(uploads)
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .try_fold(0, |n, ()| async move { Ok(n + 1) });
        block_on(count)
            .unwrap_or_else(|e| panic!("upload of {} to s3://{}/{prefix} failed: {e}", local_dir.display(), self.name))
    }
}

/// Runs `future` on a runtime of its own, so these helpers can be called from plain `#[test]`s.
/// Each call needs its stores' connections on that runtime only: a client's pooled connections
/// belong to the runtime that opened them, and none is kept between calls.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(future)
}

/// `n` random bytes as lowercase hex: keys, secrets, unique names.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0; n];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keys are used exactly as given (`Path::from` would percent-encode some characters).
fn object_path(key: &str) -> ObjectPath {
    ObjectPath::parse(key).unwrap_or_else(|e| panic!("{key:?} is not a valid object key: {e}"))
}

fn join_key(prefix: &str, relative: &str) -> String {
    match prefix.trim_matches('/') {
        "" => relative.to_owned(),
        prefix => format!("{prefix}/{relative}"),
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}
