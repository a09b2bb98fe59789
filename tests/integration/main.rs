//! Integration tests: the built `dr` binary and the library against real servers (Garage,
//! moto; PostgreSQL and Redis as their sources land). Run with
//! `cargo test --features integration-tests`.

mod harness;

mod api_abuse;
mod audit;
mod cli_config;
mod console;
mod crash;
mod daemon;
mod deploy;
mod drills;
mod evidence;
mod failures;
mod faults;
mod files_roundtrip;
mod groups;
mod hostile;
mod interfaces;
mod lock_tiers;
mod operator;
mod postgres;
mod qdrant;
mod redis;
mod replication;
mod retention;
mod runbook;
mod secrets;
mod storage;
mod versions;
mod wal_stream;
