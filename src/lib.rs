//! corral: provision and govern cloud instances through policy guardrails, as durable jobs.
//!
//! Modules in the order a newcomer should read them: `domain` (the vocabulary and the policy,
//! pure), `cloud` (the provider trait and AWS), `storage` (all SQL), `jobs` (the durable queue
//! and one reconciler per job kind), `notify` (email and webhooks from an outbox), `auth` (who a
//! request comes from), `terraform` (the Terraform backend's configuration and runs), `api`
//! (HTTP), `wire` (the answers as the API writes and the CLI reads them), `server` (the
//! listener: TLS, timeouts, connection limits), `config`,
//! `telemetry`, `startup` (wiring), `cli` (the command line). See ARCHITECTURE.md.

pub mod domain;

pub mod cloud;
pub mod storage;

pub mod jobs;
pub mod notify;

pub mod auth;
pub mod terraform;

pub mod api;
pub mod server;
pub mod wire;

pub mod cli;
pub mod config;
pub mod startup;
pub mod telemetry;

/// TLS settings for corral's own HTTP clients (webhooks): aws-lc-rs, as the AWS SDK uses, and
/// the system's root certificates.
pub fn tls_client_config() -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "a system root certificate could not be loaded");
    }
    roots.add_parsable_certificates(found.certs);
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An error with every cause it wraps, `outer: inner: …` (HTTP clients keep the useful part,
/// such as "connection refused", in the sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
