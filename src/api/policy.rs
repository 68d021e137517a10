//! `GET /v1/policy`: the guardrails in force.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ApiContext;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Serialize, ToSchema)]
pub struct PolicyBody {
    pub profile: String,
    pub default_region: String,
    pub regions: Vec<String>,
    pub instance_types: Vec<String>,
    /// AMI rules by region; `*` applies to regions without their own entry.
    pub amis: BTreeMap<String, AmiRuleBody>,
    pub storage_gb: StorageBody,
    /// Credit modes allowed for burstable types; the first is the default.
    pub cpu_credits: Vec<String>,
    pub max_count: i64,
    pub user_data_max_bytes: usize,
}

#[derive(Serialize, ToSchema)]
pub struct AmiRuleBody {
    /// AMI owners allowed (account ids or aliases such as `amazon`).
    pub owners: Vec<String>,
    /// AMI ids allowed whatever their owner.
    pub ids: Vec<String>,
    /// Login users by AMI id or owner, where the guess from the AMI's owner and name is wrong.
    pub login_users: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct StorageBody {
    pub min: i64,
    pub max: i64,
    pub default: i64,
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(get_policy))
}

/// The policy every create request is checked against.
#[utoipa::path(get, path = "/v1/policy", tag = "policy", operation_id = "get_policy",
    responses((status = 200, body = PolicyBody)))]
pub async fn get_policy(State(ctx): State<ApiContext>) -> Json<PolicyBody> {
    let policy = &ctx.policy;
    Json(PolicyBody {
        profile: policy.profile.clone(),
        default_region: policy.default_region.clone(),
        regions: policy.regions.clone(),
        instance_types: policy.instance_types.clone(),
        amis: policy
            .amis
            .iter()
            .map(|(region, rule)| {
                let rule = AmiRuleBody {
                    owners: rule.owners.clone(),
                    ids: rule.ids.clone(),
                    login_users: rule.login_users.clone(),
                };
                (region.clone(), rule)
            })
            .collect(),
        storage_gb: StorageBody {
            min: policy.storage_gb.min,
            max: policy.storage_gb.max,
            default: policy.storage_gb.default,
        },
        cpu_credits: policy.cpu_credits.iter().map(|c| c.as_str().to_string()).collect(),
        max_count: policy.max_count,
        user_data_max_bytes: policy.user_data_max_bytes,
    })
}
