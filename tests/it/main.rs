//! corral's integration tests: one binary, one module per area. Every test starts its own
//! corral (`helpers::spawn_app`) on a fresh SQLite file, against the moto EC2 emulator that
//! `scripts/test` starts once per run, in an emulator account of its own.

mod access;
mod audit;
mod cli;
mod conformance;
mod crash;
mod errors;
mod export;
mod health;
mod helpers;
mod identity;
mod instances;
mod jobs;
mod notify;
mod policy;
mod postgres;
mod proxy;
mod reach;
mod readme;
mod reconcile;
mod resilience;
mod security;
mod storage;
mod terraform;
mod tidy;
