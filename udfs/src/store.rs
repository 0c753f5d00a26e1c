//! Object stores, built from each process's own settings and environment.
//!
//! Ballista's stock binaries configure S3 from session settings that travel with every query,
//! credentials included, and show up in the scheduler's REST job config. Here every process
//! (client, scheduler, executor) builds its S3 stores itself: the non-secret settings come from
//! its flags, the credentials from its environment (`AWS_ACCESS_KEY_ID`, ...) or, on EC2, the
//! instance role. A plan names only `s3://bucket/prefix`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use url::Url;

use crate::location::{Location, StoreError};
use crate::uploads::{self, S3UploadsEndpoint};

/// Non-secret S3 settings. `None` leaves the setting to the `AWS_*` environment variables that
/// object_store reads (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:3900`; AWS when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint` (Garage, MinIO).
    pub path_style: Option<bool>,
    /// Accept `http://` endpoints.
    pub allow_http: Option<bool>,
    /// Give up on a request (connection refused, 5xx, ...) after this long.
    pub retry_timeout: Option<Duration>,
}

impl S3Options {
    /// Default ceiling on retries: long enough to ride out a throttled or restarting S3, short
    /// enough that an unreachable endpoint is reported within a minute, not after object_store's
    /// default of three.
    pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

    /// A store for `bucket`, with credentials from the environment or the instance role.
    pub fn build(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        Ok(self.bucket(bucket)?.store)
    }

    fn bucket(&self, bucket: &str) -> Result<S3Bucket> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if let Some(path_style) = self.path_style {
            builder = builder.with_virtual_hosted_style_request(!path_style);
        }
        if let Some(allow_http) = self.allow_http {
            builder = builder.with_allow_http(allow_http);
        }
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 6,
            retry_timeout: self.retry_timeout.unwrap_or(Self::DEFAULT_RETRY_TIMEOUT),
        };
        S3Bucket::build(builder.with_retry(retry))
    }
}

/// One bucket's store, as DataFusion is handed it and as the upload clean-up needs it.
#[derive(Debug, Clone)]
struct S3Bucket {
    store: Arc<dyn ObjectStore>,
    /// The same store, for the calls the `ObjectStore` trait has no room for (aborting an upload
    /// by its id).
    s3: Arc<AmazonS3>,
    /// Where its unfinished uploads are listed.
    uploads: S3UploadsEndpoint,
}

impl S3Bucket {
    fn build(builder: AmazonS3Builder) -> Result<Self> {
        let configuration_error = |e: String| {
            let bucket = builder.get_config_value(&AmazonS3ConfigKey::Bucket).unwrap_or_default();
            DataFusionError::Configuration(format!("cannot configure S3 for bucket {bucket}: {e}"))
        };
        let s3 = Arc::new(builder.clone().build().map_err(|e| configuration_error(e.to_string()))?);
        let uploads = S3UploadsEndpoint::from_builder(&builder).map_err(configuration_error)?;
        Ok(Self { store: Arc::clone(&s3) as _, s3, uploads })
    }
}

/// A registry that creates an S3 store the first time a bucket is used, and hands local paths
/// and explicitly registered stores to DataFusion's default registry.
#[derive(Debug)]
pub struct ObjectStores {
    s3: S3Options,
    buckets: RwLock<HashMap<String, S3Bucket>>,
    fallback: DefaultObjectStoreRegistry,
}

impl ObjectStores {
    pub fn new(s3: S3Options) -> Arc<Self> {
        Arc::new(Self { s3, buckets: RwLock::default(), fallback: DefaultObjectStoreRegistry::new() })
    }

    /// A runtime environment resolving URLs through `self`.
    pub fn runtime_env(self: &Arc<Self>) -> Result<Arc<RuntimeEnv>> {
        let registry: Arc<dyn ObjectStoreRegistry> = Arc::clone(self) as _;
        Ok(Arc::new(RuntimeEnvBuilder::new().with_object_store_registry(registry).build()?))
    }

    /// Uses `builder`, as it is, for its bucket from now on, rather than a store built from
    /// [`S3Options`] and the environment: an embedded engine with credentials of its own, a test
    /// against a throwaway server. Replaces the bucket's store if it had one.
    pub fn register_s3_bucket(&self, builder: AmazonS3Builder) -> Result<Arc<dyn ObjectStore>> {
        let bucket_name = builder.get_config_value(&AmazonS3ConfigKey::Bucket);
        let Some(name) = bucket_name.filter(|name| !name.is_empty()) else {
            return Err(DataFusionError::Configuration("an S3 store needs a bucket name".into()));
        };
        let bucket = S3Bucket::build(builder)?;
        let store = Arc::clone(&bucket.store);
        self.buckets.write().map_err(poisoned)?.insert(name, bucket);
        Ok(store)
    }

    /// Aborts the unfinished uploads under `folder`, at any depth, whose object, named relative
    /// to the folder (`part-3.parquet`, `sub/x.bin`), is `owned`; returns the URLs of those
    /// objects, one per upload aborted. Attempts that were killed while they streamed a file
    /// leave such uploads, which nothing else would remove; `owned` keeps the clean-up to the
    /// files the caller writes, in a folder that others may be writing to.
    ///
    /// - `s3://bucket/prefix/`: lists the bucket's multipart uploads under the prefix
    ///   (ListMultipartUploads) and aborts those. The listing is not retried: a failure says
    ///   whether a retry may help ([`StoreError::is_transient`]), and a refusal (403) or a server
    ///   without the call (501) is an error that names it.
    /// - `file:///dir/`: removes the files in which object_store's local store stages an upload
    ///   to `name` (`name#<n>`), which its listings hide.
    /// - Any other store, or an S3 bucket whose store was registered through
    ///   [`ObjectStoreRegistry::register_store`] (so of a configuration this registry does not
    ///   know): nothing to do.
    ///
    /// The S3 requests go through this registry's store for the bucket, whatever store `folder`
    /// was made with. Run it only while no attempt that may still be writing is alive: an upload
    /// in progress looks the same as one whose writer was killed.
    pub async fn abort_incomplete_uploads(
        &self,
        folder: &Location,
        owned: impl Fn(&str) -> bool + Sync,
    ) -> Result<Vec<String>, StoreError> {
        match self.uploads_store(folder)? {
            UploadsStore::S3(bucket) => uploads::s3_abort(&bucket.uploads, &bucket.s3, folder, &owned).await,
            UploadsStore::Local => uploads::local_abort(folder, &owned).await,
            UploadsStore::Other => Ok(Vec::new()),
        }
    }

    /// The names, relative to `folder`, of the objects with an unfinished upload under it, at
    /// any depth, once per upload: what [`Self::abort_incomplete_uploads`] would look at.
    pub async fn incomplete_uploads(&self, folder: &Location) -> Result<Vec<String>, StoreError> {
        match self.uploads_store(folder)? {
            UploadsStore::S3(bucket) => uploads::s3_incomplete(&bucket.uploads, &bucket.s3, folder).await,
            UploadsStore::Local => uploads::local_incomplete(folder).await,
            UploadsStore::Other => Ok(Vec::new()),
        }
    }

    fn uploads_store(&self, folder: &Location) -> Result<UploadsStore, StoreError> {
        let url = Url::parse(folder.url())
            .map_err(|e| StoreError::InvalidLocation { location: folder.url().to_owned(), reason: e.to_string() })?;
        if url.scheme() == "file" {
            return Ok(UploadsStore::Local);
        }
        let Some(bucket) = Self::s3_bucket(&url) else {
            return Ok(UploadsStore::Other);
        };
        if self.fallback.get_store(&url).is_ok() {
            return Ok(UploadsStore::Other);
        }
        let bucket = self
            .s3_bucket_store(bucket)
            .map_err(|error| StoreError::NoStore { location: folder.url().to_owned(), error })?;
        Ok(UploadsStore::S3(bucket))
    }

    /// The store of `bucket`, built the first time it is asked for.
    fn s3_bucket_store(&self, bucket: &str) -> Result<S3Bucket> {
        if let Some(store) = self.buckets.read().map_err(poisoned)?.get(bucket) {
            return Ok(store.clone());
        }
        let mut buckets = self.buckets.write().map_err(poisoned)?;
        if let Some(store) = buckets.get(bucket) {
            return Ok(store.clone());
        }
        let store = self.s3.bucket(bucket)?;
        buckets.insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    fn s3_bucket(url: &Url) -> Option<&str> {
        matches!(url.scheme(), "s3" | "s3a").then(|| url.host_str()).flatten()
    }
}

/// Which kind of clean-up a folder's store needs.
enum UploadsStore {
    S3(S3Bucket),
    Local,
    Other,
}

impl ObjectStoreRegistry for ObjectStores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.fallback.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let Some(bucket) = Self::s3_bucket(url) else {
            return self.fallback.get_store(url);
        };
        if let Ok(store) = self.fallback.get_store(url) {
            return Ok(store);
        }
        Ok(self.s3_bucket_store(bucket)?.store)
    }
}

fn poisoned<T>(_: T) -> DataFusionError {
    DataFusionError::Internal("object store registry lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_store_per_bucket_and_local_paths_still_work() {
        let stores = ObjectStores::new(S3Options {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("garage".into()),
            path_style: Some(true),
            allow_http: Some(true),
            retry_timeout: None,
        });
        let a = stores.get_store(&Url::parse("s3://photos/a/b.jpg").unwrap()).unwrap();
        let again = stores.get_store(&Url::parse("s3://photos/other").unwrap()).unwrap();
        let b = stores.get_store(&Url::parse("s3://results/").unwrap()).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(stores.get_store(&Url::parse("file:///tmp").unwrap()).is_ok());
        assert!(stores.get_store(&Url::parse("gs://elsewhere/").unwrap()).is_err());
    }
}
