//! The durable job queue's runtime: workers that claim jobs from the database, run them, and
//! record how each attempt ended.
//!
//! - `Queue` is the handle the API holds: it wakes workers after an enqueue and lets a request
//!   wait for a job to finish (`?wait=`).
//! - `worker` claims jobs under a lease, renews the lease while a job runs, isolates panics and
//!   turns each result into succeeded / retry-with-backoff / failed.
//! - `kinds` holds one module per job kind. Each is a reconciler: it observes the cloud, takes the
//!   next step, records what the cloud reported, and is safe to run again after any crash.
//!   Every step is written to the job's history (`JobRun::step`).
//! - `reconciler` periodically compares every live instance with the cloud: state and IPs,
//!   drift, instances gone missing, and orphans (tagged by corral but unknown to it).
//!
//! Enqueueing is not here: a job row is written by `storage` in the same transaction as the
//! domain change that needs it.

mod kinds;
mod reconciler;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

use crate::cloud::{Catalog, CloudError, DescribeBatcher, Provider};
use crate::config::JobSettings;
use crate::domain::Policy;
use crate::storage::{JobView, StorageError, Store};

pub use kinds::{CreatePayload, DeleteKeyPairPayload, TagPayload};
pub use reconciler::{reconcile_all, run_reconciler};
pub use worker::run_workers;

/// What a job body needs: the database, the cloud, and the rules.
pub struct JobContext {
    pub store: Store,
    pub provider: Arc<dyn Provider>,
    pub catalog: std::sync::Arc<Catalog>,
    /// State polls go through here so that jobs waiting in one region share calls.
    pub describer: DescribeBatcher,
    pub policy: Policy,
    pub settings: JobSettings,
    /// How this process runs Terraform; `None` when `terraform` is not installed here.
    pub terraform: Option<Arc<crate::terraform::Terraform>>,
}

/// Shared handle between the API and the workers of one process.
#[derive(Clone)]
pub struct Queue {
    store: Store,
    wake: Arc<Notify>,
    finished: broadcast::Sender<String>,
}

impl Queue {
    pub fn new(store: Store) -> Queue {
        let (finished, _) = broadcast::channel(1024);
        Queue { store, wake: Arc::new(Notify::new()), finished }
    }

    /// Tells idle workers that a job was enqueued.
    pub fn wake_workers(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Waits until job `id` has finished or `timeout` has passed, and returns it as it is then.
    /// Finishing is announced in-process; a periodic re-read covers jobs finished elsewhere.
    pub async fn wait_for(&self, id: &str, timeout: Duration) -> Result<JobView, StorageError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut finished = self.finished.subscribe();
        loop {
            let view = self.store.get_job(id).await?.ok_or_else(|| {
                StorageError::Corrupt(format!("job {id} disappeared while waited for"))
            })?;
            if view.job.status.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(view);
            }
            let recheck = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
            loop {
                tokio::select! {
                    message = finished.recv() => match message {
                        Ok(done) if done != id => continue,
                        _ => break,
                    },
                    _ = tokio::time::sleep_until(recheck) => break,
                }
            }
        }
    }

    /// Relays what other processes sharing the database did: new jobs wake this process's
    /// workers, finished jobs release its waiters.
    pub async fn relay(&self, mut events: tokio::sync::mpsc::Receiver<crate::storage::StoreEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                crate::storage::StoreEvent::JobQueued(_) => self.wake_workers(),
                crate::storage::StoreEvent::JobFinished(id) => self.announce_finished(&id),
            }
        }
    }

    fn announce_finished(&self, id: &str) {
        // Nobody waiting is fine.
        let _ = self.finished.send(id.to_string());
    }
}

/// One attempt of one job, as seen by the job's body.
pub struct JobRun<'a> {
    pub ctx: &'a JobContext,
    pub job: &'a JobView,
    /// The worker holding the job's lease.
    pub worker: &'a str,
}

impl JobRun<'_> {
    /// Whether `err` ends the job: it is permanent, this was the last counted attempt, or the
    /// job's transient failures have lasted their budget.
    pub fn is_final(&self, err: &JobError) -> bool {
        let job = &self.job.job;
        match err {
            JobError::Permanent(_) => true,
            JobError::Retryable(_) => job.attempts >= job.max_attempts,
            JobError::Transient(_) => transient_budget_spent(job, &self.ctx.settings),
            JobError::NotYet(_) => false,
        }
    }

    /// Records a step in the job's history. History is for people: failing to write it is
    /// logged, not fatal.
    pub async fn step(&self, message: impl AsRef<str>) {
        let message = message.as_ref();
        tracing::info!(job.id = %self.job.job.id, "{message}");
        let job = &self.job.job;
        if let Err(err) =
            self.ctx.store.append_job_event(&job.id, job.attempts, "step", message).await
        {
            tracing::warn!(error = ?err, "recording a job step failed");
        }
    }
}

/// Why an attempt of a job did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The cloud is briefly unwell (throttling, 5xx answers, connection errors, timeouts): the
    /// attempt is not counted, and the job is tried again until its transient failures in a
    /// row have lasted `jobs.transient_budget_secs`.
    #[error("{0}")]
    Transient(String),
    /// Another attempt may succeed, but this one counts against `max_attempts`: a wait that
    /// timed out, a panic, the database being busy.
    #[error("{0}")]
    Retryable(String),
    /// No attempt can succeed: the request is invalid or the cloud refused it.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: the job cannot go on until another job has finished. The attempt is
    /// handed back, uncounted, and the job runs again shortly, its worker free meanwhile.
    #[error("{0}")]
    NotYet(String),
}

/// Whether a transient failure of the attempt `job` was claimed for ends the job: its run of
/// transient failures had lasted the budget when the attempt began. Measured at the claim
/// (`updated_at` of the claimed record), so that the job's body (cleaning up after a final
/// failure) and the worker (recording it) always decide alike.
pub(crate) fn transient_budget_spent(
    job: &crate::storage::JobRecord,
    settings: &JobSettings,
) -> bool {
    let claimed_at = job.updated_at;
    let since = job.transient_since.unwrap_or(claimed_at);
    (claimed_at - since) as f64 >= settings.transient_budget_secs * 1000.0
}

impl From<CloudError> for JobError {
    fn from(err: CloudError) -> JobError {
        if err.is_retryable() {
            JobError::Transient(err.to_string())
        } else {
            JobError::Permanent(err.to_string())
        }
    }
}

impl From<StorageError> for JobError {
    fn from(err: StorageError) -> JobError {
        match err {
            StorageError::Corrupt(message) => JobError::Permanent(message),
            StorageError::Database(err) => JobError::Retryable(format!("database error: {err}")),
        }
    }
}
