//! `dr`: backup and disaster recovery for PostgreSQL, Qdrant, Redis and files.
//!
//! # Layout
//!
//! Dependencies point down this list, never up:
//!
//! | module | role |
//! |---|---|
//! | [`cli`] | the edge: clap definitions, one file per command, output formatting, exit codes |
//! | [`api`] | the daemon's HTTP API (axum): status, metrics, drills, audit; bearer tokens with roles |
//! | [`daemon`] | `dr daemon`: cron scheduler, periodic workers on one contract (WAL lag, replication, retention), drills, leader lease, status |
//! | [`evidence`] | `dr evidence export`: a period's signed reports, history and missed drills, audit events, signer keys, SHA256SUMS and openssl commands, as a bundle auditors check without dr |
//! | [`drill`] | restore drills (one policy, or an application group with cross-store checks): sandboxes, checks, measured RTO/RPO, signed reports, HTML |
//! | [`audit`] | the audit log: one write-once object per state-changing action |
//! | [`restore`] | restores, one request and one file per engine (files, PostgreSQL to a point in time, Redis and its cluster layout, Qdrant uploads), the keyless WAL spool of servers dr starts on restored data, an application group's plan (each member's point and skew); used by the CLI and drills alike |
//! | [`ops`] | the jobs the CLI and the daemon share: opening what the configuration names, backup, group backup runs, WAL archiving ahead, WAL streaming, replicate, retention |
//! | [`replication`] | copies what replica targets lack, data before the manifests that name it |
//! | [`retention`] | the pure planner (which rule keeps each snapshot), applying it, two-phase pack GC, tiers |
//! | [`pipeline`] | joins sources and storage: backup, restore, verify; the [`pipeline::Repository`] handle |
//! | [`source`] | what is backed up (files, PostgreSQL, Redis, Qdrant): produces artifacts, knows nothing of storage |
//! | [`storage`] | local directory and S3 backends behind one retrying, timing-out [`storage::Storage`] |
//! | [`repo`] | the on-disk format (packs, indexes, manifests, refs, keys); pure, specified in its docs |
//! | [`config`] | `dr.toml`, `policies/*.toml`, `groups/*.toml`, `restore-drills/*.toml` → validated types, every error with its key path |
//! | [`error`] | exit codes |
//! | [`html`] | escaping, the house style and SVG charts shared by the report page, the evidence pages and the console |
//! | [`host`] | this machine: host name, root, OS users, the open-files limit; a clean environment and ownership for processes and files handed to another user (restored servers) |
//!
//! `config` imports nothing else from the crate, `repo` only `config`'s key-file check;
//! `storage` knows `repo` keys and its `config` target; sources know neither storage nor the
//! pipeline.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod drill;
pub mod error;
pub mod evidence;
pub mod host;
pub mod html;
pub mod ops;
pub mod pipeline;
pub mod replication;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod source;
pub mod storage;
