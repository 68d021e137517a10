//! An in-memory `Provider` for unit tests of what the emulator cannot show: instances that stay
//! `pending` for a while, instances that Describe does not return yet (eventual consistency),
//! refusals such as `IdempotentParameterMismatch`, and launches that take long or panic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::cloud::{
    CloudError, CloudInstance, LaunchRequest, Provider, SecurityGroupSpec, TAG_JOB_ID,
};
use crate::domain::{Action, ImageFacts, InstanceState, InstanceTypeFacts};

#[derive(Default)]
pub struct FakeProvider {
    pub state: Mutex<FakeState>,
}

#[derive(Default)]
pub struct FakeState {
    pub instances: BTreeMap<String, FakeInstance>,
    /// Calls made, by name.
    pub calls: BTreeMap<&'static str, u32>,
    /// Launched instances stay `pending` for this many Describe calls.
    pub pending_polls: u32,
    /// Launched instances are missing from Describe for this many calls.
    pub invisible_polls: u32,
    /// The next launch fails with this error.
    pub launch_error: Option<CloudError>,
    /// The next launch panics, as a bug in a job's body would.
    pub launch_panics: bool,
    /// Every launch takes this long before it answers.
    pub launch_delay: Duration,
    /// Key pairs by (region, name): their public keys.
    pub key_pairs: BTreeMap<(String, String), String>,
    /// Security groups by id: (region, their `corral:job-id` tag).
    pub security_groups: BTreeMap<String, (String, String)>,
    /// EBS volumes by id: their sizes in GiB.
    pub volumes: BTreeMap<String, i64>,
}

pub struct FakeInstance {
    pub cloud: CloudInstance,
    pending_left: u32,
    invisible_left: u32,
}

impl FakeProvider {
    pub fn calls(&self, name: &str) -> u32 {
        self.state.lock().unwrap().calls.get(name).copied().unwrap_or_default()
    }

    /// Puts an instance in the cloud as if an earlier launch had made it.
    pub fn insert(&self, cloud: CloudInstance) {
        let fake = FakeInstance { cloud, pending_left: 0, invisible_left: 0 };
        self.state.lock().unwrap().instances.insert(fake.cloud.cloud_id.clone(), fake);
    }

    fn count(&self, name: &'static str) {
        *self.state.lock().unwrap().calls.entry(name).or_default() += 1;
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn describe_endpoint(&self) -> String {
        "fake".to_string()
    }

    async fn credentials_env(&self) -> Result<Vec<(String, String)>, CloudError> {
        Ok(Vec::new())
    }

    async fn describe_image(&self, _region: &str, ami: &str) -> Result<ImageFacts, CloudError> {
        self.count("describe_image");
        Ok(ImageFacts {
            id: ami.to_string(),
            owner_id: "137112412989".to_string(),
            owner_alias: Some("amazon".to_string()),
            architecture: "x86_64".to_string(),
            root_device_name: Some("/dev/xvda".to_string()),
            name: Some("al2023-ami-2023.6-kernel-6.1-x86_64".to_string()),
        })
    }

    async fn describe_instance_type(
        &self,
        _region: &str,
        instance_type: &str,
    ) -> Result<InstanceTypeFacts, CloudError> {
        self.count("describe_instance_type");
        Ok(InstanceTypeFacts {
            name: instance_type.to_string(),
            architectures: vec!["x86_64".to_string()],
            vcpus: 2,
            burstable: true,
        })
    }

    async fn find_tagged(
        &self,
        _region: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        self.count("find_tagged");
        let state = self.state.lock().unwrap();
        Ok(state
            .instances
            .values()
            .filter(|i| i.cloud.tags.get(key).map(String::as_str) == Some(value))
            .map(|i| i.cloud.clone())
            .collect())
    }

    async fn find_tag_key(
        &self,
        _region: &str,
        key: &str,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        self.count("find_tag_key");
        let state = self.state.lock().unwrap();
        Ok(state
            .instances
            .values()
            .filter(|i| i.cloud.tags.contains_key(key))
            .map(|i| i.cloud.clone())
            .collect())
    }

    async fn launch(
        &self,
        _region: &str,
        request: &LaunchRequest,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        self.count("launch");
        let (panics, delay) = {
            let mut state = self.state.lock().unwrap();
            (std::mem::take(&mut state.launch_panics), state.launch_delay)
        };
        // The lock is released first, so that the panic does not poison it.
        if panics {
            panic!("the fake provider panics on launch");
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.state.lock().unwrap();
        if let Some(err) = state.launch_error.take() {
            return Err(err);
        }
        let mut launched = Vec::new();
        for idx in 0..request.count {
            let cloud = CloudInstance {
                cloud_id: format!("i-{:017x}", state.instances.len() + 1),
                state: InstanceState::Pending,
                public_ip: None,
                private_ip: Some(format!("10.0.0.{}", state.instances.len() + 1)),
                ami: Some(request.ami.clone()),
                instance_type: Some(request.instance_type.clone()),
                launch_index: idx,
                tags: request.tags.clone(),
                state_reason: None,
                key_name: request.key_name.clone(),
                security_groups: request.security_group_ids.clone(),
                root_volume: Some(format!("vol-{:017x}", state.instances.len() + 1)),
            };
            let volume = cloud.root_volume.clone().unwrap_or_default();
            state.volumes.insert(volume, request.storage_gb);
            let fake = FakeInstance {
                cloud: cloud.clone(),
                pending_left: state.pending_polls,
                invisible_left: state.invisible_polls,
            };
            state.instances.insert(cloud.cloud_id.clone(), fake);
            launched.push(cloud);
        }
        Ok(launched)
    }

    async fn tag(
        &self,
        _region: &str,
        cloud_ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), CloudError> {
        self.count("tag");
        let mut state = self.state.lock().unwrap();
        for id in cloud_ids {
            if let Some(instance) = state.instances.get_mut(id) {
                instance.cloud.tags.extend(tags.clone());
            }
        }
        Ok(())
    }

    async fn untag(
        &self,
        _region: &str,
        cloud_ids: &[String],
        keys: &[String],
    ) -> Result<(), CloudError> {
        self.count("untag");
        let mut state = self.state.lock().unwrap();
        for id in cloud_ids {
            if let Some(instance) = state.instances.get_mut(id) {
                instance.cloud.tags.retain(|key, _| !keys.contains(key));
            }
        }
        Ok(())
    }

    async fn describe(
        &self,
        _region: &str,
        cloud_ids: &[String],
    ) -> Result<Vec<CloudInstance>, CloudError> {
        self.count("describe");
        let mut state = self.state.lock().unwrap();
        let mut found = Vec::new();
        for id in cloud_ids {
            let Some(instance) = state.instances.get_mut(id) else { continue };
            if instance.invisible_left > 0 {
                instance.invisible_left -= 1;
                continue;
            }
            if instance.cloud.state == InstanceState::Pending {
                if instance.pending_left > 0 {
                    instance.pending_left -= 1;
                } else {
                    instance.cloud.state = InstanceState::Running;
                    instance.cloud.public_ip = Some("203.0.113.10".to_string());
                }
            }
            found.push(instance.cloud.clone());
        }
        Ok(found)
    }

    async fn volume_sizes(
        &self,
        _region: &str,
        volume_ids: &[String],
    ) -> Result<HashMap<String, i64>, CloudError> {
        self.count("volume_sizes");
        let state = self.state.lock().unwrap();
        Ok(volume_ids.iter().filter_map(|id| Some((id.clone(), *state.volumes.get(id)?))).collect())
    }

    async fn apply(
        &self,
        _region: &str,
        action: Action,
        cloud_ids: &[String],
    ) -> Result<(), CloudError> {
        self.count("apply");
        let mut state = self.state.lock().unwrap();
        for id in cloud_ids {
            if let Some(instance) = state.instances.get_mut(id)
                && let Some(target) = action.target_state()
            {
                instance.cloud.state = target;
            }
        }
        Ok(())
    }

    async fn ensure_key_pair(
        &self,
        region: &str,
        name: &str,
        public_key: &str,
        _tags: &BTreeMap<String, String>,
    ) -> Result<bool, CloudError> {
        self.count("ensure_key_pair");
        let mut state = self.state.lock().unwrap();
        let key = (region.to_string(), name.to_string());
        Ok(state.key_pairs.insert(key, public_key.to_string()).is_none())
    }

    async fn delete_key_pair(&self, region: &str, name: &str) -> Result<bool, CloudError> {
        self.count("delete_key_pair");
        let mut state = self.state.lock().unwrap();
        Ok(state.key_pairs.remove(&(region.to_string(), name.to_string())).is_some())
    }

    async fn ensure_security_group(
        &self,
        region: &str,
        spec: &SecurityGroupSpec,
    ) -> Result<String, CloudError> {
        self.count("ensure_security_group");
        let job_id = spec.tags.get(TAG_JOB_ID).cloned().unwrap_or_default();
        let mut state = self.state.lock().unwrap();
        if let Some((id, _)) = state.security_groups.iter().find(|(_, (_, tag))| *tag == job_id) {
            return Ok(id.clone());
        }
        let id = format!("sg-{:017x}", state.security_groups.len() + 1);
        state.security_groups.insert(id.clone(), (region.to_string(), job_id));
        Ok(id)
    }

    async fn find_security_groups(
        &self,
        region: &str,
        _key: &str,
        values: &[String],
    ) -> Result<Vec<(String, String)>, CloudError> {
        self.count("find_security_groups");
        let state = self.state.lock().unwrap();
        Ok(state
            .security_groups
            .iter()
            .filter(|(_, (group_region, tag))| group_region == region && values.contains(tag))
            .map(|(id, (_, tag))| (id.clone(), tag.clone()))
            .collect())
    }

    async fn delete_security_group(&self, _region: &str, group_id: &str) -> Result<(), CloudError> {
        self.count("delete_security_group");
        self.state.lock().unwrap().security_groups.remove(group_id);
        Ok(())
    }
}
