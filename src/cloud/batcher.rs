//! Coalesces DescribeInstances calls: every job waiting on instances in a region within the same
//! short window shares one call (EC2 takes up to 1000 ids per call), instead of each job polling
//! on its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::cloud::{CloudError, CloudInstance, Provider};

type Described = Result<Arc<HashMap<String, CloudInstance>>, CloudError>;

#[derive(Default)]
struct Pending {
    ids: BTreeSet<String>,
    waiters: Vec<oneshot::Sender<Described>>,
}

#[derive(Clone)]
pub struct DescribeBatcher {
    provider: Arc<dyn Provider>,
    window: Duration,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

impl DescribeBatcher {
    pub fn new(provider: Arc<dyn Provider>, window: Duration) -> DescribeBatcher {
        DescribeBatcher { provider, window, pending: Arc::default() }
    }

    /// Describes `cloud_ids` in `region`, together with whatever else is asked for in the same
    /// window. Ids the cloud does not know are left out.
    pub async fn describe(
        &self,
        region: &str,
        cloud_ids: &[String],
    ) -> Result<Vec<CloudInstance>, CloudError> {
        let (sender, receiver) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap();
            let first = !pending.contains_key(region);
            let batch = pending.entry(region.to_string()).or_default();
            batch.ids.extend(cloud_ids.iter().cloned());
            batch.waiters.push(sender);
            first
        };
        if first {
            // A task of its own: the batch goes out even if this caller gives up waiting.
            let batcher = self.clone();
            let region = region.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(batcher.window).await;
                let batch = batcher.pending.lock().unwrap().remove(&region).unwrap_or_default();
                let ids: Vec<String> = batch.ids.into_iter().collect();
                let described = batcher.provider.describe(&region, &ids).await.map(|found| {
                    Arc::new(found.into_iter().map(|i| (i.cloud_id.clone(), i)).collect())
                });
                for waiter in batch.waiters {
                    let _ = waiter.send(described.clone());
                }
            });
        }
        let described = receiver.await.map_err(|_| {
            CloudError::Transient("the batched describe call was lost".to_string())
        })??;
        Ok(cloud_ids.iter().filter_map(|id| described.get(id).cloned()).collect())
    }
}
