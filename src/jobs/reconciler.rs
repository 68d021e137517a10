//! The periodic reconcile pass: every live instance is compared with the cloud, one region at
//! a time, in batches (one tag-filtered scan per region finds known instances and orphans alike;
//! only known instances the scan missed are described by id).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::jobs::JobContext;
use crate::jobs::JobError;
use crate::jobs::kinds::refresh_region;
use crate::storage::now_millis;

/// Runs a pass every `interval` until `shutdown`; a zero interval turns the loop off. Processes
/// sharing a database take turns through the `reconciler` lease: one holds it while it keeps
/// passing, another takes it over once it has expired (three intervals without a pass), or at
/// its next interval when the holder stops, which gives it up.
pub async fn run_reconciler(
    ctx: Arc<JobContext>,
    interval: Duration,
    holder: String,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => {
                if let Err(err) = ctx.store.release_lease("reconciler", &holder).await {
                    tracing::warn!(error = ?err, "giving the reconciler lease up failed");
                }
                return;
            }
        }
        let until = now_millis() + 3 * interval.as_millis() as i64;
        match ctx.store.try_lease("reconciler", &holder, until).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => {
                tracing::warn!(error = ?err, "taking the reconciler lease failed");
                continue;
            }
        }
        match reconcile_all(&ctx).await {
            Ok(summary) => tracing::info!(
                instances = summary.instances,
                drifted = summary.drifted,
                missing = summary.missing,
                orphans = summary.orphans,
                "reconcile pass done"
            ),
            Err(err) => tracing::warn!(error = %err, "reconcile pass failed; will try again"),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileSummary {
    pub instances: usize,
    pub drifted: usize,
    pub missing: usize,
    pub orphans: usize,
}

/// One pass over every region the policy allows and every region with live instances.
pub async fn reconcile_all(ctx: &JobContext) -> Result<ReconcileSummary, JobError> {
    let live = ctx.store.live_instances().await?;
    let unfinished: HashSet<String> = ctx.store.unfinished_job_ids().await?.into_iter().collect();
    let mut regions: Vec<String> = ctx.policy.regions.clone();
    regions.extend(live.keys().filter(|r| !ctx.policy.regions.contains(r)).cloned());
    let mut summary = ReconcileSummary::default();
    for region in regions {
        let known = live.get(&region).map(Vec::as_slice).unwrap_or_default();
        let outcome = refresh_region(ctx, &region, known, Some(&unfinished)).await?;
        summary.instances += known.len();
        summary.drifted += outcome.drifted;
        summary.missing += outcome.missing;
        summary.orphans += outcome.orphans;
    }
    Ok(summary)
}
