//! Worker loops: claim, run under a renewed lease, record the outcome.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::jobs::{JobContext, JobError, JobRun, Queue, kinds};
use crate::storage::{JobOutcome, JobView, Millis, now_millis};

/// How soon a job that could not go on yet (`JobError::NotYet`) runs again.
const NOT_YET_DELAY: Duration = Duration::from_secs(5);

/// Runs `ctx.settings.concurrency` workers until `shutdown` is cancelled, then lets running jobs
/// finish for a grace period and hands back the rest.
pub async fn run_workers(ctx: Arc<JobContext>, queue: Queue, shutdown: CancellationToken) {
    let process = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let mut workers = JoinSet::new();
    for idx in 0..ctx.settings.concurrency {
        let worker = Worker {
            id: format!("{process}-{idx}"),
            ctx: ctx.clone(),
            queue: queue.clone(),
            shutdown: shutdown.clone(),
        };
        workers.spawn(worker.run());
    }
    while workers.join_next().await.is_some() {}
}

struct Worker {
    id: String,
    ctx: Arc<JobContext>,
    queue: Queue,
    shutdown: CancellationToken,
}

impl Worker {
    async fn event(&self, job_id: &str, attempt: i64, kind: &str, message: &str) {
        if let Err(err) = self.ctx.store.append_job_event(job_id, attempt, kind, message).await {
            tracing::warn!(error = ?err, "recording a job event failed");
        }
    }

    async fn run(self) {
        let poll = Duration::from_millis(self.ctx.settings.poll_interval_ms);
        while !self.shutdown.is_cancelled() {
            let wake = self.queue.wake.notified();
            match self.ctx.store.claim_job(&self.id, self.lease_until()).await {
                Ok(Some(job)) => self.run_job(job).await,
                Ok(None) => {
                    tokio::select! {
                        _ = wake => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                Err(err) => {
                    tracing::error!(worker = %self.id, error = ?err, "claiming a job failed");
                    tokio::time::sleep(poll).await;
                }
            }
        }
    }

    fn lease_until(&self) -> Millis {
        now_millis() + self.ctx.settings.lease().as_millis() as Millis
    }

    #[tracing::instrument(skip_all, fields(job.id = %job.job.id, job.kind = %job.job.kind, job.attempt = job.job.attempts))]
    async fn run_job(&self, job: JobView) {
        let job_id = job.job.id.clone();
        let job_record = job.job.clone();
        let attempts = job.job.attempts;
        let max_attempts = job.job.max_attempts;
        let transient = match job.job.transient_failures {
            0 => String::new(),
            n => format!("; {n} transient failure(s) before it, not counted"),
        };
        self.event(
            &job_id,
            attempts,
            "step",
            &format!(
                "attempt {attempts} of {max_attempts} started by worker {}{transient}",
                self.id
            ),
        )
        .await;
        let ctx = self.ctx.clone();
        // A spawned task isolates panics: they surface as a `JoinError` instead of killing the
        // worker.
        let worker = self.id.clone();
        let mut body = tokio::spawn(async move {
            kinds::run(&JobRun { ctx: &ctx, job: &job, worker: &worker }).await
        });
        let renew_every = self.ctx.settings.lease() / 3;
        let mut grace: Option<tokio::time::Instant> = None;
        let result = loop {
            let grace_over = async {
                match grace {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                joined = &mut body => break match joined {
                    Ok(result) => Some(result),
                    Err(err) if err.is_panic() => Some(Err(JobError::Retryable(format!("job panicked: {err}")))),
                    Err(err) => Some(Err(JobError::Retryable(format!("job was cancelled: {err}")))),
                },
                _ = tokio::time::sleep(renew_every) => {
                    match self.ctx.store.renew_lease(&job_id, &self.id, self.lease_until()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("lease lost; another worker owns the job now");
                            body.abort();
                            return;
                        }
                        Err(err) => tracing::warn!(error = ?err, "renewing the lease failed"),
                    }
                }
                _ = self.shutdown.cancelled(), if grace.is_none() => {
                    grace = Some(tokio::time::Instant::now() + Duration::from_secs_f64(self.ctx.settings.shutdown_grace_secs));
                }
                _ = grace_over => {
                    body.abort();
                    break None;
                }
            }
        };
        let outcome = match result {
            None => JobOutcome::HandBack {
                reason: "handed back at shutdown".to_string(),
                run_at: now_millis(),
            },
            Some(Ok(())) => JobOutcome::Succeeded,
            Some(Err(JobError::NotYet(reason))) => JobOutcome::HandBack {
                reason,
                run_at: now_millis() + NOT_YET_DELAY.as_millis() as Millis,
            },
            Some(Err(JobError::Permanent(error))) => JobOutcome::Failed { error },
            Some(Err(JobError::Transient(error))) => self.after_transient(&job_record, error),
            Some(Err(JobError::Retryable(error))) if attempts >= max_attempts => {
                JobOutcome::Failed { error: format!("gave up after {attempts} attempts: {error}") }
            }
            Some(Err(JobError::Retryable(error))) => {
                let delay = self.ctx.settings.backoff(attempts);
                JobOutcome::Retry { error, run_at: now_millis() + delay.as_millis() as Millis }
            }
        };
        // The outcome and its history are written together, so that whoever sees the job
        // finished also sees how it ended; a worker that lost its lease has no say.
        let events: Vec<(&str, String)> = match &outcome {
            JobOutcome::Succeeded => vec![("outcome", "succeeded".to_string())],
            JobOutcome::Failed { error } => {
                vec![("error", error.clone()), ("outcome", "failed".to_string())]
            }
            JobOutcome::Retry { error, run_at } => {
                let delay = (run_at - now_millis()).max(0) as f64 / 1000.0;
                vec![("error", format!("{error}; retrying in {delay:.1}s"))]
            }
            JobOutcome::HandBack { reason, run_at } => {
                let delay = (run_at - now_millis()).max(0) as f64 / 1000.0;
                vec![("step", format!("{reason}; attempt not counted, again in {delay:.1}s"))]
            }
            JobOutcome::Transient { error, run_at } => {
                let now = now_millis();
                let delay = (run_at - now).max(0) as f64 / 1000.0;
                let lasted = (now - job_record.transient_since.unwrap_or(now)) as f64 / 1000.0;
                let left = (self.ctx.settings.transient_budget_secs - lasted).max(0.0);
                vec![(
                    "error",
                    format!(
                        "{error}; transient, not counted against the {max_attempts} attempts: \
                         retrying in {delay:.1}s ({} in a row, {left:.0}s of the transient \
                         budget left)",
                        job_record.transient_failures + 1
                    ),
                )]
            }
        };
        match self.ctx.store.finish_job(&job_id, &self.id, &outcome, attempts, &events).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("lease lost before the outcome was recorded");
                return;
            }
            Err(err) => {
                tracing::error!(error = ?err, "recording the job outcome failed");
                return;
            }
        }
        match &outcome {
            JobOutcome::Succeeded => {
                tracing::info!("job succeeded");
                self.queue.announce_finished(&job_id);
            }
            JobOutcome::Failed { error } => {
                tracing::warn!(%error, "job failed");
                self.queue.announce_finished(&job_id);
            }
            JobOutcome::Retry { error, .. } => {
                tracing::warn!(%error, "job attempt failed; will retry");
                self.queue.wake_workers();
            }
            JobOutcome::HandBack { reason, .. } => {
                tracing::info!(%reason, "job handed back");
                self.queue.wake_workers();
            }
            JobOutcome::Transient { error, .. } => {
                tracing::warn!(%error, "job hit a transient failure; will retry, uncounted");
                self.queue.wake_workers();
            }
        }
    }

    /// The outcome of an attempt that failed transiently: tried again after a capped backoff,
    /// uncounted, until the job's transient failures in a row have lasted the budget.
    fn after_transient(&self, job: &crate::storage::JobRecord, error: String) -> JobOutcome {
        let settings = &self.ctx.settings;
        let now = now_millis();
        let failures = job.transient_failures + 1;
        if crate::jobs::transient_budget_spent(job, settings) {
            let lasted = (now - job.transient_since.unwrap_or(now)) as f64 / 1000.0;
            return JobOutcome::Failed {
                error: format!(
                    "gave up after {lasted:.0}s of transient failures ({failures} in a row, the \
                     budget is {:.0}s): {error}",
                    settings.transient_budget_secs
                ),
            };
        }
        let delay = settings.transient_backoff(failures);
        JobOutcome::Transient { error, run_at: now + delay.as_millis() as Millis }
    }
}
