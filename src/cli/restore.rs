//! `dr restore`: a snapshot into a directory; for PostgreSQL, to a point in time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::units::{format_bytes, parse_duration};
use crate::config::{Config, Policy, SourceSpec};
use crate::error::{OK, UsageError};
use crate::ops;
use crate::pipeline::Repository;
use crate::pipeline::pitr::{self, Target};
use crate::pipeline::progress::Progress;
use crate::pipeline::restore::RestoreSummary;
use crate::repo::keys::Identity;
use crate::source::postgres::lsn::Lsn;
use crate::source::postgres::recovery;

use super::{context, output};

/// Arguments of `dr restore`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("recovery_target").multiple(false)))]
#[command(after_help = "Examples:
  dr restore --policy app-files --target-dir /srv/restore            # latest snapshot
  dr restore --policy app-files --snapshot 20261123T1402 --target-dir /tmp/r
  dr restore --policy pg-main --point-in-time '2026-11-23 14:02:00+00' --target-dir /var/lib/postgresql/15/restore
  dr restore --policy pg-main --latest --target-dir /tmp/pg --start --port 5499
  dr restore --policy pg-main --restore-point before_migration --region us --target-dir /tmp/pg
  dr restore --policy qdrant-main --target-dir /tmp/q --qdrant-url http://qdrant:6333 --collection docs --rename-to docs_restored
PostgreSQL: the newest base backup ending before the target is chosen and every WAL segment
from its start to the target is checked present before anything is written.")]
pub struct RestoreArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Snapshot id, a unique prefix of one, or `latest` (default: chosen for the target).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Directory to restore into (created if missing; must be empty unless --force).
    #[arg(long)]
    pub target_dir: PathBuf,
    /// Restore into a non-empty directory, overwriting files with the same names.
    #[arg(long)]
    pub force: bool,
    /// Keep setuid/setgid bits on restored files (dropped by default: a compromised host that
    /// writes backups could otherwise plant a setuid program on the host that restores).
    #[arg(long)]
    pub keep_setuid: bool,
    /// Restore from this storage target (a replica) instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
    /// JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pg: PgTargetArgs,
    #[command(flatten)]
    pub qdrant: QdrantArgs,
    /// Redis Cluster snapshots: check that the cluster this node belongs to has the same
    /// slot layout (refused, naming the difference, if not) and print which file goes where.
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub cluster_layout_from: Option<String>,
}

/// Qdrant restore options.
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct QdrantArgs {
    /// Upload the restored collection snapshots to this Qdrant (--target-dir is the staging
    /// directory); without it the `.snapshot` files are left in --target-dir.
    #[arg(long)]
    pub qdrant_url: Option<String>,
    /// Environment variable with that server's API key (default: the policy's key).
    #[arg(long, requires = "qdrant_url")]
    pub qdrant_api_key_env: Option<String>,
    /// A distributed deployment: the REST URL of another peer (repeat for each). Sharded
    /// backups upload each shard to a peer hosting it. Default: the policy's `peers` when
    /// --qdrant-url is the policy's server or one of its peers.
    #[arg(long, value_name = "URL", requires = "qdrant_url")]
    pub qdrant_peer: Vec<String>,
    /// Only this collection.
    #[arg(long)]
    pub collection: Option<String>,
    /// Restore it under this name (with --collection).
    #[arg(long, requires = "collection")]
    pub rename_to: Option<String>,
}

/// PostgreSQL recovery targets and start-up.
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct PgTargetArgs {
    /// Recover to this time (with a zone: '2026-11-23 14:02:00+00', RFC 3339, or '… UTC').
    #[arg(long, group = "recovery_target")]
    pub point_in_time: Option<String>,
    /// Recover to this LSN (e.g. 0/3000060).
    #[arg(long, group = "recovery_target")]
    pub lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, group = "recovery_target")]
    pub xid: Option<String>,
    /// Recover to this named restore point (pg_create_restore_point).
    #[arg(long, group = "recovery_target")]
    pub restore_point: Option<String>,
    /// Recover to the end of the archived WAL (the default).
    #[arg(long, group = "recovery_target")]
    pub latest: bool,
    /// Stop as soon as the base backup is consistent.
    #[arg(long, group = "recovery_target")]
    pub immediate: bool,
    /// Start the restored server, wait for recovery and promotion, print the point reached.
    #[arg(long)]
    pub start: bool,
    /// Port for --start.
    #[arg(long, default_value_t = 5432, requires = "start")]
    pub port: u16,
    /// OS user that runs the server when dr runs as root.
    #[arg(long, default_value = "postgres")]
    pub run_as: String,
    /// Database user for the checks after --start.
    #[arg(long, default_value = "postgres")]
    pub db_user: String,
    /// How long --start waits for recovery to finish.
    #[arg(long, default_value = "1h")]
    pub start_timeout: String,
    /// Where a tablespace goes: OID=DIR (repeatable; default DIR.tablespaces/OID).
    #[arg(long, value_parser = parse_map)]
    pub tablespace_map: Vec<(String, PathBuf)>,
}

impl PgTargetArgs {
    /// A PostgreSQL recovery target other than the default (`--latest`).
    fn has_recovery_target(&self) -> bool {
        self.point_in_time.is_some()
            || self.lsn.is_some()
            || self.xid.is_some()
            || self.restore_point.is_some()
            || self.immediate
    }

    /// Any option that only applies to database sources.
    fn any(&self) -> bool {
        self.has_recovery_target() || self.latest || self.start || !self.tablespace_map.is_empty()
    }

    fn target(&self) -> Result<Target, UsageError> {
        Ok(if let Some(t) = &self.point_in_time {
            Target::Time(pitr::parse_time(t).map_err(UsageError)?)
        } else if let Some(l) = &self.lsn {
            Target::Lsn(Lsn::parse(l).map_err(UsageError)?)
        } else if let Some(x) = &self.xid {
            x.parse::<u64>().map_err(|_| {
                UsageError(format!(
                    "--xid {x}: a transaction id is a number (e.g. 771234, as txid_current() returns)"
                ))
            })?;
            Target::Xid(x.clone())
        } else if let Some(n) = &self.restore_point {
            Target::Name(n.clone())
        } else if self.immediate {
            Target::Immediate
        } else {
            Target::Latest
        })
    }
}

fn parse_map(s: &str) -> Result<(String, PathBuf), String> {
    let (oid, dir) = s.split_once('=').ok_or("expected OID=DIR")?;
    if oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{oid}` is not a tablespace OID"));
    }
    Ok((oid.to_owned(), PathBuf::from(dir)))
}

pub(crate) async fn run(config: Option<&Path>, args: &RestoreArgs) -> anyhow::Result<i32> {
    let config = context::load_scoped(config, crate::config::Scope::Focus(&args.policy))?;
    let r = restore(&config, args).await;
    let what = format!(
        "{} -> {}{}",
        args.policy,
        args.target_dir.display(),
        args.region
            .as_deref()
            .map(|r| format!(" (from {r})"))
            .unwrap_or_default()
    );
    crate::audit::record(
        &config,
        crate::audit::Event::new(
            "cli",
            &crate::audit::os_user(),
            "restore",
            &what,
            r.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
        ),
    )
    .await;
    r
}

async fn restore(config: &Config, args: &RestoreArgs) -> anyhow::Result<i32> {
    let policy = context::policy(config, &args.policy)?;
    let identity = Arc::new(context::identity(config)?);
    let repo = context::read_repo(config, policy, args.region.as_deref()).await?;
    let req = ops::restore::Request {
        target_dir: &args.target_dir,
        force: args.force,
        keep_setuid: args.keep_setuid,
        region: args.region.as_deref(),
        snapshot: args.snapshot.as_deref(),
    };
    match &policy.source {
        SourceSpec::Postgres(_) => {
            restore_postgres(config, policy, &repo, identity, args, &req).await
        }
        SourceSpec::Redis(_) => restore_redis(config, policy, &repo, identity, args, &req).await,
        SourceSpec::Qdrant(spec) => {
            if args.pg.any() {
                return Err(UsageError(format!("policy {} backs up Qdrant: point-in-time options apply to postgres policies only; pick a snapshot with --snapshot", policy.id)).into());
            }
            let manifest =
                ops::restore::selected_manifest(&repo, &identity, policy, req.snapshot).await?;
            let s = restore_files(config, &repo, identity, &manifest, &req).await?;
            let mut result = serde_json::json!({ "restore": s });
            if let Some(url) = &args.qdrant.qdrant_url {
                let key = match &args.qdrant.qdrant_api_key_env {
                    Some(v) => Some(crate::config::SecretRef::Env(v.clone())),
                    None => spec.api_key.clone(),
                };
                let key = key.map(|k| k.read().map_err(UsageError)).transpose()?;
                let url = url.trim_end_matches('/');
                let same_cluster = url == spec.url || spec.peers.iter().any(|p| p == url);
                let peers = if args.qdrant.qdrant_peer.is_empty() && same_cluster {
                    spec.peers.clone()
                } else {
                    args.qdrant.qdrant_peer.clone()
                };
                let client = |u: &str| {
                    crate::source::qdrant::Client::new(u, key.clone(), Duration::from_secs(3600))
                };
                let target = crate::source::qdrant::restore::Target {
                    entry: client(url)?,
                    peers: peers
                        .iter()
                        .filter(|p| p.trim_end_matches('/') != url)
                        .map(|p| client(p))
                        .collect::<Result<_, _>>()?,
                };
                let restored = ops::restore::qdrant_upload(
                    &target,
                    &manifest,
                    &args.target_dir,
                    args.qdrant.collection.as_deref(),
                    args.qdrant.rename_to.as_deref(),
                )
                .await?;
                if !args.json {
                    print_summary(&s, &repo);
                    for (c, target, n) in &restored {
                        println!(
                            "collection {c} restored as {target} on {url}: {n} points, as recorded"
                        );
                    }
                }
                result["collections"] = serde_json::json!(restored);
            } else if !args.json {
                print_summary(&s, &repo);
                println!(
                    "next: rerun with --qdrant-url, or upload by hand: curl -X POST '<qdrant>/collections/<name>/snapshots/upload?priority=snapshot' -F snapshot=@{dir}/collections/<name>.snapshot (a sharded backup: create the collection with its shard count, then each {dir}/collections/<name>/shard-<id>.snapshot to '<peer>/collections/<name>/shards/<id>/snapshots/upload?priority=snapshot')",
                    dir = args.target_dir.display()
                );
            }
            if args.json {
                output::json(&result)?;
            }
            Ok(OK)
        }
        SourceSpec::Files { .. } => {
            if args.pg.any() {
                return Err(UsageError(format!("policy {} backs up files: point-in-time options apply to postgres policies only", policy.id)).into());
            }
            let manifest =
                ops::restore::selected_manifest(&repo, &identity, policy, req.snapshot).await?;
            let s = restore_files(config, &repo, identity, &manifest, &req).await?;
            if args.json {
                let mut v = serde_json::to_value(&s)?;
                v["peak_rss_bytes"] = serde_json::json!(output::peak_rss_bytes());
                output::json(&v)?;
            } else {
                print_summary(&s, &repo);
            }
            Ok(OK)
        }
    }
}

async fn restore_redis(
    config: &Config,
    policy: &Policy,
    repo: &Repository,
    identity: Arc<Identity>,
    args: &RestoreArgs,
    req: &ops::restore::Request<'_>,
) -> anyhow::Result<i32> {
    let pg = &args.pg;
    if pg.has_recovery_target() || !pg.tablespace_map.is_empty() {
        return Err(UsageError(format!("policy {} backs up Redis: point-in-time options apply to postgres policies only; pick a snapshot with --snapshot", policy.id)).into());
    }
    let manifest = ops::restore::selected_manifest(repo, &identity, policy, req.snapshot).await?;
    let s = restore_files(config, repo, identity, &manifest, req).await?;
    let expected = manifest
        .source
        .facts
        .get("keys_total")
        .and_then(serde_json::Value::as_u64);
    let mut result = serde_json::json!({ "restore": s, "keys_recorded": expected });
    let dir = std::path::absolute(&args.target_dir)?;
    if let Some(layout) = crate::source::redis::recorded_layout(&manifest.source.facts) {
        return restore_redis_cluster(policy, repo, args, &s, &dir, &layout, result).await;
    }
    if args.cluster_layout_from.is_some() {
        return Err(UsageError(format!(
            "snapshot {} is of a single Redis server, not a cluster: --cluster-layout-from does not apply",
            manifest.snapshot
        ))
        .into());
    }
    if pg.start {
        let port = pg.port;
        let d = dir.clone();
        let started = tokio::task::spawn_blocking(move || {
            crate::source::redis::restore::start(&d, port, expected, None)
        })
        .await??;
        if !args.json {
            print_summary(&s, repo);
            println!(
                "redis-server {} running on 127.0.0.1:{} with {} keys (as recorded at backup); stop it with: redis-cli -p {} shutdown nosave",
                started.version, started.port, started.keys_total, started.port
            );
        }
        result["started"] = serde_json::to_value(&started)?;
    } else if !args.json {
        print_summary(&s, repo);
        println!(
            "next: redis-server --dir {} --dbfilename dump.rdb --appendonly no   (enable AOF again after the first start if you use it)",
            dir.display()
        );
    }
    if args.json {
        output::json(&result)?;
    }
    Ok(OK)
}

/// A Redis Cluster snapshot: one RDB per master in `dir/shards/`, the slot map beside them,
/// and with `--cluster-layout-from`, the target cluster's layout checked against it.
async fn restore_redis_cluster(
    policy: &Policy,
    repo: &Repository,
    args: &RestoreArgs,
    s: &RestoreSummary,
    dir: &Path,
    layout: &[crate::source::redis::Shard],
    mut result: serde_json::Value,
) -> anyhow::Result<i32> {
    use crate::source::redis::{layout_difference, live_layout};
    if args.pg.start {
        return Err(UsageError("this is a Redis Cluster snapshot: start each master on its shards/*.rdb (see slot-map.json); --start handles single servers only".to_owned()).into());
    }
    let map: Vec<serde_json::Value> = layout
        .iter()
        .map(|sh| serde_json::json!({ "file": sh.file(), "slots": sh.ranges(), "node_at_backup": format!("{}:{}", sh.host, sh.port), "keys": sh.keys }))
        .collect();
    std::fs::write(dir.join("slot-map.json"), serde_json::to_vec_pretty(&map)?)?;
    result["cluster"] = serde_json::json!(map);
    let mut lines = Vec::new();
    if let Some(url) = &args.cluster_layout_from {
        let SourceSpec::Redis(spec) = &policy.source else {
            unreachable!("a redis policy")
        };
        let (host, port) = url
            .strip_prefix("redis://")
            .and_then(|r| r.trim_end_matches('/').rsplit_once(':'))
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| UsageError(format!("`{url}` is not redis://HOST:PORT")))?;
        let live = live_layout(&crate::config::RedisSpec {
            host,
            port,
            ..spec.clone()
        })
        .await?;
        if let Some(diff) = layout_difference(layout, &live) {
            return Err(UsageError(format!("refusing: {diff}. Reshard the target cluster to the same layout (or restore each RDB by hand)")).into());
        }
        for (sh, node) in layout.iter().zip(&live) {
            lines.push(format!(
                "{}/{} -> {}:{} (slots {}, {} keys at backup)",
                dir.display(),
                sh.file(),
                node.host,
                node.port,
                sh.ranges(),
                sh.keys
            ));
        }
        result["placement"] = serde_json::json!(lines);
    }
    if args.json {
        output::json(&result)?;
    } else {
        print_summary(s, repo);
        for sh in layout {
            println!(
                "{}/{}: slots {} ({} keys at backup)",
                dir.display(),
                sh.file(),
                sh.ranges(),
                sh.keys
            );
        }
        for l in &lines {
            println!("place {l}");
        }
        println!(
            "next: stop each master, copy its file over its dump.rdb (appendonly no for the first start), start it; slot-map.json lists the layout"
        );
    }
    Ok(OK)
}

/// Restores with a progress bar, cancelled by SIGINT/SIGTERM.
async fn restore_files(
    config: &Config,
    repo: &Repository,
    identity: Arc<Identity>,
    manifest: &crate::pipeline::SpooledManifest,
    req: &ops::restore::Request<'_>,
) -> anyhow::Result<RestoreSummary> {
    let progress = Arc::new(Progress::default());
    let cancel = context::shutdown_token();
    let bar = output::Bar::start("restore", progress.clone());
    let s = ops::restore::files(config, repo, identity, manifest, req, progress, &cancel).await;
    drop(bar);
    s
}

fn print_summary(s: &RestoreSummary, repo: &Repository) {
    println!(
        "restored {} snapshot {} into {}: {} in {} items, {:.2}s, {} (from {})",
        s.policy,
        s.snapshot,
        s.target,
        format_bytes(s.bytes),
        s.artifacts,
        s.seconds,
        output::rate(s.bytes, s.seconds),
        repo.storage.location()
    );
}

async fn restore_postgres(
    config: &Config,
    policy: &Policy,
    repo: &Repository,
    identity: Arc<Identity>,
    args: &RestoreArgs,
    req: &ops::restore::Request<'_>,
) -> anyhow::Result<i32> {
    let target = args.pg.target()?;
    let timeout = parse_duration(&args.pg.start_timeout).map_err(UsageError)?;
    let map: BTreeMap<String, PathBuf> = args.pg.tablespace_map.iter().cloned().collect();
    let progress = Arc::new(Progress::default());
    let cancel = context::shutdown_token();
    let bar = output::Bar::start("restore", progress.clone());
    let prepared = ops::restore::postgres(
        config,
        policy,
        repo,
        identity.clone(),
        &target,
        req,
        &map,
        progress,
        &cancel,
    )
    .await;
    drop(bar);
    let prepared = prepared?;
    eprintln!(
        "dr restore: base backup {} (stop LSN {}), WAL {} .. {} present",
        prepared.refs.snapshot,
        prepared
            .refs
            .facts
            .get("stop_lsn")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        prepared.wal_from,
        prepared.wal_to
    );
    let s = &prepared.restore;
    let dir = &prepared.data_dir;
    if !args.json {
        print_summary(s, repo);
        for (oid, d) in &prepared.placed {
            println!("tablespace {oid} -> {}", d.display());
        }
    }
    let mut result = serde_json::json!({ "restore": s, "snapshot": prepared.refs.snapshot.to_string(), "wal_from": prepared.wal_from, "wal_to": prepared.wal_to, "target": prepared.settings.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>() });
    if args.pg.start {
        let o = prepared.start_options(
            policy,
            args.pg.port,
            &args.pg.run_as,
            &args.pg.db_user,
            if timeout.is_zero() {
                Duration::from_secs(3600)
            } else {
                timeout
            },
        );
        let owner = if crate::host::is_root() {
            Some(crate::host::User::lookup(&args.pg.run_as).ok_or_else(|| {
                UsageError(format!(
                    "no OS user `{}` to run PostgreSQL as (pass --run-as)",
                    args.pg.run_as
                ))
            })?)
        } else {
            None
        };
        let reached = prepared
            .start(repo, identity, o, owner, policy.wal.fetch_ahead)
            .await?;
        let line = format!(
            "recovered and promoted in {:.1}s: last replayed transaction {}, WAL position {}; server on 127.0.0.1:{} (data {})",
            reached.seconds,
            reached
                .replay_timestamp
                .as_deref()
                .unwrap_or("(none replayed)"),
            reached.lsn,
            reached.port,
            dir.display()
        );
        // With --json, stdout is the JSON document alone.
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        result["reached"] = serde_json::to_value(&reached)?;
    } else if !args.json {
        println!(
            "next: start PostgreSQL on {} (pg_ctl -D {} start); it replays WAL to the target and promotes",
            dir.display(),
            dir.display()
        );
        let risky = recovery::risky_settings(dir);
        if !risky.is_empty() {
            println!(
                "note: the restored configuration runs commands or loads code at start-up; look at these first (`--start` overrides them):"
            );
            for r in risky {
                println!("  {r}");
            }
        }
    }
    if args.json {
        result["peak_rss_bytes"] = serde_json::json!(output::peak_rss_bytes());
        output::json(&result)?;
    }
    Ok(OK)
}
