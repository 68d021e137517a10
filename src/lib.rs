//! corral: provision and govern cloud instances through policy guardrails, as durable jobs.
//!
//! Modules in the order a newcomer should read them: `domain` (the vocabulary and the policy,
//! pure), `cloud` (the provider trait and AWS), `storage` (all SQL), `jobs` (the durable queue
//! and one reconciler per job kind), `auth` (who a request comes from), `api` (HTTP), `config`,
//! `telemetry`, `startup` (wiring), `cli` (the command line). See ARCHITECTURE.md.

pub mod domain;

pub mod cloud;
pub mod storage;

pub mod jobs;

pub mod auth;

pub mod api;

pub mod cli;
pub mod config;
pub mod startup;
pub mod telemetry;
