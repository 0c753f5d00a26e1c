//! The lease on an output folder: one writer at a time.
//!
//! Two runs writing into one output would each delete the other's files and could publish a
//! manifest naming files that no longer exist. Before it writes, a run creates the lease object
//! with a conditional write (`If-None-Match: *` on S3, an exclusive create on a local disk); a
//! second run finds it there and refuses, naming the holder. The holder renews the lease while it
//! works, so one that died (killed, its machine lost) stops renewing and its lease goes stale:
//! after its expiry, or at once when it was held by a process of this host that no longer
//! exists.
//!
//! Where a store ignores the condition (some S3-compatible servers) or cannot write
//! conditionally, the lease is written plainly and read back: a run that reads back another
//! run's lease refuses. The holder checks the lease again right before it commits, so of two
//! runs that raced past each other at most one commits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::location::{Location, PutNew, StoreError};

/// Name of the lease object in the output folder.
pub const LEASE_FILE: &str = "_fruits_lease.json";
const LEASE_FORMAT: &str = "fruits-lease/1";

/// How long a lease lasts without renewal. Renewed every third of it, so a run survives two
/// failed renewals in a row (a slow or briefly unreachable store).
pub const LEASE_TTL: Duration = Duration::from_secs(90);

/// Who holds an output folder, as written in the lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    pub format: String,
    /// The run (or command) holding the folder.
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    /// Unix seconds after which the lease is stale unless renewed.
    pub expires: u64,
}

impl LeaseHolder {
    fn new(run_id: &str, now: u64) -> Self {
        Self {
            format: LEASE_FORMAT.to_owned(),
            run_id: run_id.to_owned(),
            host: host_name(),
            pid: std::process::id(),
            expires: now + LEASE_TTL.as_secs(),
        }
    }

    /// True when nobody holds the folder through this lease any more: it expired, or its holder
    /// was a process of this host that has exited.
    fn is_stale(&self, now: u64) -> bool {
        self.expires < now || (self.host == host_name() && !process_exists(self.pid))
    }

    fn is_mine(&self, run_id: &str) -> bool {
        self.run_id == run_id && self.host == host_name() && self.pid == std::process::id()
    }
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "{folder} is in use by run {} on {} (pid {}), whose lease {folder}{LEASE_FILE} runs until {} unless renewed; \
         wait for that run to finish, or, if it is gone, wait for the lease to expire or delete it",
        .holder.run_id, .holder.host, .holder.pid, unix_time(.holder.expires)
    )]
    Held { folder: String, holder: LeaseHolder },
    #[error("lost the lease on {folder} (run {run_id}): another run took it over; nothing more was written")]
    Lost { folder: String, run_id: String },
    #[error("{folder}{LEASE_FILE} is not a fruits lease ({reason}); delete it if no fruits run is writing there")]
    Unreadable { folder: String, reason: String },
    #[error("cannot take the lease on {folder}: {error}")]
    Store { folder: String, error: StoreError },
}

/// An output folder held by this process until [`Lease::release`] (or the process ends).
#[derive(Debug)]
pub struct Lease {
    folder: Location,
    run_id: String,
    lost: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Takes the lease on `folder` for `run_id`, replacing a stale one; refuses when another run
    /// holds it. A folder that cannot be written fails here, before any work.
    pub async fn acquire(folder: &Location, run_id: &str) -> Result<Self, LeaseError> {
        let store = |error| store_error(folder, error);
        for _ in 0..2 {
            // Looked at first, so that on a store that ignores the condition a live lease is
            // still found before it would be overwritten.
            if let Some(current) = read(folder).await? {
                if !current.is_stale(now()) {
                    return Err(LeaseError::Held { folder: folder.url().to_owned(), holder: current });
                }
                log::warn!(
                    "taking over the stale lease of run {} ({}:{}) on {}",
                    current.run_id,
                    current.host,
                    current.pid,
                    folder.url()
                );
                folder.delete(LEASE_FILE).await.map_err(store)?;
            }
            let holder = LeaseHolder::new(run_id, now());
            match folder.put_new(LEASE_FILE, to_json(&holder)).await.map_err(store)? {
                PutNew::Created => {}
                PutNew::Unsupported => folder.put(LEASE_FILE, to_json(&holder)).await.map_err(store)?,
                // Another run created it since we looked: it is live, or gone again.
                PutNew::Exists => match read(folder).await? {
                    Some(current) => return Err(LeaseError::Held { folder: folder.url().to_owned(), holder: current }),
                    None => continue,
                },
            }
            // A store that ignored the condition let the last writer win: read back who that was.
            match read(folder).await? {
                Some(current) if current.is_mine(run_id) => return Ok(Self::hold(folder.clone(), run_id)),
                Some(current) => return Err(LeaseError::Held { folder: folder.url().to_owned(), holder: current }),
                None => continue,
            }
        }
        // Twice created and twice gone: another process is taking and releasing it right now.
        match read(folder).await? {
            Some(current) => Err(LeaseError::Held { folder: folder.url().to_owned(), holder: current }),
            None => Err(LeaseError::Lost { folder: folder.url().to_owned(), run_id: run_id.to_owned() }),
        }
    }

    fn hold(folder: Location, run_id: &str) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn(renew(folder.clone(), run_id.to_owned(), Arc::clone(&lost)));
        Self { folder, run_id: run_id.to_owned(), lost, renewal }
    }

    /// A lease value for `folder` that this process does not hold, to test refusals.
    #[cfg(test)]
    pub(crate) fn stale_for_tests(folder: &Location, run_id: &str) -> Self {
        Self::hold(folder.clone(), run_id)
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Fails unless this process still holds the lease: call it right before a commit.
    pub async fn check(&self) -> Result<(), LeaseError> {
        let lost = || LeaseError::Lost { folder: self.folder.url().to_owned(), run_id: self.run_id.clone() };
        if self.lost.load(Ordering::SeqCst) {
            return Err(lost());
        }
        match read(&self.folder).await? {
            Some(current) if current.is_mine(&self.run_id) => Ok(()),
            _ => Err(lost()),
        }
    }

    /// Gives the folder up (the lease object is deleted if it is still ours).
    pub async fn release(self) -> Result<(), LeaseError> {
        self.renewal.abort();
        if let Ok(Some(current)) = read(&self.folder).await
            && current.is_mine(&self.run_id)
        {
            self.folder.delete(LEASE_FILE).await.map_err(|e| store_error(&self.folder, e))?;
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// Renews the lease every third of its lifetime while this process holds it; marks it lost
/// when another run's lease is found in its place.
async fn renew(folder: Location, run_id: String, lost: Arc<AtomicBool>) {
    let mut interval = tokio::time::interval(LEASE_TTL / 3);
    interval.tick().await;
    loop {
        interval.tick().await;
        match read(&folder).await {
            Ok(Some(current)) if current.is_mine(&run_id) => {
                let renewed = LeaseHolder::new(&run_id, now());
                if let Err(e) = folder.put(LEASE_FILE, to_json(&renewed)).await {
                    log::warn!("cannot renew the lease on {}: {e}", folder.url());
                }
            }
            Ok(_) => {
                log::error!("the lease on {} is no longer held by run {run_id}", folder.url());
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => log::warn!("cannot read the lease on {}: {e}", folder.url()),
        }
    }
}

/// The lease in `folder`, `None` if there is none.
pub async fn read(folder: &Location) -> Result<Option<LeaseHolder>, LeaseError> {
    let Some(bytes) = folder.get(LEASE_FILE).await.map_err(|e| store_error(folder, e))? else {
        return Ok(None);
    };
    let unreadable = |reason: String| LeaseError::Unreadable { folder: folder.url().to_owned(), reason };
    let holder: LeaseHolder = serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
    if holder.format != LEASE_FORMAT {
        return Err(unreadable(format!("format {}, expected {LEASE_FORMAT}", holder.format)));
    }
    Ok(Some(holder))
}

fn store_error(folder: &Location, error: StoreError) -> LeaseError {
    LeaseError::Store { folder: folder.url().to_owned(), error }
}

fn to_json(holder: &LeaseHolder) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    serde_json::to_vec_pretty(holder).unwrap_or_default()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-12-02 07:15:00 UTC` for `seconds` since the epoch.
fn unix_time(seconds: u64) -> String {
    chrono::DateTime::from_timestamp(seconds as i64, 0)
        .map_or_else(|| format!("{seconds} (unix time)"), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// This machine's name, as recorded in leases and manifests.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// Whether process `pid` of this host is running (Linux `/proc`; elsewhere assume it is, so
/// the lease waits for its expiry).
fn process_exists(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use datafusion::execution::runtime_env::RuntimeEnv;

    use super::*;

    fn folder(dir: &std::path::Path) -> Location {
        Location::create(&dir.display().to_string(), &RuntimeEnv::default()).unwrap()
    }

    #[tokio::test]
    async fn a_second_run_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let out = folder(dir.path());
        let first = Lease::acquire(&out, "run-a").await.unwrap();
        first.check().await.unwrap();

        let err = Lease::acquire(&out, "run-b").await.unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LeaseError::Held { .. }), "{err:?}");
        assert!(message.contains("in use by run run-a") && message.contains(&host_name()), "{message}");

        first.release().await.unwrap();
        assert_eq!(read(&out).await.unwrap(), None);
        Lease::acquire(&out, "run-b").await.unwrap().release().await.unwrap();
    }

    #[tokio::test]
    async fn stale_leases_are_taken_over_and_the_old_holder_notices() {
        let dir = tempfile::tempdir().unwrap();
        let out = folder(dir.path());
        let held = Lease::acquire(&out, "run-a").await.unwrap();

        // Expired, and a process of this host that is gone: both stale.
        let expired = LeaseHolder { host: "elsewhere".into(), expires: now() - 1, ..LeaseHolder::new("old", now()) };
        let dead = LeaseHolder { pid: u32::MAX, ..LeaseHolder::new("dead", now()) };
        for stale in [expired, dead] {
            out.put(LEASE_FILE, to_json(&stale)).await.unwrap();
            let taken = Lease::acquire(&out, "run-b").await.unwrap();
            assert!(read(&out).await.unwrap().unwrap().is_mine("run-b"));
            taken.release().await.unwrap();
        }
        // Another host's live lease is not stale.
        let live = LeaseHolder { host: "elsewhere".into(), ..LeaseHolder::new("run-c", now()) };
        out.put(LEASE_FILE, to_json(&live)).await.unwrap();
        assert!(matches!(Lease::acquire(&out, "run-b").await, Err(LeaseError::Held { .. })));
        let err = held.check().await.unwrap_err();
        assert!(err.to_string().contains("lost the lease"), "{err}");

        out.put(LEASE_FILE, b"{}".to_vec()).await.unwrap();
        let err = Lease::acquire(&out, "run-b").await.unwrap_err();
        assert!(err.to_string().contains("is not a fruits lease"), "{err}");
    }
}
