//! The parts of the Ballista scheduler's REST API this client reads: the executors' task slots
//! (to size a job's partitions) and a job's progress. The API of a cluster with a secret wants
//! it as a bearer token.

use std::time::Duration;

use anyhow::{Context, Result};
use fruits_process::auth::Secret;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Longest wait for one answer: the API serves from the scheduler's memory.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The REST API of the scheduler at `HOST:PORT`.
#[derive(Debug, Clone)]
pub struct SchedulerApi {
    client: reqwest::Client,
    base: String,
}

/// The parts of Ballista's `/api/executors` entries used here.
#[derive(Debug, Deserialize)]
struct Executor {
    specification: Specification,
}

#[derive(Debug, Deserialize)]
struct Specification {
    /// The executor's task slots (`--vcores`).
    vcores: usize,
}

impl SchedulerApi {
    pub fn new(address: &str, secret: Option<&Secret>) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(secret) = secret {
            headers.insert(reqwest::header::AUTHORIZATION, secret.bearer());
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(TIMEOUT)
            .build()
            .context("cannot set up an HTTP client for the scheduler's REST API")?;
        Ok(Self { client, base: format!("http://{address}/api") })
    }

    /// `GET /api/{path}`, as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}/{path}", self.base);
        let response = self.client.get(&url).send().await.with_context(|| format!("cannot reach {url}"))?;
        let body = response.error_for_status().with_context(|| format!("{url} refused"))?.bytes().await?;
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from {url}"))
    }

    /// The task slots of every executor registered now: how many tasks the cluster runs at
    /// once.
    pub async fn task_slots(&self) -> Result<usize> {
        let executors: Vec<Executor> = self.get("executors").await?;
        Ok(total_slots(&executors))
    }
}

fn total_slots(executors: &[Executor]) -> usize {
    executors.iter().map(|e| e.specification.vcores).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape Ballista 55's scheduler serves (trimmed).
    #[test]
    fn task_slots_add_up_over_the_executors() {
        let body = r#"[
            {"id": "a", "host": "10.0.0.2", "port": 50051, "last_seen": 1, "specification": {"vcores": 4},
             "metrics": [], "os_info": {}},
            {"id": "b", "host": "10.0.0.3", "port": 50051, "last_seen": 1, "specification": {"vcores": 2},
             "metrics": [], "os_info": {}}
        ]"#;
        let executors: Vec<Executor> = serde_json::from_str(body).unwrap();
        assert_eq!(total_slots(&executors), 6);
        assert_eq!(total_slots(&[]), 0);
    }
}
