//! `[jobs]`, how this process runs durable jobs (concurrency, attempts, retries, leases,
//! state polls), and `[reconcile]`, how often it compares its records with the cloud.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backoff;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Jobs run at the same time by this process.
    pub concurrency: usize,
    /// Attempts before a job that keeps failing is parked as `failed`. Transient failures
    /// (throttling, 5xx, connection errors, timeouts) are not counted: they are retried until
    /// they have lasted `transient_budget_secs`.
    pub max_attempts: i64,
    /// Seconds a job's transient failures in a row may last before it is parked as `failed`.
    pub transient_budget_secs: f64,
    /// Seconds before the first retry (`CORRAL_JOB_RETRY_DELAY`); doubles with every attempt
    /// up to `retry_max_delay_secs`.
    pub retry_delay_secs: f64,
    pub retry_max_delay_secs: f64,
    /// How often idle workers look for due jobs when nothing wakes them.
    pub poll_interval_ms: u64,
    /// Lease on a claimed job; renewed while the job runs, so a dead worker's job is re-claimed.
    pub lease_secs: u64,
    /// At shutdown, how long running jobs may take to finish before they are handed back.
    pub shutdown_grace_secs: f64,
    /// First pause between state polls of a waiting job; doubles up to `state_poll_max_ms`.
    pub state_poll_initial_ms: u64,
    pub state_poll_max_ms: u64,
    /// How long one attempt waits for instances to reach their target state.
    pub state_wait_timeout_secs: u64,
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            concurrency: 4,
            max_attempts: 3,
            transient_budget_secs: 600.0,
            retry_delay_secs: 2.0,
            retry_max_delay_secs: 300.0,
            poll_interval_ms: 1_000,
            lease_secs: 60,
            shutdown_grace_secs: 10.0,
            state_poll_initial_ms: 1_000,
            state_poll_max_ms: 10_000,
            state_wait_timeout_secs: 600,
        }
    }
}

impl JobSettings {
    /// Delay before the attempt after `attempts` failed ones: base × 2^(attempts-1), capped.
    pub fn backoff(&self, attempts: i64) -> Duration {
        backoff(self.retry_delay_secs, self.retry_max_delay_secs, attempts)
    }

    /// Delay after the `failures`-th transient failure in a row: as `backoff`, at most 30 s, so
    /// that a cloud that recovers is noticed soon.
    pub fn transient_backoff(&self, failures: i64) -> Duration {
        backoff(self.retry_delay_secs, self.retry_max_delay_secs.min(TRANSIENT_MAX_DELAY), failures)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    pub(super) fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.concurrency == 0 {
            problems.push("jobs.concurrency: must be at least 1".to_string());
        }
        if self.max_attempts < 1 {
            problems.push("jobs.max_attempts: must be at least 1".to_string());
        }
        if !self.transient_budget_secs.is_finite() || self.transient_budget_secs < 0.0 {
            problems.push("jobs.transient_budget_secs: must be at least 0".to_string());
        }
        if !self.shutdown_grace_secs.is_finite() || self.shutdown_grace_secs < 0.0 {
            problems.push("jobs.shutdown_grace_secs: must be at least 0".to_string());
        }
        if self.lease_secs < 3 {
            problems.push("jobs.lease_secs: must be at least 3".to_string());
        }
        let (delay, max_delay) = (self.retry_delay_secs, self.retry_max_delay_secs);
        if !delay.is_finite() || !max_delay.is_finite() || delay < 0.0 || max_delay < delay {
            problems.push(
                "jobs.retry_delay_secs: must be at least 0 and at most jobs.retry_max_delay_secs"
                    .to_string(),
            );
        }
        problems
    }
}

/// The longest pause between two tries of a job failing transiently, in seconds.
const TRANSIENT_MAX_DELAY: f64 = 30.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// Seconds between two reconcile passes (`CORRAL_RECONCILE_INTERVAL`); 0 turns the
    /// periodic pass off (forced refreshes still work).
    pub interval_secs: f64,
}

impl Default for ReconcileSettings {
    fn default() -> ReconcileSettings {
        ReconcileSettings { interval_secs: 60.0 }
    }
}

impl ReconcileSettings {
    pub(super) fn validate(&self) -> Vec<String> {
        if self.interval_secs.is_finite() && self.interval_secs >= 0.0 {
            return Vec::new();
        }
        vec!["reconcile.interval_secs: must be at least 0".to_string()]
    }
}
