//! `Provider` for AWS EC2 through the official AWS SDK for Rust.
//!
//! This is the only module that imports `aws_sdk_*` and `aws_config`. Credentials and the default
//! region come from the standard AWS chain (env, profiles, IMDS); `AWS_ENDPOINT_URL` or
//! `aws.endpoint_url` points every call at an emulator instead. SDK errors become `CloudError`
//! here, once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, CreditSpecificationRequest, EbsBlockDevice, Filter, Instance, InstanceType,
    IpPermission, IpRange, Ipv6Range, ResourceType, Tag, TagSpecification, VolumeType,
};
use base64::Engine;

use crate::cloud::limiter::{ApiClass, RateLimiter};
use crate::cloud::{
    CloudError, CloudInstance, LaunchRequest, Provider, SecurityGroupSpec, TAG_JOB_ID,
    TAG_NAMESPACE,
};
use crate::config::AwsSettings;
use crate::domain::{Action, CpuCredits, ImageFacts, InstanceState, InstanceTypeFacts};

/// EC2 accepts up to 1000 instance ids in one Describe call.
const DESCRIBE_BATCH: usize = 1000;
/// Most instance ids sent in one start, stop, reboot or terminate call.
const ACTION_BATCH: usize = 1000;
/// Most values one filter of a Describe call takes.
const FILTER_VALUES: usize = 200;

pub struct AwsProvider {
    sdk_config: aws_config::SdkConfig,
    clients: Mutex<HashMap<String, Client>>,
    /// One budget for every call of this process; the credentials name one account.
    limiter: RateLimiter,
}

impl AwsProvider {
    pub async fn from_settings(settings: &AwsSettings) -> AwsProvider {
        let region = RegionProviderChain::default_provider().or_else("us-east-1");
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(settings.call_timeout_secs))
            .build();
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(region).timeout_config(timeouts);
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(key_id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key)
        {
            let secret = secrecy::ExposeSecret::expose_secret(secret);
            let credentials = Credentials::new(key_id, secret, None, None, "corral-config");
            loader = loader.credentials_provider(credentials);
        }
        AwsProvider {
            sdk_config: loader.load().await,
            clients: Mutex::new(HashMap::new()),
            limiter: RateLimiter::new(settings.rate_limits),
        }
    }

    /// The emulator or custom endpoint calls go to, if not AWS itself.
    pub fn endpoint_url(&self) -> Option<&str> {
        self.sdk_config.endpoint_url()
    }

    /// Whether the credential chain yields any credentials at all.
    pub async fn has_credentials(&self) -> bool {
        use aws_sdk_ec2::config::ProvideCredentials as _;
        match self.sdk_config.credentials_provider() {
            Some(provider) => {
                tokio::time::timeout(Duration::from_secs(5), provider.provide_credentials())
                    .await
                    .is_ok_and(|res| res.is_ok())
            }
            None => false,
        }
    }

    /// Makes one call under the rate limit, and slows the bucket down if the cloud throttles.
    async fn send<T, E, R>(
        &self,
        region: &str,
        class: ApiClass,
        call: impl std::future::Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, CloudError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        self.limiter.acquire(region, class).await;
        call.await.map_err(|err| self.classify(region, class, err))
    }

    fn classify<E, R>(&self, region: &str, class: ApiClass, err: SdkError<E, R>) -> CloudError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let err = classify(err);
        if matches!(err, CloudError::Throttled { .. }) {
            self.limiter.slow_down(region, class);
        }
        err
    }

    /// Every instance matching `filter`, in pages of 1000.
    async fn describe_filtered(
        &self,
        region: &str,
        filter: Filter,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        let mut pages = self
            .client(region)
            .describe_instances()
            .filters(filter)
            .max_results(1000)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        loop {
            self.limiter.acquire(region, ApiClass::Describe).await;
            let Some(page) = pages.next().await else { break };
            let page = page.map_err(|err| self.classify(region, ApiClass::Describe, err))?;
            for reservation in page.reservations() {
                found.extend(reservation.instances().iter().filter_map(to_cloud_instance));
            }
        }
        Ok(found)
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().unwrap();
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let config = aws_sdk_ec2::config::Builder::from(&self.sdk_config)
                    .region(Region::new(region.to_string()))
                    .build();
                Client::from_conf(config)
            })
            .clone()
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn endpoint_url(&self) -> Option<String> {
        AwsProvider::endpoint_url(self).map(str::to_string)
    }

    async fn credentials_env(&self) -> Result<Vec<(String, String)>, CloudError> {
        use aws_sdk_ec2::config::ProvideCredentials as _;
        let provider =
            self.sdk_config.credentials_provider().ok_or_else(|| CloudError::Rejected {
                code: "NoCredentials".to_string(),
                message: "no AWS credentials are configured".to_string(),
            })?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|err| CloudError::Transient(format!("loading AWS credentials: {err}")))?;
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), credentials.access_key_id().to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), credentials.secret_access_key().to_string()),
        ];
        if let Some(token) = credentials.session_token() {
            env.push(("AWS_SESSION_TOKEN".to_string(), token.to_string()));
        }
        Ok(env)
    }

    fn describe_endpoint(&self) -> String {
        match AwsProvider::endpoint_url(self) {
            Some(url) => format!("EC2 emulator or custom endpoint at {url}"),
            None => "AWS EC2".to_string(),
        }
    }

    async fn describe_image(&self, region: &str, ami: &str) -> Result<ImageFacts, CloudError> {
        let call = self.client(region).describe_images().image_ids(ami).send();
        let output = self.send(region, ApiClass::Describe, call).await?;
        let image = output.images().first().ok_or_else(|| CloudError::Rejected {
            code: "InvalidAMIID.NotFound".to_string(),
            message: format!("The image id '[{ami}]' does not exist"),
        })?;
        Ok(ImageFacts {
            id: image.image_id().unwrap_or(ami).to_string(),
            owner_id: image.owner_id().unwrap_or_default().to_string(),
            owner_alias: image.image_owner_alias().map(str::to_string),
            architecture: image.architecture().map(|a| a.as_str().to_string()).unwrap_or_default(),
            root_device_name: image.root_device_name().map(str::to_string),
            name: image.name().map(str::to_string),
        })
    }

    async fn describe_instance_type(
        &self,
        region: &str,
        instance_type: &str,
    ) -> Result<InstanceTypeFacts, CloudError> {
        let call = self
            .client(region)
            .describe_instance_types()
            .instance_types(InstanceType::from(instance_type))
            .send();
        let output = self.send(region, ApiClass::Describe, call).await?;
        let info = output.instance_types().first().ok_or_else(|| CloudError::Rejected {
            code: "InvalidInstanceType".to_string(),
            message: format!("The instance type '{instance_type}' is not offered in {region}"),
        })?;
        Ok(InstanceTypeFacts {
            name: instance_type.to_string(),
            architectures: info
                .processor_info()
                .map(|p| {
                    p.supported_architectures().iter().map(|a| a.as_str().to_string()).collect()
                })
                .unwrap_or_default(),
            vcpus: info.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0),
            burstable: info.burstable_performance_supported().unwrap_or(false),
        })
    }

    async fn find_tagged(
        &self,
        region: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        let filter = Filter::builder().name(format!("tag:{key}")).values(value).build();
        self.describe_filtered(region, filter).await
    }

    async fn find_tag_key(
        &self,
        region: &str,
        key: &str,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        let filter = Filter::builder().name("tag-key").values(key).build();
        self.describe_filtered(region, filter).await
    }

    async fn launch(
        &self,
        region: &str,
        request: &LaunchRequest,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        let count = i32::try_from(request.count).map_err(|_| CloudError::Rejected {
            code: "InvalidParameterValue".to_string(),
            message: format!("count {} out of range", request.count),
        })?;
        let tags: Vec<Tag> =
            request.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        let tag_specs = [ResourceType::Instance, ResourceType::Volume].map(|resource| {
            TagSpecification::builder().resource_type(resource).set_tags(Some(tags.clone())).build()
        });
        let root_volume = BlockDeviceMapping::builder()
            .device_name(request.root_device_name.as_deref().unwrap_or("/dev/xvda"))
            .ebs(
                EbsBlockDevice::builder()
                    .volume_size(request.storage_gb as i32)
                    .volume_type(VolumeType::Gp3)
                    .delete_on_termination(true)
                    .build(),
            )
            .build();
        let mut call = self
            .client(region)
            .run_instances()
            .client_token(&request.client_token)
            .image_id(&request.ami)
            .instance_type(InstanceType::from(request.instance_type.as_str()))
            .min_count(count)
            .max_count(count)
            .block_device_mappings(root_volume)
            .set_key_name(request.key_name.clone())
            .set_security_group_ids(
                (!request.security_group_ids.is_empty())
                    .then(|| request.security_group_ids.clone()),
            )
            .set_tag_specifications(Some(tag_specs.to_vec()));
        if let Some(user_data) = &request.user_data {
            call = call.user_data(base64::engine::general_purpose::STANDARD.encode(user_data));
        }
        if let Some(credits) = request.cpu_credits {
            let credits = match credits {
                CpuCredits::Standard => "standard",
                CpuCredits::Unlimited => "unlimited",
            };
            call = call.credit_specification(
                CreditSpecificationRequest::builder().cpu_credits(credits).build(),
            );
        }
        // No SDK-level retry for launches: a retried call whose first answer was lost would launch
        // again wherever the ClientToken is not honoured (emulators). The job retries instead,
        // after looking for what the lost call launched.
        let call = call
            .customize()
            .config_override(
                aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send();
        let output = self.send(region, ApiClass::Launch, call).await?;
        Ok(output.instances().iter().filter_map(to_cloud_instance).collect())
    }

    async fn tag(
        &self,
        region: &str,
        cloud_ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<(), CloudError> {
        let tags: Vec<Tag> =
            tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        let call = self
            .client(region)
            .create_tags()
            .set_resources(Some(cloud_ids.to_vec()))
            .set_tags(Some(tags))
            .send();
        self.send(region, ApiClass::Mutate, call).await?;
        Ok(())
    }

    async fn untag(
        &self,
        region: &str,
        cloud_ids: &[String],
        keys: &[String],
    ) -> Result<(), CloudError> {
        let tags: Vec<Tag> = keys.iter().map(|key| Tag::builder().key(key).build()).collect();
        let call = self
            .client(region)
            .delete_tags()
            .set_resources(Some(cloud_ids.to_vec()))
            .set_tags(Some(tags))
            .send();
        self.send(region, ApiClass::Mutate, call).await?;
        Ok(())
    }

    async fn describe(
        &self,
        region: &str,
        cloud_ids: &[String],
    ) -> Result<Vec<CloudInstance>, CloudError> {
        let client = self.client(region);
        let mut found = Vec::with_capacity(cloud_ids.len());
        for batch in cloud_ids.chunks(DESCRIBE_BATCH) {
            let mut batch = batch.to_vec();
            // EC2 refuses the whole call when one id is unknown, naming the unknown ids: drop
            // them and ask again.
            loop {
                if batch.is_empty() {
                    break;
                }
                let mut pages = client
                    .describe_instances()
                    .set_instance_ids(Some(batch.clone()))
                    .into_paginator()
                    .send();
                let mut batch_found = Vec::new();
                let mut unknown = Vec::new();
                loop {
                    self.limiter.acquire(region, ApiClass::Describe).await;
                    let Some(page) = pages.next().await else { break };
                    match page.map_err(|err| self.classify(region, ApiClass::Describe, err)) {
                        Ok(page) => {
                            for reservation in page.reservations() {
                                batch_found.extend(
                                    reservation.instances().iter().filter_map(to_cloud_instance),
                                );
                            }
                        }
                        Err(CloudError::Rejected { code, message })
                            if code.starts_with("InvalidInstanceID") =>
                        {
                            unknown = instance_ids_in(&message);
                            unknown.retain(|id| batch.contains(id));
                            if unknown.is_empty() {
                                // Nothing to leave out: asking again would fail the same way.
                                return Err(CloudError::Rejected { code, message });
                            }
                            break;
                        }
                        Err(err) => return Err(err),
                    }
                }
                if unknown.is_empty() {
                    found.extend(batch_found);
                    break;
                }
                batch.retain(|id| !unknown.contains(id));
            }
        }
        Ok(found)
    }

    async fn volume_sizes(
        &self,
        region: &str,
        volume_ids: &[String],
    ) -> Result<HashMap<String, i64>, CloudError> {
        let client = self.client(region);
        let mut sizes = HashMap::with_capacity(volume_ids.len());
        // A filter, unlike `VolumeIds`, leaves unknown ids out instead of refusing the call.
        for batch in volume_ids.chunks(FILTER_VALUES) {
            let filter =
                Filter::builder().name("volume-id").set_values(Some(batch.to_vec())).build();
            let mut pages = client.describe_volumes().filters(filter).into_paginator().send();
            loop {
                self.limiter.acquire(region, ApiClass::Describe).await;
                let Some(page) = pages.next().await else { break };
                let page = page.map_err(|err| self.classify(region, ApiClass::Describe, err))?;
                for volume in page.volumes() {
                    if let (Some(id), Some(size)) = (volume.volume_id(), volume.size()) {
                        sizes.insert(id.to_string(), i64::from(size));
                    }
                }
            }
        }
        Ok(sizes)
    }

    async fn apply(
        &self,
        region: &str,
        action: Action,
        cloud_ids: &[String],
    ) -> Result<(), CloudError> {
        let client = self.client(region);
        for batch in cloud_ids.chunks(ACTION_BATCH) {
            self.apply_batch(&client, region, action, batch).await?;
        }
        Ok(())
    }

    async fn ensure_key_pair(
        &self,
        region: &str,
        name: &str,
        public_key: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<bool, CloudError> {
        if self.key_pair_imported_by_corral(region, name).await? {
            return Ok(false);
        }
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::KeyPair)
            .set_tags(Some(to_tags(tags)))
            .build();
        let call = self
            .client(region)
            .import_key_pair()
            .key_name(name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(public_key.as_bytes()))
            .tag_specifications(spec)
            .send();
        match self.send(region, ApiClass::Mutate, call).await {
            Ok(_) => Ok(true),
            // Imported meanwhile by another attempt, or by someone else: look again.
            Err(CloudError::Rejected { code, .. }) if code == "InvalidKeyPair.Duplicate" => {
                self.key_pair_imported_by_corral(region, name).await.map(|_| false)
            }
            Err(err) => Err(err),
        }
    }

    async fn delete_key_pair(&self, region: &str, name: &str) -> Result<bool, CloudError> {
        match self.key_pair_imported_by_corral(region, name).await {
            Ok(true) => {}
            // Absent, or someone else's key pair of the same name: nothing of corral's to delete.
            Ok(false) | Err(CloudError::Rejected { .. }) => return Ok(false),
            Err(err) => return Err(err),
        }
        let call = self.client(region).delete_key_pair().key_name(name).send();
        match self.send(region, ApiClass::Mutate, call).await {
            Err(CloudError::Rejected { code, .. }) if code == "InvalidKeyPair.NotFound" => {
                Ok(false)
            }
            other => other.map(|_| true),
        }
    }

    async fn ensure_security_group(
        &self,
        region: &str,
        spec: &SecurityGroupSpec,
    ) -> Result<String, CloudError> {
        let job_id = spec.tags.get(TAG_JOB_ID).cloned().unwrap_or_default();
        let client = self.client(region);
        let found = self.find_security_groups(region, TAG_JOB_ID, &[job_id]).await?;
        let group_id = match found.into_iter().next() {
            Some((group_id, _)) => group_id,
            None => {
                let tags = TagSpecification::builder()
                    .resource_type(ResourceType::SecurityGroup)
                    .set_tags(Some(to_tags(&spec.tags)))
                    .build();
                let call = client
                    .create_security_group()
                    .group_name(&spec.name)
                    .description(&spec.description)
                    .tag_specifications(tags)
                    .send();
                match self.send(region, ApiClass::Mutate, call).await {
                    Ok(output) => output.group_id().unwrap_or_default().to_string(),
                    Err(CloudError::Rejected { code, message })
                        if code == "InvalidGroup.Duplicate" =>
                    {
                        return Err(CloudError::Rejected {
                            code,
                            message: format!(
                                "{message}; a group named {} exists without corral's tags",
                                spec.name
                            ),
                        });
                    }
                    Err(err) => return Err(err),
                }
            }
        };
        let permissions: Vec<IpPermission> = spec
            .rules
            .iter()
            .map(|rule| {
                let port = i32::from(rule.port);
                let permission = IpPermission::builder()
                    .ip_protocol(&rule.protocol)
                    .from_port(port)
                    .to_port(port);
                let permission = if rule.is_ipv6() {
                    permission.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(&rule.cidr).build())
                } else {
                    permission.ip_ranges(IpRange::builder().cidr_ip(&rule.cidr).build())
                };
                permission.build()
            })
            .collect();
        for permission in permissions {
            // One call per rule, so that a rule authorised by an earlier attempt does not stop
            // the others.
            let call = client
                .authorize_security_group_ingress()
                .group_id(&group_id)
                .ip_permissions(permission)
                .send();
            match self.send(region, ApiClass::Mutate, call).await {
                Ok(_) => {}
                Err(CloudError::Rejected { code, .. }) if code == "InvalidPermission.Duplicate" => {
                }
                Err(err) => return Err(err),
            }
        }
        Ok(group_id)
    }

    async fn find_security_groups(
        &self,
        region: &str,
        key: &str,
        values: &[String],
    ) -> Result<Vec<(String, String)>, CloudError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let filter =
            Filter::builder().name(format!("tag:{key}")).set_values(Some(values.to_vec())).build();
        let call = self.client(region).describe_security_groups().filters(filter).send();
        let output = self.send(region, ApiClass::Describe, call).await?;
        Ok(output
            .security_groups()
            .iter()
            .filter_map(|group| {
                let value = group.tags().iter().find(|tag| tag.key() == Some(key))?.value()?;
                Some((group.group_id()?.to_string(), value.to_string()))
            })
            .collect())
    }

    async fn delete_security_group(&self, region: &str, group_id: &str) -> Result<(), CloudError> {
        let call = self.client(region).delete_security_group().group_id(group_id).send();
        match self.send(region, ApiClass::Mutate, call).await {
            Ok(_) => Ok(()),
            Err(CloudError::Rejected { code, .. }) if code == "InvalidGroup.NotFound" => Ok(()),
            Err(CloudError::Rejected { code, message }) if code == "DependencyViolation" => {
                Err(CloudError::Transient(format!("{code}: {message}")))
            }
            Err(err) => Err(err),
        }
    }
}

impl AwsProvider {
    /// Whether the region has key pair `name`, and it carries corral's tag; `Rejected` when the
    /// name is taken by a key pair corral did not import.
    async fn key_pair_imported_by_corral(
        &self,
        region: &str,
        name: &str,
    ) -> Result<bool, CloudError> {
        let filter = Filter::builder().name("key-name").values(name).build();
        let call = self.client(region).describe_key_pairs().filters(filter).send();
        let output = self.send(region, ApiClass::Describe, call).await?;
        match output.key_pairs().first() {
            None => Ok(false),
            Some(pair) if pair.tags().iter().any(|tag| tag.key() == Some(TAG_NAMESPACE)) => {
                Ok(true)
            }
            Some(_) => Err(CloudError::Rejected {
                code: "InvalidKeyPair.Duplicate".to_string(),
                message: format!(
                    "{region} already has a key pair named '{name}' that corral did not import; \
                     use it by key_name without registering it, or register the key under \
                     another name"
                ),
            }),
        }
    }

    async fn apply_batch(
        &self,
        client: &Client,
        region: &str,
        action: Action,
        cloud_ids: &[String],
    ) -> Result<(), CloudError> {
        let ids = Some(cloud_ids.to_vec());
        match action {
            Action::Start => {
                let call = client.start_instances().set_instance_ids(ids).send();
                self.send(region, ApiClass::Launch, call).await?;
            }
            Action::Stop => {
                let call = client.stop_instances().set_instance_ids(ids).send();
                self.send(region, ApiClass::Mutate, call).await?;
            }
            Action::Reboot => {
                let call = client.reboot_instances().set_instance_ids(ids).send();
                self.send(region, ApiClass::Mutate, call).await?;
            }
            Action::Terminate => {
                let call = client.terminate_instances().set_instance_ids(ids).send();
                self.send(region, ApiClass::Mutate, call).await?;
            }
        }
        Ok(())
    }
}

fn to_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// The instance ids named in an EC2 error message such as
/// "The instance IDs 'i-1, i-2' do not exist".
fn instance_ids_in(message: &str) -> Vec<String> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("i-") && word.len() > 2)
        .map(str::to_string)
        .collect()
}

fn to_cloud_instance(instance: &Instance) -> Option<CloudInstance> {
    let cloud_id = instance.instance_id()?.to_string();
    let state_name = instance.state().and_then(|s| s.name()).map(|n| n.as_str()).unwrap_or("");
    let state = InstanceState::from_cloud_name(state_name)?;
    Some(CloudInstance {
        cloud_id,
        state,
        public_ip: instance.public_ip_address().map(str::to_string),
        private_ip: instance.private_ip_address().map(str::to_string),
        ami: instance.image_id().map(str::to_string),
        instance_type: instance.instance_type().map(|t| t.as_str().to_string()),
        launch_index: instance.ami_launch_index().unwrap_or(0).into(),
        tags: instance
            .tags()
            .iter()
            .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
            .collect(),
        state_reason: instance.state_reason().and_then(|r| r.message()).map(str::to_string),
        key_name: instance.key_name().map(str::to_string),
        security_groups: {
            let mut groups: Vec<String> = instance
                .security_groups()
                .iter()
                .filter_map(|group| group.group_id().map(str::to_string))
                .collect();
            groups.sort();
            groups
        },
        root_volume: instance
            .block_device_mappings()
            .iter()
            .find(|mapping| mapping.device_name() == instance.root_device_name())
            .and_then(|mapping| mapping.ebs()?.volume_id())
            .map(str::to_string),
    })
}

/// Error codes that mean "slow down".
const THROTTLING_CODES: [&str; 4] =
    ["RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled"];
/// Error codes for failures on the cloud's side that a later attempt may not meet.
const TRANSIENT_CODES: [&str; 6] = [
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "InsufficientInstanceCapacity",
    "RequestTimeout",
];

fn classify<E, R>(err: SdkError<E, R>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown").to_string();
            let message = service.err().message().unwrap_or_default().to_string();
            if THROTTLING_CODES.contains(&code.as_str()) {
                CloudError::Throttled { code, message }
            } else if TRANSIENT_CODES.contains(&code.as_str()) {
                CloudError::Transient(format!("{code}: {message}"))
            } else {
                CloudError::Rejected { code, message }
            }
        }
        // A request the SDK could not even build (a bad region or endpoint) fails every time.
        SdkError::ConstructionFailure(_) => CloudError::Rejected {
            code: "ConstructionFailure".to_string(),
            message: DisplayErrorContext(&err).to_string(),
        },
        _ => CloudError::Transient(DisplayErrorContext(&err).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_instance_ids_are_read_from_the_error_message() {
        let cases = [
            ("The instance ID 'i-0123abcd' does not exist", vec!["i-0123abcd"]),
            ("The instance IDs 'i-1a, i-2b' do not exist", vec!["i-1a", "i-2b"]),
            ("Invalid id: \"i-\"", vec![]),
        ];
        for (message, expected) in cases {
            assert_eq!(instance_ids_in(message), expected, "{message}");
        }
    }
}
