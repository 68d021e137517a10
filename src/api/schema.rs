//! JSON Schemas of the names the API accepts, made from the lists the owning types keep beside
//! their parsers (`domain::InstanceState::ALL`, …), so that `/openapi.json` states each
//! enumeration the handlers enforce. Each is a schema-only type: a query parameter names it as
//! `inline(Option<schema::InstanceStates>)`, a body field as
//! `#[schema(value_type = schema::Actions)]` (a named component then).

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::domain::{Action, Backend, CpuCredits, EventType, InstanceState, JobStatus, Role};
use crate::storage::DeliveryStatus;

/// A string that is one of `names`.
fn enumeration<'a>(names: impl IntoIterator<Item = &'a str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names.into_iter().collect::<Vec<_>>()))
        .into()
}

macro_rules! names {
    ($($(#[$doc:meta])* $schema:ident = $names:expr;)*) => {$(
        $(#[$doc])*
        pub struct $schema;

        impl utoipa::PartialSchema for $schema {
            fn schema() -> RefOr<Schema> {
                enumeration($names)
            }
        }

        impl utoipa::ToSchema for $schema {}
    )*};
}

names! {
    /// An instance state.
    InstanceStates = InstanceState::ALL.map(InstanceState::as_str);
    /// A job status.
    JobStatuses = JobStatus::ALL.map(JobStatus::as_str);
    /// A lifecycle action.
    Actions = Action::ALL.map(Action::as_str);
    /// A backend, by any name it is accepted by.
    Backends = Backend::ACCEPTED;
    /// A role in a namespace.
    Roles = Role::ALL.map(Role::as_str);
    /// A CPU credit mode.
    CpuCreditModes = CpuCredits::ALL.map(CpuCredits::as_str);
    /// A notification event.
    EventTypes = EventType::ALL.map(EventType::as_str);
    /// Where a notification's delivery stands.
    DeliveryStatuses = DeliveryStatus::ALL.map(DeliveryStatus::as_str);
    /// What an export is written as.
    ExportFormats = crate::api::export::Format::ALL.map(crate::api::export::Format::as_str);
}

/// A tag filter of a list: `KEY:VALUE`.
pub struct TagFilter;

impl utoipa::PartialSchema for TagFilter {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(":")).into()
    }
}

impl utoipa::ToSchema for TagFilter {}

/// A role in a namespace, or null: what a user update gives per namespace (null takes the
/// role away).
pub struct RoleOrNull;

impl utoipa::PartialSchema for RoleOrNull {
    fn schema() -> RefOr<Schema> {
        let mut names: Vec<serde_json::Value> =
            Role::ALL.iter().map(|role| role.as_str().into()).collect();
        names.push(serde_json::Value::Null);
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]))
            .enum_values(Some(names))
            .into()
    }
}

impl utoipa::ToSchema for RoleOrNull {}
