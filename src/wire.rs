//! The API's answers as they travel: the types the server (`api`) writes and the client (`cli`)
//! reads, for instances, jobs, namespaces and the audit log. One definition for both sides, so
//! that a field renamed or retyped in the API breaks the client when it is compiled, not when
//! it runs. Only serde and the OpenAPI schema here: no axum, storage, jobs or cloud; the
//! conversions from storage records live with the handlers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::Backend;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceBody {
    pub id: String,
    /// EC2 instance id, once launched.
    pub cloud_id: Option<String>,
    pub name: String,
    pub namespace: String,
    pub region: String,
    pub ami: String,
    pub instance_type: String,
    pub storage_gb: i64,
    /// provisioning, pending, running, stopping, stopped, shutting-down, terminated or failed.
    pub state: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub key_name: Option<String>,
    /// How to log in, when the instance has a key pair and a public address.
    pub ssh_command: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Ids of the security groups attached, as the cloud last reported them; null until it
    /// has.
    pub security_groups: Option<Vec<String>>,
    pub backend: String,
    /// The queued or running job that owns the instance now, if any.
    pub active_job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstancePage {
    pub items: Vec<InstanceBody>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobBody {
    pub id: String,
    /// `create_instances`, `start_instances`, `stop_instances`, `reboot_instances`,
    /// `terminate_instances`, `tag_instances`, `refresh_instances` or `reconcile`.
    pub kind: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made so far (including the running one).
    pub attempts: i64,
    pub max_attempts: i64,
    /// Why the job failed, or why its last attempt failed while it is queued for a retry.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Who asked for the job: a username, or `system` (a job of corral's own).
    pub actor: String,
    /// Which of the actor's credentials asked: an API key's prefix (`crl_…`), or `token`.
    pub credential: Option<String>,
    /// The namespace the job works in; null when it spans several, or none.
    pub namespace: Option<String>,
    /// The instances the job touches, as last reported by the cloud.
    pub instances: Vec<JobInstanceBody>,
}

impl JobBody {
    /// Whether the job has ended, well or not.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobInstanceBody {
    pub id: String,
    pub cloud_id: Option<String>,
    pub name: String,
    pub state: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    /// The EC2 key pair to log in with, if any.
    pub key_name: Option<String>,
    /// How to log in, when the instance has a key pair and a public address.
    pub ssh_command: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobBody>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobEventBody {
    /// Position in the job's history, from 1; also the SSE event id.
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub attempt: i64,
    /// `step`, `error` or `outcome`.
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobEventList {
    pub items: Vec<JobEventBody>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Most instances the namespace may hold; null for no limit.
    #[schema(minimum = 0)]
    pub instances: Option<i64>,
    /// Most vCPUs its instances may have together; null for no limit.
    #[schema(minimum = 0)]
    pub vcpus: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Instances that exist or are being created (not terminated, not failed).
    pub instances: i64,
    pub vcpus: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NamespaceBody {
    pub name: String,
    pub quota: Quota,
    /// The backend of create requests that name none; null: the server's default.
    #[schema(value_type = Option<String>)]
    pub default_backend: Option<Backend>,
    pub usage: Usage,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NamespaceList {
    pub items: Vec<NamespaceBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEventBody {
    pub id: i64,
    pub timestamp: DateTime<Utc>,
    /// A username, or `system` (corral itself).
    pub actor: String,
    /// Which of the actor's credentials acted: an API key's prefix (`crl_…`), or `token`.
    pub credential: Option<String>,
    /// E.g. `instance.create`, `instance.state`, `user.update`.
    pub action: String,
    /// What the action applied to: an instance id, a username, a namespace, a key prefix.
    pub target: String,
    pub namespace: Option<String>,
    pub old_value: Option<serde_json::Value>,
    pub new_value: Option<serde_json::Value>,
    /// The `X-Request-Id` of the request that made the change; null for changes corral observed.
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub logs: Vec<AuditEventBody>,
    /// The page asked for; 1 with `cursor`, whose pages count from the cursor.
    pub page: i64,
    pub limit: i64,
    /// Events matching the filters, on all pages.
    pub total: i64,
    /// Pass as `cursor` (with the same filters) for the next, older page, however deep; null on
    /// the last page.
    pub next_cursor: Option<String>,
}
