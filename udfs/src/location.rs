//! A folder in a local or remote object store: the one way every fruits process reads, writes,
//! uploads, lists and deletes what it keeps (features, manifests, summaries, plots, copies).
//!
//! Failures keep their kind on the way out: a missing object is `None` (or nothing to delete),
//! a transient store failure becomes an I/O error, which Ballista retries, and a refusal
//! (permissions, a bad key) is an error that a retry would only repeat. See
//! [`StoreError::into_datafusion`].

use std::path::Path as LocalPath;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::ParquetObjectReader;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::{Path, PathPart};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Part size of streamed (multipart) uploads: S3 needs at least 5 MiB per part, and 10 MiB keeps
/// the part count of a large file low.
pub const UPLOAD_PART_SIZE: usize = 10 * 1024 * 1024;

/// True for `s3://...`, `file:///...` and other URLs; false for a local path.
pub fn is_url(location: &str) -> bool {
    location.contains("://")
}

/// What went wrong with a location, and where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid location {location}: {reason}")]
    InvalidLocation { location: String, reason: String },
    // The causes below are part of the message and not exposed as `source()`: their own
    // messages already carry their causes, which a chain printer would print twice.
    #[error("cannot create the local folder {path}: {error}")]
    LocalFolder { path: String, error: std::io::Error },
    #[error("no object store for {location}: {error}")]
    NoStore { location: String, error: DataFusionError },
    #[error("cannot {action} {url}: {error}")]
    Store { action: &'static str, url: String, error: object_store::Error },
    #[error("cannot {action} {path}: {error}")]
    Local { action: &'static str, path: String, error: std::io::Error },
    /// A request object_store has no call for, sent by us; `status` is the HTTP status of the
    /// answer, `None` when there was none (a network failure).
    #[error("cannot {action} {url}: {reason}")]
    Request { action: &'static str, url: String, status: Option<u16>, reason: String },
}

impl StoreError {
    /// True when trying again may succeed: a network failure, a server error that outlived the
    /// store's own retries, a local I/O error. Not for refusals (permission, credentials, an
    /// invalid key, a failed precondition) nor for a missing object.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Store { error, .. } => is_transient(error),
            StoreError::LocalFolder { .. } => true,
            StoreError::Local { error, .. } => error.kind() != std::io::ErrorKind::PermissionDenied,
            // No answer, throttling, or a server error; 501 says the server lacks the call.
            StoreError::Request { status, .. } => matches!(status, None | Some(429 | 500 | 502..=599)),
            StoreError::InvalidLocation { .. } | StoreError::NoStore { .. } => false,
        }
    }

    /// The error as DataFusion (and so Ballista, which retries a task only when the root
    /// error is [`DataFusionError::IoError`]) should see it.
    pub fn into_datafusion(self) -> DataFusionError {
        if self.is_transient() {
            DataFusionError::IoError(std::io::Error::other(self))
        } else {
            DataFusionError::External(Box::new(self))
        }
    }
}

impl From<StoreError> for DataFusionError {
    fn from(e: StoreError) -> Self {
        e.into_datafusion()
    }
}

/// Whether an object-store failure is worth another attempt: a failed request (network, a
/// server error that outlived the store's own retries, local I/O) or a lost worker thread. Every
/// other kind says something a retry would only repeat.
pub(crate) fn is_transient(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. } | object_store::Error::JoinError { .. })
}

/// A failure somewhere below a writer (Parquet, a multipart upload) as DataFusion should see it:
/// an I/O error when an object-store or I/O failure that may pass is at its root, so that the
/// task is retried, else an execution error saying `what`.
pub(crate) fn write_error(what: String, e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut transient = false;
    while let Some(current) = cause {
        if let Some(store) = current.downcast_ref::<object_store::Error>() {
            transient = is_transient(store);
            break;
        }
        if current.is::<std::io::Error>() {
            transient = true;
        }
        cause = current.source();
    }
    let message = format!("{what}: {e}");
    if transient {
        DataFusionError::IoError(std::io::Error::other(message))
    } else {
        DataFusionError::Execution(message)
    }
}

/// What [`Location::put_new`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutNew {
    Created,
    /// Another object of that name was there first; nothing was written.
    Exists,
    /// The store cannot write conditionally; nothing was written.
    Unsupported,
}

/// How a store spells names in its paths.
///
/// object_store's local file system percent-encodes, in its paths, what a file name may hold
/// but a URL may not (`%`, `#`, `?`, non-ASCII letters...), and decodes them again on access.
/// Object stores keep keys as they are: `s3://b/pêche.jpg` is the key `pêche.jpg`, which other
/// S3 tools write and read. Encoding a key, or decoding one, names another object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Naming {
    Encoded,
    Raw,
}

impl Naming {
    /// The naming of the store behind `url` (`file:///...` or another scheme).
    pub(crate) fn of(url: &ObjectStoreUrl) -> Self {
        if url.as_str().starts_with("file:") { Naming::Encoded } else { Naming::Raw }
    }

    /// `parent/name` as a path of this store; `name` is one file or folder name.
    fn join(self, parent: &Path, name: &str) -> Path {
        match self {
            Naming::Encoded => parent.clone().join(name),
            // Only control characters are refused in a raw part; they cannot be named then.
            Naming::Raw => match PathPart::parse(name) {
                Ok(part) => parent.clone().join(part),
                Err(_) => parent.clone().join(name),
            },
        }
    }

    /// A part of a listed path as people and the file system name it.
    pub(crate) fn name(self, part: &str) -> String {
        match self {
            Naming::Encoded => percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned(),
            Naming::Raw => part.to_owned(),
        }
    }

    /// The URL people see for `path` of the store at `store_url` (decoded, not a valid URL).
    pub(crate) fn display_url(self, store_url: &ObjectStoreUrl, path: &Path) -> String {
        let names: Vec<String> = path.parts().map(|part| self.name(part.as_ref())).collect();
        format!("{}{}", store_url.as_str(), names.join("/"))
    }
}

/// A Parquet reader of the object at `path` (of `size` bytes, when known: one request fewer).
/// `ParquetObjectReader` is deprecated in parquet 59 in favour of a reader of one's own; it
/// still reads only the byte ranges a projection or a row selection needs, which reading a few
/// columns or rows of a large file relies on.
#[allow(deprecated)]
pub(crate) fn parquet_reader(store: Arc<dyn ObjectStore>, path: Path, size: Option<u64>) -> ParquetObjectReader {
    let reader = ParquetObjectReader::new(store, path);
    match size {
        Some(size) => reader.with_file_size(size),
        None => reader,
    }
}

/// A folder (`s3://bucket/prefix/`, `file:///home/me/out/`) and the store that serves it.
#[derive(Debug, Clone)]
pub struct Location {
    url: ListingTableUrl,
    store: Arc<dyn ObjectStore>,
}

impl Location {
    /// The folder `location`: a URL, or a local path (relative to the working folder), which
    /// need not exist; the store comes from `runtime`'s registry.
    pub fn parse(location: &str, runtime: &RuntimeEnv) -> Result<Self, StoreError> {
        let folder = format!("{}/", location.trim_end_matches('/'));
        Self::from_url_text(location, &folder, runtime)
    }

    /// Like [`Self::parse`], but a local folder is created if missing and named by its
    /// canonical path, so that two spellings of one folder give the same location.
    pub fn create(location: &str, runtime: &RuntimeEnv) -> Result<Self, StoreError> {
        if is_url(location) {
            return Self::parse(location, runtime);
        }
        let local_error = |error| StoreError::LocalFolder { path: location.to_owned(), error };
        let dir = LocalPath::new(location);
        std::fs::create_dir_all(dir).map_err(local_error)?;
        let dir = dir.canonicalize().map_err(local_error)?;
        let url = url::Url::from_directory_path(&dir).map_err(|()| StoreError::InvalidLocation {
            location: location.to_owned(),
            reason: "not an absolute path".to_owned(),
        })?;
        Self::from_url_text(location, url.as_str(), runtime)
    }

    fn from_url_text(location: &str, folder: &str, runtime: &RuntimeEnv) -> Result<Self, StoreError> {
        let url = ListingTableUrl::parse(folder)
            .map_err(|e| StoreError::InvalidLocation { location: location.to_owned(), reason: e.to_string() })?;
        let store = runtime
            .object_store(url.object_store())
            .map_err(|error| StoreError::NoStore { location: location.to_owned(), error })?;
        Ok(Self { url, store })
    }

    /// The folder of the file `file` (a path or a URL; `photo.jpg` is in `.`) and the file's
    /// name in it, for [`Self::get`].
    pub fn of_file(file: &str, runtime: &RuntimeEnv) -> Result<(Self, String), StoreError> {
        let (folder, name) = match file.rsplit_once('/') {
            Some(("", name)) => ("/", name),
            Some((folder, name)) => (folder, name),
            None => (".", file),
        };
        Ok((Self::parse(folder, runtime)?, name.to_owned()))
    }

    /// The sub-folder `name` (which may contain `/`), on the same store.
    pub fn child(&self, name: &str) -> Result<Self, StoreError> {
        let folder = format!("{}/", self.child_url(name).trim_end_matches('/'));
        let url = ListingTableUrl::parse(&folder)
            .map_err(|e| StoreError::InvalidLocation { location: folder.clone(), reason: e.to_string() })?;
        Ok(Self { url, store: Arc::clone(&self.store) })
    }

    /// The folder that holds this one (`s3://b/out/features/` -> `s3://b/out/`), if any.
    pub fn parent(&self) -> Option<Self> {
        let trimmed = self.url.as_str().trim_end_matches('/');
        let (parent, _) = trimmed.rsplit_once('/')?;
        // `s3://bucket` splits into `s3:/` and `file:///dir` into `file://`: the store's root.
        if parent.ends_with("//") || parent.ends_with(":/") {
            return None;
        }
        let url = ListingTableUrl::parse(format!("{parent}/")).ok()?;
        Some(Self { url, store: Arc::clone(&self.store) })
    }

    /// The folder's URL, ending in `/`.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The URL of `name` inside the folder; a name ending in `/` is a sub-folder.
    pub fn child_url(&self, name: &str) -> String {
        format!("{}{name}", self.url.as_str())
    }

    /// The store path of `name` (which may contain `/`) inside the folder.
    pub fn path(&self, name: &str) -> Path {
        let naming = self.naming();
        name.split('/')
            .filter(|part| !part.is_empty())
            .fold(self.url.prefix().clone(), |path, part| naming.join(&path, part))
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub(crate) fn naming(&self) -> Naming {
        Naming::of(&self.url.object_store())
    }

    /// The folder as DataFusion lists it.
    pub fn listing_url(&self) -> &ListingTableUrl {
        &self.url
    }

    /// Reads `name`; `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        self.get_path(&self.path(name)).await
    }

    /// Reads the object at `path` (as a listing returned it); `None` if it does not exist.
    pub async fn get_path(&self, path: &Path) -> Result<Option<Bytes>, StoreError> {
        let error = |error| StoreError::Store { action: "read", url: self.url_of(path), error };
        match self.store.get(path).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(error)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error(e)),
        }
    }

    /// Writes `name` in one request, replacing it if it exists.
    pub async fn put(&self, name: &str, bytes: impl Into<Bytes>) -> Result<(), StoreError> {
        let payload = PutPayload::from_bytes(bytes.into());
        self.store.put(&self.path(name), payload).await.map_err(|e| self.error("write", name, e))?;
        Ok(())
    }

    /// Writes `name` only if no object of that name exists, in one conditional request
    /// (`If-None-Match: *` on S3, an exclusive create on a local disk).
    pub async fn put_new(&self, name: &str, bytes: impl Into<Bytes>) -> Result<PutNew, StoreError> {
        let payload = PutPayload::from_bytes(bytes.into());
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&self.path(name), payload, options).await {
            Ok(_) => Ok(PutNew::Created),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(PutNew::Exists)
            }
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                Ok(PutNew::Unsupported)
            }
            Err(e) => Err(self.error("write", name, e)),
        }
    }

    /// A streaming writer of `name`: a multipart upload on object stores, in parts of
    /// [`UPLOAD_PART_SIZE`]; the object appears once `shutdown` completes it.
    pub fn upload(&self, name: &str) -> BufWriter {
        BufWriter::with_capacity(Arc::clone(&self.store), self.path(name), UPLOAD_PART_SIZE)
    }

    /// Removes `name`; nothing to do if it does not exist.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.delete_path(&self.path(name)).await
    }

    /// Removes the object at `path` (as a listing returned it); nothing to do if it is gone.
    pub async fn delete_path(&self, path: &Path) -> Result<(), StoreError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(StoreError::Store { action: "delete", url: self.url_of(path), error }),
        }
    }

    /// Every object under the folder, recursively, in the store's order; an absent folder is
    /// empty.
    pub async fn list(&self) -> Result<Vec<ObjectMeta>, StoreError> {
        self.list_stream().try_collect().await
    }

    /// [`Self::list`] as the store pages it: a bucket of millions is never held whole.
    pub fn list_stream(&self) -> BoxStream<'static, Result<ObjectMeta, StoreError>> {
        let url = self.url().to_owned();
        self.store
            .list(Some(self.url.prefix()))
            .take_while(|item| std::future::ready(!matches!(item, Err(object_store::Error::NotFound { .. }))))
            .map_err(move |error| StoreError::Store { action: "list", url: url.clone(), error })
            .boxed()
    }

    /// The name of `path` below this folder, `/`-separated and as people write it (on a local
    /// disk a listed `50%25 off` is the folder `50% off`), so that [`Self::path`] gives `path`
    /// back; `None` if it is not inside the folder.
    pub fn relative_name(&self, path: &Path) -> Option<String> {
        let parts = path.prefix_match(self.url.prefix())?;
        let naming = self.naming();
        let names: Vec<String> = parts.map(|part| naming.name(part.as_ref())).collect();
        Some(names.join("/"))
    }

    /// The URL of an object of this store, as people name it, for messages and the `path` column.
    pub fn url_of(&self, path: &Path) -> String {
        self.naming().display_url(&self.url.object_store(), path)
    }

    fn error(&self, action: &'static str, name: &str, error: object_store::Error) -> StoreError {
        StoreError::Store { action, url: self.child_url(name), error }
    }
}

#[cfg(test)]
mod tests {
    use ballista_core::error::BallistaError;
    use ballista_core::serde::protobuf::FailedTask;

    use super::*;

    #[test]
    fn a_file_is_its_folder_and_its_name() {
        let runtime = RuntimeEnv::default();
        let memory = url::Url::parse("memory://").unwrap();
        runtime.register_object_store(&memory, Arc::new(object_store::memory::InMemory::new()));
        let here = Location::parse(".", &runtime).unwrap().url().to_owned();
        for (file, folder, name) in [
            ("photo.jpg", here.as_str(), "photo.jpg"),
            ("/photo.jpg", "file:///", "photo.jpg"),
            ("/a/b/Pear 1.jpg", "file:///a/b/", "Pear 1.jpg"),
            ("memory:///x/p.jpg", "memory:///x/", "p.jpg"),
        ] {
            let (location, file_name) = Location::of_file(file, &runtime).unwrap();
            assert_eq!((location.url(), file_name.as_str()), (folder, name), "{file}");
        }
    }

    fn generic() -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: "connection reset by peer".into() }
    }

    fn store_error(error: object_store::Error) -> StoreError {
        StoreError::Store { action: "read", url: "s3://b/a.jpg".into(), error }
    }

    /// What Ballista decides for a task that failed with `error`.
    fn retryable(error: DataFusionError) -> bool {
        FailedTask::from(BallistaError::DataFusionError(Box::new(error))).retryable
    }

    #[test]
    fn transient_store_failures_are_retried_by_ballista_and_refusals_are_not() {
        assert!(retryable(store_error(generic()).into()));
        let denied = object_store::Error::PermissionDenied { path: "a.jpg".into(), source: "403 Forbidden".into() };
        assert!(!retryable(store_error(denied).into()));
        let invalid = StoreError::InvalidLocation { location: "s3:/x".into(), reason: "no bucket".into() };
        assert!(!retryable(invalid.into()));
        // Wrapped in context on the way up, the kind is still found.
        let wrapped = DataFusionError::from(store_error(generic())).context("while reading the images");
        assert!(retryable(wrapped));
    }

    #[test]
    fn our_own_requests_are_retried_when_the_server_may_answer_next_time() {
        let request = |status| StoreError::Request {
            action: "list the unfinished uploads under",
            url: "s3://b/out/".into(),
            status,
            reason: "why".into(),
        };
        assert!(request(None).is_transient());
        assert!(request(Some(503)).is_transient() && request(Some(429)).is_transient());
        assert!(!request(Some(403)).is_transient() && !request(Some(501)).is_transient());
        assert!(!request(Some(200)).is_transient());
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!StoreError::Local { action: "remove", path: "/x#1".into(), error: denied }.is_transient());
    }

    #[test]
    fn writer_failures_are_classified_by_their_root() {
        let parquet = datafusion::parquet::errors::ParquetError::External(Box::new(generic()));
        assert!(retryable(write_error("cannot write s3://b/part.parquet".into(), parquet)));
        let schema = datafusion::parquet::errors::ParquetError::General("schema mismatch".into());
        let error = write_error("cannot write s3://b/part.parquet".into(), schema);
        assert!(!retryable(error));
    }

    #[tokio::test]
    async fn a_local_folder_reads_writes_lists_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeEnv::default();
        let root = Location::create(&dir.path().join("out").display().to_string(), &runtime).unwrap();
        assert!(root.url().starts_with("file:///") && root.url().ends_with("/out/"), "{}", root.url());
        assert_eq!(root.get("missing.json").await.unwrap(), None);
        root.delete("missing.json").await.unwrap();

        root.put("summary.json", Bytes::from_static(b"{}")).await.unwrap();
        let features = root.child("features").unwrap();
        features.put("part-a.parquet", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(features.url(), root.child_url("features/"));
        assert_eq!(features.parent().unwrap().url(), root.url());
        assert_eq!(root.get("features/part-a.parquet").await.unwrap().as_deref(), Some(&b"x"[..]));

        root.put("50% off/{a}.jpg", Bytes::from_static(b"y")).await.unwrap();
        let listed = root.list().await.unwrap();
        let mut names: Vec<String> = listed.iter().filter_map(|m| root.relative_name(&m.location)).collect();
        names.sort();
        assert_eq!(names, ["50% off/{a}.jpg", "features/part-a.parquet", "summary.json"]);
        // A listed object is found again by its name.
        for object in &listed {
            let name = root.relative_name(&object.location).unwrap();
            assert_eq!(root.path(&name), object.location, "{name}");
        }

        root.delete("summary.json").await.unwrap();
        assert_eq!(root.get("summary.json").await.unwrap(), None);
        assert!(root.child("nowhere").unwrap().list().await.unwrap().is_empty());
    }
}
