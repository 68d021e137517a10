//! A cache of AMI and instance-type facts in front of a `Provider`.
//!
//! Policy checks need the architecture and owner of an AMI and the architectures of an instance
//! type for every create job; both change rarely, so they are looked up once per region and kept
//! for `ttl`. Errors are not cached: an AMI that does not exist yet may exist in a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cloud::{CloudError, Provider};
use crate::domain::{ImageFacts, InstanceTypeFacts};

type Key = (String, String);

pub struct Catalog {
    provider: Arc<dyn Provider>,
    ttl: Duration,
    images: Mutex<HashMap<Key, (Instant, ImageFacts)>>,
    instance_types: Mutex<HashMap<Key, (Instant, InstanceTypeFacts)>>,
}

impl Catalog {
    pub fn new(provider: Arc<dyn Provider>, ttl: Duration) -> Catalog {
        Catalog {
            provider,
            ttl,
            images: Mutex::new(HashMap::new()),
            instance_types: Mutex::new(HashMap::new()),
        }
    }

    pub async fn image(&self, region: &str, ami: &str) -> Result<ImageFacts, CloudError> {
        let key = (region.to_string(), ami.to_string());
        if let Some(facts) = self.cached(&self.images, &key) {
            return Ok(facts);
        }
        let facts = self.provider.describe_image(region, ami).await?;
        self.images.lock().unwrap().insert(key, (Instant::now(), facts.clone()));
        Ok(facts)
    }

    pub async fn instance_type(
        &self,
        region: &str,
        instance_type: &str,
    ) -> Result<InstanceTypeFacts, CloudError> {
        if let Some(facts) = self.cached_instance_type(region, instance_type) {
            return Ok(facts);
        }
        let key = (region.to_string(), instance_type.to_string());
        let facts = self.provider.describe_instance_type(region, instance_type).await?;
        self.instance_types.lock().unwrap().insert(key, (Instant::now(), facts.clone()));
        Ok(facts)
    }

    /// The facts of an instance type if they are cached and fresh; never calls the cloud.
    pub fn cached_instance_type(
        &self,
        region: &str,
        instance_type: &str,
    ) -> Option<InstanceTypeFacts> {
        self.cached(&self.instance_types, &(region.to_string(), instance_type.to_string()))
    }

    fn cached<T: Clone>(&self, map: &Mutex<HashMap<Key, (Instant, T)>>, key: &Key) -> Option<T> {
        let map = map.lock().unwrap();
        map.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, facts)| facts.clone())
    }
}
