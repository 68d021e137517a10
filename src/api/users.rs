//! `/v1/users`: people, their passwords, the admin flag and their roles per namespace.
//! Admins manage everyone; a user may read their own record and change their own password,
//! proving the current one. A password change ends the user's tokens.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::auth::Caller;
use crate::api::error::Key;
use crate::api::extract::{ClientAddress, ValidJson};
use crate::api::{ApiContext, ApiError, FieldError};
use crate::auth::hash_password;
use crate::domain::{MIN_PASSWORD_LEN, Role, is_reserved_username, is_valid_username};
use crate::storage::{UserChanges, UserRecord, UserWrite, now_millis, to_datetime};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    /// 1-63 lowercase letters, digits, '.', '_' and '-'.
    #[schema(pattern = "^[a-z0-9._-]{1,63}$")]
    pub username: String,
    /// At least 12 characters.
    #[schema(min_length = 12)]
    pub password: String,
    #[serde(default)]
    pub admin: bool,
    /// Role per namespace: `operator` or `viewer`.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, crate::api::schema::Roles>)]
    pub roles: BTreeMap<String, String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    /// At least 12 characters.
    #[schema(min_length = 12)]
    pub password: Option<String>,
    /// The password being replaced: needed to change one's own password (an admin resetting
    /// someone else's does not give it).
    pub current_password: Option<String>,
    /// Admins only.
    pub admin: Option<bool>,
    /// Roles to give per namespace (admins only): a role sets one, null takes it away, and a
    /// namespace left out keeps its role.
    #[schema(value_type = Option<BTreeMap<String, crate::api::schema::RoleOrNull>>)]
    pub roles: Option<BTreeMap<String, Option<String>>>,
}

#[derive(Serialize, ToSchema)]
pub struct UserBody {
    pub username: String,
    pub admin: bool,
    pub roles: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserBody>,
}

impl From<&UserRecord> for UserBody {
    fn from(user: &UserRecord) -> UserBody {
        UserBody {
            username: user.username.clone(),
            admin: user.admin,
            roles: user.roles.iter().map(|(ns, role)| (ns.clone(), role.to_string())).collect(),
            created_at: to_datetime(user.created_at),
            updated_at: to_datetime(user.updated_at),
        }
    }
}

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(list_users, create_user)).routes(routes!(
        get_user,
        update_user,
        delete_user
    ))
}

/// Creates a user (admins only).
#[utoipa::path(post, path = "/v1/users", tag = "users", operation_id = "create_user",
    request_body = CreateUserBody,
    responses(
        (status = 201, body = UserBody),
        (status = 403, body = crate::api::Problem),
        (status = 409, description = "The username is taken", body = crate::api::Problem),
        (status = 422, body = crate::api::Problem),
    ))]
pub async fn create_user(
    State(ctx): State<ApiContext>,
    caller: Caller,
    ValidJson(body): ValidJson<CreateUserBody>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let mut errors = Vec::new();
    if !is_valid_username(&body.username) {
        errors.push(FieldError::new(
            "username",
            "must be 1-63 characters of lowercase letters, digits, '.', '_' and '-'",
        ));
    } else if is_reserved_username(&body.username) {
        errors.push(FieldError::new(
            "username",
            format!(
                "'{}' is reserved: corral's own actors (system, corral, root, anonymous) and API \
                 key prefixes (crl_…) are not usernames",
                body.username
            ),
        ));
    }
    check_password(&body.password, &mut errors);
    let roles: BTreeMap<String, Role> =
        parse_roles(body.roles.iter().map(|(ns, role)| (ns, Some(role.as_str()))), &mut errors)
            .into_iter()
            .filter_map(|(namespace, role)| Some((namespace, role?)))
            .collect();
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let now = now_millis();
    let user = UserRecord {
        id: crate::storage::new_id(),
        username: body.username,
        password_hash: hash_password(body.password).await?,
        admin: body.admin,
        roles,
        credentials_version: 0,
        must_change_password: false,
        created_at: now,
        updated_at: now,
    };
    let user = written(ctx.store.create_user(&user, &caller.actor()).await?, &user.username)?;
    Ok((StatusCode::CREATED, Json(UserBody::from(&user))).into_response())
}

/// Every user (admins only).
#[utoipa::path(get, path = "/v1/users", tag = "users", operation_id = "list_users",
    responses((status = 200, body = UserList), (status = 403, body = crate::api::Problem)))]
pub async fn list_users(
    State(ctx): State<ApiContext>,
    caller: Caller,
) -> Result<Json<UserList>, ApiError> {
    caller.require_admin()?;
    let users = ctx.store.list_users().await?;
    Ok(Json(UserList { items: users.iter().map(UserBody::from).collect() }))
}

/// One user: admins read anyone, others themselves.
#[utoipa::path(get, path = "/v1/users/{username}", tag = "users", operation_id = "get_user",
    params(("username" = String, Path)),
    responses((status = 200, body = UserBody), (status = 403, body = crate::api::Problem), (status = 404, body = crate::api::Problem)))]
pub async fn get_user(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<UserBody>, ApiError> {
    if caller.principal.username != username {
        caller.require_admin()?;
    }
    let user = ctx
        .store
        .user_by_name(&username)
        .await?
        .ok_or_else(|| ApiError::not_found("user", Key::Name(&username)))?;
    Ok(Json(UserBody::from(&user)))
}

/// Changes a user's password, admin flag or roles. Users may change their own password;
/// everything else needs an admin.
#[utoipa::path(patch, path = "/v1/users/{username}", tag = "users", operation_id = "update_user",
    params(("username" = String, Path)),
    request_body = UpdateUserBody,
    responses(
        (status = 200, body = UserBody),
        (status = 403, body = crate::api::Problem),
        (status = 404, body = crate::api::Problem),
        (status = 409, description = "The change would leave no admin", body = crate::api::Problem),
        (status = 422, body = crate::api::Problem),
        (status = 429, description = "Too many wrong passwords for this user or address", body = crate::api::Problem),
    ))]
pub async fn update_user(
    State(ctx): State<ApiContext>,
    caller: Caller,
    ClientAddress(client): ClientAddress,
    Path(username): Path<String>,
    ValidJson(body): ValidJson<UpdateUserBody>,
) -> Result<Json<UserBody>, ApiError> {
    let own = caller.principal.username == username;
    if own
        && caller.principal.must_change_password
        && (body.password.is_none() || body.admin.is_some() || body.roles.is_some())
    {
        return Err(crate::api::auth::must_change_password_first(&username));
    }
    if !own || body.admin.is_some() || body.roles.is_some() {
        caller.require_admin()?;
    }
    let mut errors = Vec::new();
    if let Some(password) = &body.password {
        check_password(password, &mut errors);
        if own {
            // Whoever holds a token or key of a user must not be able to take the account.
            let proven = match &body.current_password {
                Some(current) => ctx.auth.confirm_password(&username, current, client).await?,
                None => false,
            };
            if !proven {
                let message = if body.current_password.is_some() {
                    "is not your current password"
                } else {
                    "required to change your own password"
                };
                errors.push(FieldError::new("current_password", message));
            }
            if body.current_password.as_deref() == Some(password.as_str()) {
                errors.push(FieldError::new("password", "must differ from the current password"));
            }
        }
    } else if body.current_password.is_some() {
        errors.push(FieldError::new("current_password", "only goes with a new password"));
    }
    let changes = body.roles.iter().flatten().map(|(ns, role)| (ns, role.as_deref()));
    let roles = parse_roles(changes, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let password_hash = match body.password {
        Some(password) => Some(hash_password(password).await?),
        None => None,
    };
    let changes = UserChanges { password_hash, admin: body.admin, roles };
    let user =
        written(ctx.store.update_user(&username, &changes, &caller.actor()).await?, &username)?;
    Ok(Json(UserBody::from(&user)))
}

/// Deletes a user with their roles and API keys (admins only).
#[utoipa::path(delete, path = "/v1/users/{username}", tag = "users", operation_id = "delete_user",
    params(("username" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, body = crate::api::Problem),
        (status = 404, body = crate::api::Problem),
        (status = 409, description = "The last admin cannot be deleted", body = crate::api::Problem),
    ))]
pub async fn delete_user(
    State(ctx): State<ApiContext>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    written(ctx.store.delete_user(&username, &caller.actor()).await?, &username)?;
    Ok(StatusCode::NO_CONTENT)
}

fn check_password(password: &str, errors: &mut Vec<FieldError>) {
    if password.chars().count() < MIN_PASSWORD_LEN {
        errors.push(FieldError::new(
            "password",
            format!("must have at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
}

/// Roles per namespace (`None`: none, to take one away), each bad name an error naming it.
fn parse_roles<'a>(
    roles: impl IntoIterator<Item = (&'a String, Option<&'a str>)>,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, Option<Role>> {
    let mut parsed = BTreeMap::new();
    for (namespace, role) in roles {
        match role.map(str::parse::<Role>).transpose() {
            Ok(role) => {
                parsed.insert(namespace.clone(), role);
            }
            Err(err) => errors.push(FieldError::new(format!("roles.{namespace}"), err)),
        }
    }
    parsed
}

fn written(write: UserWrite, username: &str) -> Result<UserRecord, ApiError> {
    match write {
        UserWrite::Done(user) => Ok(user),
        UserWrite::NotFound => Err(ApiError::not_found("user", Key::Name(username))),
        UserWrite::UsernameTaken => Err(ApiError::Conflict {
            detail: format!("the username '{username}' is taken"),
            errors: vec![FieldError::new("username", "taken")],
        }),
        UserWrite::UnknownNamespaces(unknown) => Err(ApiError::Validation(
            unknown
                .into_iter()
                .map(|ns| FieldError::new(format!("roles.{ns}"), "no such namespace"))
                .collect(),
        )),
        UserWrite::NoRoleToRemove(missing) => Err(ApiError::Validation(
            missing
                .into_iter()
                .map(|ns| {
                    FieldError::new(
                        format!("roles.{ns}"),
                        format!("'{username}' holds no role in '{ns}' to take away"),
                    )
                })
                .collect(),
        )),
        UserWrite::LastAdmin => Err(ApiError::Conflict {
            detail: "corral needs at least one admin; make another user admin first".to_string(),
            errors: Vec::new(),
        }),
    }
}
