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
use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use url::Url;

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
        let store = builder
            .with_retry(retry)
            .build()
            .map_err(|e| DataFusionError::Configuration(format!("cannot configure S3 for bucket {bucket}: {e}")))?;
        Ok(Arc::new(store))
    }
}

/// A registry that creates an S3 store the first time a bucket is used, and hands local paths
/// and explicitly registered stores to DataFusion's default registry.
#[derive(Debug)]
pub struct ObjectStores {
    s3: S3Options,
    buckets: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
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

    fn s3_bucket(url: &Url) -> Option<&str> {
        matches!(url.scheme(), "s3" | "s3a").then(|| url.host_str()).flatten()
    }
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
        if let Some(store) = self.buckets.read().map_err(poisoned)?.get(bucket) {
            return Ok(Arc::clone(store));
        }
        let mut buckets = self.buckets.write().map_err(poisoned)?;
        if let Some(store) = buckets.get(bucket) {
            return Ok(Arc::clone(store));
        }
        let store = self.s3.build(bucket)?;
        buckets.insert(bucket.to_owned(), Arc::clone(&store));
        Ok(store)
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
