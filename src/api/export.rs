//! Export: a Terraform or CloudFormation configuration that reproduces instances corral
//! manages, from corral's own records (no cloud call).
//!
//! Terraform output carries an `import` block per instance, so `terraform plan` adopts the
//! running instance instead of creating another; CloudFormation output marks each instance
//! `DeletionPolicy: Retain` for a resource import. When corral talks to an emulator or a custom
//! endpoint, the Terraform provider points there too. Credentials are never part of an export.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::QueryParams;
use crate::api::{ApiContext, ApiError};
use crate::domain::{Backend, InstanceState, Role};
use crate::jobs::CreatePayload;
use crate::storage::{InstanceFilter, InstanceRecord, PageRequest};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Root device of the AMIs corral's policies allow by default (Amazon Linux, Ubuntu); the
/// CloudFormation export names it for the root volume's size.
const ROOT_DEVICE: &str = "/dev/xvda";

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(export_instance)).routes(routes!(export_namespace))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Terraform,
    CloudFormation,
}

impl Format {
    pub(super) const ALL: [Format; 2] = [Format::Terraform, Format::CloudFormation];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Format::Terraform => "terraform",
            Format::CloudFormation => "cloudformation",
        }
    }
}

fn format_param(params: &QueryParams) -> Result<Format, ApiError> {
    params.allow_only(&["format"])?;
    let Some(name) = params.one("format")? else { return Ok(Format::Terraform) };
    Format::ALL.into_iter().find(|format| format.as_str() == name).ok_or_else(|| {
        ApiError::bad_field(
            "format",
            format!("'{name}' is not an export format; use terraform or cloudformation"),
        )
    })
}

/// A configuration that reproduces one instance (`main.tf` or a CloudFormation template).
#[utoipa::path(get, path = "/v1/instances/{id}/export", tag = "instances",
    operation_id = "export_instance",
    params(("id" = String, Path, description = "corral id, EC2 instance id (i-…), or the name of a live instance"),
        ("format" = inline(Option<crate::api::schema::ExportFormats>), Query, description = "terraform (default) or cloudformation")),
    responses((status = 200, description = "The configuration", content_type = "text/plain"),
        (status = 404, body = crate::api::Problem), (status = 409, body = crate::api::Problem)))]
pub async fn export_instance(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(id): Path<String>,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let format = format_param(&params)?;
    let instance = crate::api::instances::visible_instance(&ctx, &caller, &id).await?;
    if !exportable(&instance) {
        return Err(ApiError::Conflict {
            detail: format!(
                "instance '{id}' is {} and has nothing in the cloud to export",
                instance.state
            ),
            errors: Vec::new(),
        });
    }
    let instances = [instance];
    let launches = launches(&ctx, &instances).await?;
    Ok(render(&ctx, format, &instances, &launches, &format!("instance {id}")))
}

/// A configuration that reproduces every instance of a namespace that exists in the cloud.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}/export", tag = "namespaces",
    operation_id = "export_namespace",
    params(("namespace" = String, Path),
        ("format" = inline(Option<crate::api::schema::ExportFormats>), Query, description = "terraform (default) or cloudformation")),
    responses((status = 200, description = "The configuration", content_type = "text/plain"),
        (status = 404, body = crate::api::Problem)))]
pub async fn export_namespace(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(namespace): Path<String>,
    params: QueryParams,
) -> Result<Response, ApiError> {
    let format = format_param(&params)?;
    let not_found = || ApiError::not_found("namespace", Key::Name(&namespace));
    caller.require(&namespace, Role::Viewer, not_found)?;
    ctx.store.find_namespace(&namespace).await?.ok_or_else(not_found)?;
    let filter = InstanceFilter { namespace: Some(namespace.clone()), ..InstanceFilter::default() };
    let mut instances = Vec::new();
    let mut page = PageRequest { limit: 1000, after: None };
    loop {
        let found = ctx.store.list_instances(&filter, &page).await?;
        instances.extend(found.items.into_iter().filter(exportable));
        match found.next_after {
            Some(after) => page.after = Some(after),
            None => break,
        }
    }
    instances.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let launches = launches(&ctx, &instances).await?;
    Ok(render(&ctx, format, &instances, &launches, &format!("namespace {namespace}")))
}

/// What the request that made an instance gave it that the instance's record does not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    pub user_data: Option<String>,
    /// The tags the root volume was made with (a later change of the instance's tags is not
    /// applied to its volumes).
    pub volume_tags: BTreeMap<String, String>,
}

/// The `Launch` of each of `instances`, by instance id, from the create jobs that made them
/// (one query); an adopted instance has none.
async fn launches(
    ctx: &ApiContext,
    instances: &[InstanceRecord],
) -> Result<BTreeMap<String, Launch>, ApiError> {
    let jobs: BTreeSet<String> = instances.iter().map(|i| i.created_by_job.clone()).collect();
    let payloads = ctx.store.job_payloads(&jobs.into_iter().collect::<Vec<_>>()).await?;
    let mut launches = BTreeMap::new();
    for instance in instances {
        let payload = payloads
            .get(&instance.created_by_job)
            .and_then(|payload| serde_json::from_value::<CreatePayload>(payload.clone()).ok());
        if let Some(payload) = payload {
            launches.insert(instance.id.clone(), launch(instance, &payload));
        }
    }
    Ok(launches)
}

/// How the create request `payload` launched `instance`: the native backend tags the volumes
/// of a one-instance request as the instance (its name and id included) and those of a larger
/// one with what the instances share; the Terraform backend gives them the instance's tags.
fn launch(instance: &InstanceRecord, payload: &CreatePayload) -> Launch {
    let spec = &payload.spec;
    let mut tags = spec.tags.clone();
    tags.insert(crate::cloud::TAG_JOB_ID.to_string(), instance.created_by_job.clone());
    tags.insert(crate::cloud::TAG_NAMESPACE.to_string(), spec.namespace.clone());
    if spec.names.len() == 1 || payload.backend == Backend::Terraform {
        let name = spec.names.get(instance.launch_index as usize).unwrap_or(&instance.name);
        tags.insert("Name".to_string(), name.clone());
        tags.insert(crate::cloud::TAG_INSTANCE_ID.to_string(), instance.id.clone());
    }
    Launch { user_data: spec.user_data.clone(), volume_tags: tags }
}

/// Instances that exist in the cloud.
fn exportable(instance: &InstanceRecord) -> bool {
    instance.cloud_id.is_some()
        && !matches!(
            instance.state,
            InstanceState::Terminated | InstanceState::Failed | InstanceState::Missing
        )
}

fn render(
    ctx: &ApiContext,
    format: Format,
    instances: &[InstanceRecord],
    launches: &BTreeMap<String, Launch>,
    what: &str,
) -> Response {
    let (text, filename) = match format {
        Format::Terraform => {
            (terraform(instances, launches, ctx.endpoint_url.as_deref(), what), "main.tf")
        }
        Format::CloudFormation => (cloudformation(instances, launches, what), "template.yaml"),
    };
    let disposition = format!("attachment; filename=\"{filename}\"");
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        text,
    )
        .into_response()
}

/// Terraform (HCL): a provider per region, and per instance an `import` block and an
/// `aws_instance` with the same AMI, type, key pair, security groups, user data, root volume
/// (size and tags) and tags, so that a plan of it imports and changes nothing.
pub fn terraform(
    instances: &[InstanceRecord],
    launches: &BTreeMap<String, Launch>,
    endpoint: Option<&str>,
    what: &str,
) -> String {
    let regions: BTreeSet<&str> = instances.iter().map(|i| i.region.as_str()).collect();
    let default_region = instances.first().map_or("us-east-1", |i| i.region.as_str());
    let mut text = format!(
        "# Exported by corral from {what}: {} instance(s).\n\
         # `terraform plan` imports them (see the import blocks) instead of creating new ones.\n\n\
         terraform {{\n  required_version = \">= 1.5\"\n  required_providers {{\n    \
         aws = {{\n      source  = \"hashicorp/aws\"\n      version = \">= 5.0\"\n    }}\n  }}\n}}\n",
        instances.len()
    );
    for region in std::iter::once(default_region)
        .chain(regions.iter().copied().filter(|r| *r != default_region))
    {
        text.push_str("\nprovider \"aws\" {\n");
        if region != default_region {
            text.push_str(&format!("  alias  = {}\n", hcl(&alias(region))));
        }
        text.push_str(&format!("  region = {}\n", hcl(region)));
        if let Some(endpoint) = endpoint {
            text.push_str(&format!(
                "  # corral talks to an emulator or custom endpoint; so does this export.\n  \
                 skip_credentials_validation = true\n  skip_requesting_account_id  = true\n  \
                 skip_metadata_api_check     = true\n  endpoints {{\n    ec2 = {}\n  }}\n",
                hcl(endpoint)
            ));
        }
        text.push_str("}\n");
    }
    let names = resource_names(instances, '_');
    for (instance, name) in instances.iter().zip(&names) {
        let cloud_id = instance.cloud_id.as_deref().unwrap_or_default();
        text.push_str(&format!(
            "\nimport {{\n  to = aws_instance.{name}\n  id = {}\n}}\n\nresource \"aws_instance\" \"{name}\" {{\n",
            hcl(cloud_id)
        ));
        if instance.region != default_region {
            text.push_str(&format!("  provider      = aws.{}\n", alias(&instance.region)));
        }
        text.push_str(&format!("  ami           = {}\n", hcl(&instance.ami)));
        text.push_str(&format!("  instance_type = {}\n", hcl(&instance.instance_type)));
        if let Some(key) = &instance.key_name {
            text.push_str(&format!("  key_name      = {}\n", hcl(key)));
        }
        if let Some(groups) = instance.security_groups.as_ref().filter(|g| !g.is_empty()) {
            let groups: Vec<String> = groups.iter().map(|id| hcl(id)).collect();
            text.push_str(&format!("  vpc_security_group_ids = [{}]\n", groups.join(", ")));
        }
        let launch = launches.get(&instance.id);
        if let Some(user_data) = launch.and_then(|launch| launch.user_data.as_deref()) {
            text.push_str(&format!("  user_data     = {}\n", hcl(user_data)));
        }
        let terraform_backend = instance.backend == Backend::Terraform;
        if instance.storage_gb > 0 {
            text.push_str(&format!(
                "\n  root_block_device {{\n    volume_size = {}\n",
                instance.storage_gb
            ));
            if let Some(launch) = launch.filter(|_| !terraform_backend) {
                text.push_str(&hcl_map("    tags", &launch.volume_tags));
            }
            text.push_str("  }\n");
        }
        if let Some(launch) = launch.filter(|_| terraform_backend) {
            text.push('\n');
            text.push_str(&hcl_map("  volume_tags", &launch.volume_tags));
        }
        text.push('\n');
        text.push_str(&hcl_map("  tags", &tags(instance)));
        text.push_str("}\n");
    }
    text
}

/// CloudFormation (YAML): an `AWS::EC2::Instance` per instance, kept on stack deletion, ready
/// for a resource import by its instance id.
pub fn cloudformation(
    instances: &[InstanceRecord],
    launches: &BTreeMap<String, Launch>,
    what: &str,
) -> String {
    let regions: BTreeSet<&str> = instances.iter().map(|i| i.region.as_str()).collect();
    let regions: Vec<&str> = regions.into_iter().collect();
    let mut description =
        format!("Exported by corral from {what}: {} instance(s)", instances.len());
    if regions.len() > 1 {
        description.push_str(&format!("; deploy one stack per region ({})", regions.join(", ")));
    }
    let mut text = format!(
        "AWSTemplateFormatVersion: \"2010-09-09\"\nDescription: {}\n",
        json_string(&description)
    );
    if instances.is_empty() {
        // A template needs a resource; this one creates nothing.
        text.push_str("Conditions:\n  Never: !Equals [\"a\", \"b\"]\nResources:\n  Nothing:\n    Type: AWS::CloudFormation::WaitConditionHandle\n    Condition: Never\n");
        return text;
    }
    text.push_str("Resources:\n");
    for (instance, name) in instances.iter().zip(resource_names(instances, '\0')) {
        let cloud_id = instance.cloud_id.as_deref().unwrap_or_default();
        text.push_str(&format!(
            "  # {} in {}: import with the identifier InstanceId={cloud_id}\n  {name}:\n    \
             Type: AWS::EC2::Instance\n    DeletionPolicy: Retain\n    UpdateReplacePolicy: Retain\n    \
             Properties:\n      ImageId: {}\n      InstanceType: {}\n",
            // Quoted: a name the cloud gave may hold a line break, which would end the comment.
            json_string(&instance.name),
            instance.region,
            json_string(&instance.ami),
            json_string(&instance.instance_type),
        ));
        if let Some(key) = &instance.key_name {
            text.push_str(&format!("      KeyName: {}\n", json_string(key)));
        }
        if let Some(groups) = instance.security_groups.as_ref().filter(|g| !g.is_empty()) {
            text.push_str("      SecurityGroupIds:\n");
            for group in groups {
                text.push_str(&format!("        - {}\n", json_string(group)));
            }
        }
        if let Some(user_data) = launches.get(&instance.id).and_then(|l| l.user_data.as_deref()) {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(user_data);
            text.push_str(&format!("      UserData: {}\n", json_string(&encoded)));
        }
        if instance.storage_gb > 0 {
            text.push_str(&format!(
                "      BlockDeviceMappings:\n        - DeviceName: {}\n          Ebs:\n            \
                 VolumeSize: {}\n",
                json_string(ROOT_DEVICE),
                instance.storage_gb
            ));
        }
        text.push_str("      Tags:\n");
        for (key, value) in tags(instance) {
            text.push_str(&format!(
                "        - Key: {}\n          Value: {}\n",
                json_string(&key),
                json_string(&value)
            ));
        }
    }
    text
}

/// `name = { "key" = "value" … }`, indented as `name` is, each string made literal.
fn hcl_map(name: &str, map: &BTreeMap<String, String>) -> String {
    let indent = &name[..name.len() - name.trim_start().len()];
    let mut text = format!("{name} = {{\n");
    for (key, value) in map {
        text.push_str(&format!("{indent}  {} = {}\n", hcl(key), hcl(value)));
    }
    text.push_str(&format!("{indent}}}\n"));
    text
}

/// The instance's tags as the cloud has them: its own, its `Name`, and corral's.
fn tags(instance: &InstanceRecord) -> BTreeMap<String, String> {
    let mut tags = instance.tags.clone();
    tags.insert("Name".to_string(), instance.name.clone());
    tags.insert(crate::cloud::TAG_INSTANCE_ID.to_string(), instance.id.clone());
    tags.insert(crate::cloud::TAG_JOB_ID.to_string(), instance.created_by_job.clone());
    tags.insert(crate::cloud::TAG_NAMESPACE.to_string(), instance.namespace.clone());
    tags
}

/// Unique resource names from instance names: letters, digits and `separator` (`_` for
/// Terraform; none for CloudFormation's alphanumeric logical ids).
fn resource_names(instances: &[InstanceRecord], separator: char) -> Vec<String> {
    let mut used = BTreeSet::new();
    instances
        .iter()
        .map(|instance| {
            let mut name: String = instance
                .name
                .chars()
                .filter_map(|c| {
                    if c.is_ascii_alphanumeric() {
                        Some(c)
                    } else if separator != '\0' {
                        Some(separator)
                    } else {
                        None
                    }
                })
                .collect();
            if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                name.insert_str(0, "Instance");
            }
            let base = name.clone();
            let mut n = 2;
            while !used.insert(name.clone()) {
                name = if separator == '\0' { format!("{base}{n}") } else { format!("{base}_{n}") };
                n += 1;
            }
            name
        })
        .collect()
}

fn alias(region: &str) -> String {
    region.replace('-', "_")
}

/// A quoted HCL string: JSON escapes, plus `$${` and `%%{` so nothing is interpolated.
/// `value` as an HCL quoted string that Terraform reads as it is: template sequences made
/// literal, and only the escapes HCL knows (`\n`, `\r`, `\t`, `\"`, `\\`, `\uNNNN`).
fn hcl(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in crate::terraform::literal(value).chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A double-quoted string, as JSON writes it (YAML reads it the same way).
fn json_string(value: &str) -> String {
    serde_json::to_string(value).expect("strings serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, region: &str) -> InstanceRecord {
        let spec = crate::domain::LaunchSpec {
            names: vec![name.to_string()],
            namespace: "alpha".to_string(),
            region: region.to_string(),
            ami: "ami-04681a1dbd79675a5".to_string(),
            instance_type: "t3.micro".to_string(),
            storage_gb: 8,
            key_name: Some("deploy".to_string()),
            security_group_ids: Vec::new(),
            user_data: None,
            tags: BTreeMap::from([("team".to_string(), "${blue}".to_string())]),
            cpu_credits: crate::domain::CpuCredits::Standard,
            ingress: Vec::new(),
        };
        let mut record = InstanceRecord::desired(&spec, "job-1", 0, 2, 0);
        record.cloud_id = Some("i-0abc".to_string());
        record
    }

    #[test]
    fn terraform_imports_each_instance_with_a_provider_per_region_and_no_interpolation() {
        let instances = [instance("web-1", "us-east-1"), instance("web 1", "eu-west-1")];
        let launches = BTreeMap::from([(
            instances[0].id.clone(),
            Launch {
                user_data: Some("echo ${HOME}".into()),
                volume_tags: BTreeMap::from([("team".into(), "${blue}".into())]),
            },
        )]);
        let text =
            terraform(&instances, &launches, Some("http://127.0.0.1:5000"), "namespace alpha");
        assert!(
            text.contains("import {\n  to = aws_instance.web_1\n  id = \"i-0abc\"\n}"),
            "{text}"
        );
        assert!(text.contains("resource \"aws_instance\" \"web_1_2\""), "{text}");
        assert!(text.contains("provider      = aws.eu_west_1"), "{text}");
        assert!(text.contains("alias  = \"eu_west_1\""), "{text}");
        assert!(text.contains("ec2 = \"http://127.0.0.1:5000\""), "{text}");
        assert!(text.contains("\"team\" = \"$${blue}\""), "{text}");
        assert!(text.contains("volume_size = 8") && text.contains("key_name      = \"deploy\""));
        // Every HCL string is literal and uses only the escapes HCL knows.
        assert_eq!(
            hcl("a\"b\\c\n${x}%{y}\u{8}\u{c}"),
            "\"a\\\"b\\\\c\\n$${x}%%{y}\\u0008\\u000C\""
        );
        // User data and volume tags are literal: Terraform evaluates neither.
        assert!(text.contains("user_data     = \"echo $${HOME}\""), "{text}");
        assert!(text.contains("    tags = {\n      \"team\" = \"$${blue}\"\n    }\n"), "{text}");
        assert_eq!(text.matches("user_data ").count(), 1, "{text}");
        assert!(!terraform(&instances, &launches, None, "x").contains("endpoints"));
    }

    /// Volumes are tagged as the backend tagged them at launch: the native one gives a
    /// one-instance request's volume the instance's name and id, and those of a larger request
    /// what its instances share; the Terraform backend gives every volume the instance's tags.
    #[test]
    fn root_volume_tags_are_those_of_the_launch() {
        let record = instance("web-1", "us-east-1");
        let payload = |names: &[&str], backend| CreatePayload {
            spec: crate::domain::LaunchSpec {
                names: names.iter().map(|n| n.to_string()).collect(),
                user_data: Some("#!/bin/sh".into()),
                ..serde_json::from_value(serde_json::json!({
                    "names": [], "namespace": "alpha", "region": "us-east-1", "ami": "ami-1",
                    "instance_type": "t3.micro", "storage_gb": 8, "key_name": null,
                    "security_group_ids": [], "user_data": null, "tags": { "team": "blue" },
                    "cpu_credits": "standard", "ingress": []
                }))
                .unwrap()
            },
            client_token: "token".into(),
            backend,
        };
        let keys = |launch: Launch| launch.volume_tags.into_keys().collect::<Vec<_>>();
        let shared = ["corral:job-id", "corral:namespace", "team"];
        let own = ["Name", "corral:instance-id", "corral:job-id", "corral:namespace", "team"];
        assert_eq!(keys(launch(&record, &payload(&["web-1"], Backend::Aws))), own);
        assert_eq!(keys(launch(&record, &payload(&["web-1", "web-2"], Backend::Aws))), shared);
        assert_eq!(keys(launch(&record, &payload(&["web-1", "web-2"], Backend::Terraform))), own);
        let launched = launch(&record, &payload(&["web-1"], Backend::Aws));
        assert_eq!(launched.user_data.as_deref(), Some("#!/bin/sh"));
        assert_eq!(launched.volume_tags["Name"], "web-1");
    }

    #[test]
    fn cloudformation_keeps_instances_and_names_them_alphanumerically() {
        let text =
            cloudformation(&[instance("web-1", "us-east-1")], &BTreeMap::new(), "instance x");
        assert!(
            text.contains("  web1:\n    Type: AWS::EC2::Instance\n    DeletionPolicy: Retain"),
            "{text}"
        );
        assert!(text.contains("InstanceId=i-0abc"), "{text}");
        assert!(text.contains("VolumeSize: 8"), "{text}");
        // A name from the cloud cannot end the comment it is written in.
        let mut odd = instance("web-1", "us-east-1");
        odd.name = "x\n  Evil:\n    Type: AWS::IAM::User".into();
        let text = cloudformation(&[odd], &BTreeMap::new(), "instance x");
        assert!(!text.contains("\n  Evil:"), "{text}");
    }
}
