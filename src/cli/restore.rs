//! `dr restore`: a snapshot into a directory; for PostgreSQL, to a point in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::units::{format_bytes, parse_duration};
use crate::config::{Config, Policy, SourceSpec};
use crate::error::{OK, UsageError};
use crate::pipeline::Repository;
use crate::pipeline::pitr::{self, Target};
use crate::pipeline::progress::Progress;
use crate::pipeline::restore::RestoreSummary;
use crate::repo::keys::Identity;
use crate::restore::{self, Existing, Restored};
use crate::source::postgres::lsn::Lsn;
use crate::source::postgres::recovery;

use super::{context, output};

/// Arguments of `dr restore`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("recovery_target").multiple(false)))]
#[command(after_help = "Examples:
  dr restore --policy app-files --target-dir /srv/restore            # latest snapshot
  dr restore --policy app-files --snapshot 20261123T1402 --target-dir /tmp/r
  dr restore --policy app-files --snapshot latest~1 --target-dir /tmp/r --include etc/nginx --exclude '**/*.bak'
  dr restore --policy app-files --snapshot 'latest@2026-11-23 14:00+00' --target-dir /tmp/r   # newest taken by then
  dr restore --policy pg-main --point-in-time '2026-11-23 14:02:00+00' --target-dir /var/lib/postgresql/15/restore
  dr restore --policy pg-main --latest --target-dir /tmp/pg --start        # on a free port, printed
  dr restore --policy pg-main --point-in-time '2026-11-23 14:02:00+00' --target-dir /tmp/pg --dry-run
  dr restore --policy pg-main --restore-point before_migration --region us --target-dir /tmp/pg
  dr restore --policy pg-main --latest --target-dir /var/lib/postgresql/15/main --delta   # re-sync a stopped replica
  dr restore --policy pg-main --latest --target-dir /tmp/pg --db-include shop --start     # one database
  dr restore --policy qdrant-main --target-dir /tmp/q --qdrant-url http://qdrant:6333 --collection docs --rename-to docs_restored
  dr restore --group app --point-in-time '2026-11-23 14:02:00+00' --target-dir /srv/app --dry-run   # every member, DIR/<policy>
  dr restore --group app --run latest --target-dir /srv/app --start    # the newest `dr backup --group app`
PostgreSQL: the newest base backup ending before the target is chosen and every WAL segment
from its start to the target is checked present before anything is written.")]
pub struct RestoreArgs {
    /// Policy id.
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub policy: Option<String>,
    /// Restore every member of this application group (`groups/<id>.toml`), each into
    /// `--target-dir/<policy>`, to one point: PostgreSQL exactly to --point-in-time, the
    /// others to their newest snapshot at or before it (or --latest, or --run). Refused
    /// before anything is written when a member's point is further than the group's
    /// `max_skew` from the group's.
    #[arg(long, conflicts_with_all = ["snapshot", "delta", "include", "exclude", "lsn", "xid", "restore_point", "immediate", "port", "db_include", "qdrant_url", "cluster_layout_from"])]
    pub group: Option<String>,
    /// With --group: restore this group backup run (`latest`, or its id or a unique prefix):
    /// PostgreSQL to the run's restore point, the others to the run's snapshots.
    #[arg(long, requires = "group", conflicts_with = "recovery_target")]
    pub run: Option<String>,
    /// Snapshot: an id or a unique prefix of one, the part after its `-`, `latest`,
    /// `latest~N` (the N-th before it) or `latest@TIME` (the newest taken by then). Default:
    /// the latest, or for PostgreSQL the base backup the recovery target needs.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Directory to restore into (created if missing; must be empty unless --force). With
    /// --group: the directory holding each member's, as `DIR/<policy>`.
    #[arg(long, required_unless_present = "targets")]
    pub target_dir: Option<PathBuf>,
    /// With --group: a TOML file with a table per member giving its `target_dir` (and for a
    /// Qdrant member `qdrant_url`, to upload to); members it does not list go to
    /// `--target-dir/<policy>`.
    #[arg(long, value_name = "FILE", requires = "group")]
    pub targets: Option<PathBuf>,
    /// Restore into a non-empty directory, overwriting files with the same names.
    #[arg(long)]
    pub force: bool,
    /// Bring a directory that holds an older or diverged copy (a replica, an old primary, an
    /// earlier restore) up to the snapshot: files already right are kept, changed files get
    /// only their changed chunks (PostgreSQL: pages) written, and what the snapshot does not
    /// have is removed. Files and PostgreSQL policies; refused while PostgreSQL runs on it.
    #[arg(long, conflicts_with_all = ["force", "include", "exclude"])]
    pub delta: bool,
    /// Keep setuid/setgid bits on restored files (dropped by default: a compromised host that
    /// writes backups could otherwise plant a setuid program on the host that restores).
    #[arg(long)]
    pub keep_setuid: bool,
    /// Restore from this storage target (a replica) instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
    /// Files snapshots: restore only entries matching this glob, or under a directory that
    /// does (repeatable; `etc/nginx` is anchored at the source root, a pattern without `/`
    /// such as `*.conf` matches at any depth, `/name` anchors it; `*` within a component,
    /// `**` across them). The directories above them come along.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Files snapshots: leave out entries matching this glob and what is under them
    /// (repeatable; wins over --include).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Check everything the restore would check (snapshot or base backup chosen, WAL needed
    /// and present, target directory, every entry, chunk and pack) and print the plan;
    /// write nothing. The exit code is the one the real run would have before it writes.
    #[arg(long)]
    pub dry_run: bool,
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
#[derive(Debug, Clone, clap::Args)]
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
    /// Only this collection (of the upload).
    #[arg(long, requires = "qdrant_url")]
    pub collection: Option<String>,
    /// Restore it under this name (with --collection).
    #[arg(long, requires = "collection")]
    pub rename_to: Option<String>,
}

/// PostgreSQL recovery targets and start-up.
#[derive(Debug, Clone, clap::Args)]
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
    /// Restore only this database's data (repeatable; `postgres`, `template0` and
    /// `template1` always come along). The other databases' files are left as holes of their
    /// size: the cluster starts, and they are dropped with `DROP DATABASE`.
    #[arg(long, value_name = "NAME", conflicts_with = "delta")]
    pub db_include: Vec<String>,
    /// Port for --start (default: a free port on 127.0.0.1, printed; never a production
    /// default such as 5432 or 6379, where the restored server could take the live one's
    /// clients).
    #[arg(long, requires = "start")]
    pub port: Option<u16>,
    /// OS user that runs the server when dr runs as root.
    #[arg(long, default_value = "postgres", requires = "start")]
    pub run_as: String,
    /// Database user for the checks after --start.
    #[arg(long, default_value = "postgres", requires = "start")]
    pub db_user: String,
    /// How long --start waits for recovery to finish.
    #[arg(long, default_value = "1h", requires = "start")]
    pub start_timeout: String,
    /// Where a tablespace goes: OID=DIR (repeatable; default DIR.tablespaces/OID).
    #[arg(long, value_parser = parse_map)]
    pub tablespace_map: Vec<(String, PathBuf)>,
}

impl PgTargetArgs {
    /// The recovery target asked for, `None` when none was given.
    fn target(&self) -> Result<Option<Target>, UsageError> {
        Ok(Some(if let Some(t) = &self.point_in_time {
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
        } else if self.latest {
            Target::Latest
        } else {
            return Ok(None);
        }))
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
    let Some(policy) = args.policy.as_deref() else {
        return group(config, args).await;
    };
    let config = context::load_scoped(config, crate::config::Scope::Focus(policy))?;
    let out = restore_audited(&config, policy, args).await?;
    if args.json {
        output::json(&out)?;
    }
    Ok(OK)
}

/// One policy's restore, recorded in the audit log; returns its plan (`--dry-run`) or result
/// for `--json`.
async fn restore_audited(
    config: &Config,
    policy: &str,
    args: &RestoreArgs,
) -> anyhow::Result<serde_json::Value> {
    let mut snapshot = None;
    let r = restore(config, policy, args, &mut snapshot).await;
    // The snapshot restored, or (when it could not be picked) what was asked for.
    let which = snapshot
        .or_else(|| args.snapshot.clone())
        .unwrap_or_else(|| "latest".to_owned());
    let what = format!(
        "{policy}@{which} -> {}{}",
        args.dir().display(),
        args.region
            .as_deref()
            .map(|r| format!(" (from {r})"))
            .unwrap_or_default()
    );
    crate::audit::record(
        config,
        crate::audit::Event::new(
            crate::audit::Via::Cli,
            &crate::host::user_name(),
            crate::audit::Action::Restore,
            &what,
            r.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
        ),
    )
    .await;
    r
}

/// Restores as `args` ask (printing what it did unless `--json`); `snapshot` is set to the
/// snapshot restored as soon as it is known. Returns the plan (`--dry-run`) or the result.
async fn restore(
    config: &Config,
    policy: &str,
    args: &RestoreArgs,
    snapshot: &mut Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let policy = context::policy(config, policy)?;
    if args.pg.start
        && matches!(
            policy.source,
            SourceSpec::Files { .. } | SourceSpec::Qdrant(_)
        )
    {
        return Err(UsageError(format!(
            "policy {} backs up {}: --start applies to postgres and redis policies only",
            policy.id,
            policy.source.kind()
        ))
        .into());
    }
    let identity = Arc::new(context::identity(config)?);
    let repo = context::read_repo(config, policy, args.region.as_deref()).await?;
    let port = match args.pg.port {
        Some(p) => p,
        None => crate::drill::sandbox::Sandbox::free_port()
            .map_err(|e| anyhow::anyhow!("no free port on 127.0.0.1 for --start: {e}"))?,
    };
    let req = restore::Request {
        target_dir: args.dir(),
        existing: match () {
            () if args.delta => Existing::Delta,
            () if args.force => Existing::Replace,
            () => Existing::Refuse,
        },
        keep_setuid: args.keep_setuid,
        region: args.region.as_deref(),
        snapshot: args.snapshot.as_deref(),
        options: restore::Options {
            recovery_target: args.pg.target()?,
            tablespace_map: args.pg.tablespace_map.iter().cloned().collect(),
            cluster_layout_from: args.cluster_layout_from.clone(),
            qdrant_upload: args
                .qdrant
                .qdrant_url
                .as_ref()
                .map(|url| restore::qdrant::Upload {
                    url: url.clone(),
                    api_key_env: args.qdrant.qdrant_api_key_env.clone(),
                    peers: args.qdrant.qdrant_peer.clone(),
                    collection: args.qdrant.collection.clone(),
                    rename_to: args.qdrant.rename_to.clone(),
                }),
            include: args.include.clone(),
            exclude: args.exclude.clone(),
            db_include: args.pg.db_include.clone(),
            start: args.pg.start,
        },
    };
    let progress = Arc::new(Progress::default());
    let cancel = context::shutdown_token();
    let job = restore::Job {
        config,
        policy,
        repo: &repo,
        identity: identity.clone(),
        req: &req,
        progress: progress.clone(),
        cancel: &cancel,
    };
    if args.dry_run {
        let plan = restore::plan::plan(&job).await?;
        if !args.json {
            print_plan(&plan, args, port);
        }
        return Ok(serde_json::to_value(&plan)?);
    }
    let bar = output::Bar::start("restore", progress);
    let restored = restore::run(&job).await;
    drop(bar);
    if let Ok(r) = &restored {
        *snapshot = Some(r.summary().snapshot.clone());
    }
    let start = Start {
        servers: &config.sandbox,
        port,
        cancel: &cancel,
    };
    let result = match restored? {
        Restored::Postgres(p) => postgres(policy, &start, &repo, identity, args, &p).await?,
        Restored::Redis(r) => redis(&start, &repo, args, &r).await?,
        Restored::Qdrant(q) => qdrant(&repo, args, &q),
        Restored::Files(f) => {
            if !args.json {
                print_summary(&f.summary, &repo);
            }
            serde_json::to_value(&f.summary)?
        }
    };
    let mut result = result;
    result["peak_rss_bytes"] = serde_json::json!(output::peak_rss_bytes());
    Ok(result)
}

fn qdrant(
    repo: &Repository,
    args: &RestoreArgs,
    q: &restore::qdrant::Restored,
) -> serde_json::Value {
    let s = &q.files.summary;
    let mut result = serde_json::json!({ "restore": s });
    if let Some((url, uploaded)) = &q.uploaded {
        if !args.json {
            print_summary(s, repo);
            for (c, target, n) in uploaded {
                outln!("collection {c} restored as {target} on {url}: {n} points, as recorded");
            }
        }
        result["collections"] = serde_json::json!(uploaded);
    } else if !args.json {
        print_summary(s, repo);
        outln!(
            "next: rerun with --qdrant-url, or upload by hand: curl -X POST '<qdrant>/collections/<name>/snapshots/upload?priority=snapshot' -F snapshot=@{dir}/collections/<name>.snapshot (a sharded backup: create the collection with its shard count, then each {dir}/collections/<name>/shard-<id>.snapshot to '<peer>/collections/<name>/shards/<id>/snapshots/upload?priority=snapshot')",
            dir = args.dir().display()
        );
    }
    result
}

/// How `--start` starts the restored server: with which programs, on which port, until which
/// signal.
struct Start<'a> {
    servers: &'a crate::config::ServerBinaries,
    port: u16,
    cancel: &'a tokio_util::sync::CancellationToken,
}

async fn redis(
    start: &Start<'_>,
    repo: &Repository,
    args: &RestoreArgs,
    r: &restore::redis::Restored,
) -> anyhow::Result<serde_json::Value> {
    let s = &r.files.summary;
    let mut result = serde_json::json!({ "restore": s, "keys_recorded": r.facts.keys_total });
    let dir = &r.dir;
    if let Some(c) = &r.cluster {
        if args.pg.start {
            return Err(UsageError("this is a Redis Cluster snapshot: start each master on its shards/*.rdb (see slot-map.json); --start handles single servers only".to_owned()).into());
        }
        result["cluster"] = serde_json::json!(c.slot_map);
        if args.cluster_layout_from.is_some() {
            result["placement"] = serde_json::json!(c.placement);
        }
        if !args.json {
            print_summary(s, repo);
            for sh in &c.layout {
                outln!(
                    "{}/{}: slots {} ({} keys at backup)",
                    dir.display(),
                    sh.file(),
                    sh.ranges(),
                    sh.keys
                );
            }
            for l in &c.placement {
                outln!("place {l}");
            }
            outln!(
                "next: stop each master, copy its file over its dump.rdb (appendonly no for the first start), start it; slot-map.json lists the layout"
            );
        }
    } else if args.pg.start {
        let started = restore::redis::start(
            dir.clone(),
            start.port,
            Some(r.facts.keys_total),
            None,
            start.servers.redis.clone(),
            start.cancel.clone(),
        )
        .await?;
        if !args.json {
            print_summary(s, repo);
            outln!(
                "{} running on 127.0.0.1:{} with {} keys (as recorded at backup); stop it with: redis-cli -p {} shutdown nosave",
                started.version,
                started.port,
                started.keys_total,
                started.port
            );
        }
        result["started"] = serde_json::to_value(&started)?;
    } else if !args.json {
        print_summary(s, repo);
        outln!(
            "next: redis-server --dir {} --dbfilename dump.rdb --appendonly no   (enable AOF again after the first start if you use it)",
            dir.display()
        );
    }
    Ok(result)
}

fn print_summary(s: &RestoreSummary, repo: &Repository) {
    outln!(
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
    if s.sparse > 0 {
        outln!(
            "{} of the databases not included left as holes: drop them once the server runs (DROP DATABASE)",
            format_bytes(s.sparse)
        );
    }
    if s.reused > 0 || s.removed > 0 {
        outln!(
            "delta: {} already in place (not written), {} entries removed that the snapshot does not have",
            format_bytes(s.reused),
            s.removed
        );
    }
}

async fn postgres(
    policy: &Policy,
    start: &Start<'_>,
    repo: &Repository,
    identity: Arc<Identity>,
    args: &RestoreArgs,
    prepared: &restore::postgres::Prepared,
) -> anyhow::Result<serde_json::Value> {
    let timeout = parse_duration(&args.pg.start_timeout).map_err(UsageError)?;
    eprintln!(
        "dr restore: base backup {} (stop LSN {}), WAL {} .. {} present",
        prepared.refs.snapshot, prepared.facts.stop_lsn, prepared.wal_from, prepared.wal_to
    );
    let s = &prepared.restore;
    let dir = &prepared.data_dir;
    if !args.json {
        print_summary(s, repo);
        for (oid, d) in &prepared.placed {
            outln!("tablespace {oid} -> {}", d.display());
        }
    }
    let mut result = serde_json::json!({ "restore": s, "snapshot": prepared.refs.snapshot.to_string(), "wal_from": prepared.wal_from, "wal_to": prepared.wal_to, "target": prepared.settings.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>() });
    if args.pg.start {
        let mut o = prepared.start_options(
            policy,
            start.servers,
            start.port,
            &args.pg.run_as,
            &args.pg.db_user,
            if timeout.is_zero() {
                Duration::from_secs(3600)
            } else {
                timeout
            },
        );
        o.cancel = start.cancel.clone();
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
            outln!("{line}");
        }
        result["reached"] = serde_json::to_value(&reached)?;
    } else if !args.json {
        outln!(
            "next: start PostgreSQL on {} (pg_ctl -D {} start); it replays WAL to the target and promotes",
            dir.display(),
            dir.display()
        );
        let risky = recovery::risky_settings(dir);
        if !risky.is_empty() {
            outln!(
                "note: the restored configuration runs commands or loads code at start-up; look at these first (`--start` overrides them):"
            );
            for r in risky {
                outln!("  {r}");
            }
        }
    }
    Ok(result)
}

/// `--dry-run`'s report.
fn print_plan(plan: &restore::plan::Plan, args: &RestoreArgs, port: u16) {
    let r = &plan.restore;
    outln!("Dry run: nothing was written. A restore would:");
    outln!(
        "  restore {} snapshot {} of policy {} (taken {})",
        plan.source,
        plan.snapshot,
        plan.policy,
        plan.taken.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if let Some(t) = &plan.recovery_target {
        outln!("  recover to {t}");
    }
    if let Some(w) = &plan.wal {
        outln!(
            "  replay WAL {} .. {} (every segment checked present)",
            w.from,
            w.to
        );
    }
    outln!(
        "  write {} entries, {} into {} ({})",
        r.entries,
        format_bytes(r.bytes),
        plan.target_dir,
        match r.target {
            "missing" => "created",
            "empty" => "empty",
            _ if args.delta =>
                "not empty: brought up to the snapshot, unchanged chunks kept, other entries removed (--delta)",
            _ => "not empty: files with the same names are overwritten (--force)",
        }
    );
    outln!(
        "  read {} packs, at most {} (every chunk located, every pack present with its size)",
        r.packs,
        format_bytes(r.pack_bytes)
    );
    if args.pg.start {
        outln!("  start the restored server on 127.0.0.1:{port}");
    }
}

impl RestoreArgs {
    /// The target directory (clap requires it outside `--group`, which sets it per member).
    fn dir(&self) -> &Path {
        self.target_dir
            .as_deref()
            .expect("--target-dir is required without --group --targets")
    }
}

/// One member's entry in a `--targets` file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberTarget {
    target_dir: PathBuf,
    qdrant_url: Option<String>,
}

/// Reads a `--targets` file: every table a member of the plan, checked before anything runs.
fn member_targets(
    file: Option<&Path>,
    plan: &crate::restore::group::GroupPlan,
) -> anyhow::Result<std::collections::BTreeMap<String, MemberTarget>> {
    let Some(file) = file else {
        return Ok(std::collections::BTreeMap::new());
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| UsageError(format!("reading {}: {e}", file.display())))?;
    let targets: std::collections::BTreeMap<String, MemberTarget> = toml::from_str(&text)
        .map_err(|e| UsageError(format!("{}: {}", file.display(), e.message())))?;
    if let Some(other) = targets
        .keys()
        .find(|k| !plan.members.iter().any(|m| &m.policy == *k))
    {
        return Err(UsageError(format!(
            "{}: `{other}` is not a member of group {}",
            file.display(),
            plan.group
        ))
        .into());
    }
    Ok(targets)
}

/// `--group`: plans every member's point (refused before writing when one is too far), prints
/// the plan, then restores each member into `--target-dir/<policy>` in the group's order.
async fn group(config: Option<&Path>, args: &RestoreArgs) -> anyhow::Result<i32> {
    use crate::restore::group::{self, GroupTarget};
    let id = args.group.as_deref().unwrap_or_default();
    let config = context::load_scoped(config, crate::config::Scope::All)?;
    let g = context::group(&config, id)?;
    let target = match (&args.run, args.pg.target()?) {
        (Some(run), _) => GroupTarget::Run(run.clone()),
        (None, Some(Target::Time(t))) => GroupTarget::Time(t),
        (None, None | Some(Target::Latest)) => GroupTarget::Latest,
        (None, Some(_)) => unreachable!("clap refuses the other targets with --group"),
    };
    let plan = group::plan(&config, g, &target, args.region.as_deref()).await?;
    if !args.json {
        outln!(
            "group {}: to {}{}",
            plan.group,
            plan.point.map_or("?".to_owned(), |p| p
                .format("%Y-%m-%d %H:%M:%S%.3f UTC")
                .to_string()),
            plan.run
                .as_deref()
                .map(|r| format!(" (run {r})"))
                .unwrap_or_default()
        );
        for m in &plan.members {
            outln!(
                "  {} ({}): {}, skew {}",
                m.policy,
                m.source,
                m.recovers_to,
                m.skew_seconds
                    .map_or("?".to_owned(), |s| format!("{s:.1}s"))
            );
        }
    }
    let targets = member_targets(args.targets.as_deref(), &plan)?;
    let mut results = Vec::new();
    for m in &plan.members {
        let mut a = args.clone();
        a.group = None;
        a.run = None;
        a.targets = None;
        a.policy = Some(m.policy.clone());
        let dir = match (targets.get(&m.policy), &args.target_dir) {
            (Some(t), _) => {
                a.qdrant.qdrant_url.clone_from(&t.qdrant_url);
                t.target_dir.clone()
            }
            (None, Some(d)) => d.join(&m.policy),
            (None, None) => {
                return Err(UsageError(format!(
                    "{} does not say where {} goes, and there is no --target-dir",
                    args.targets
                        .as_deref()
                        .unwrap_or(Path::new("--targets"))
                        .display(),
                    m.policy
                ))
                .into());
            }
        };
        if !args.dry_run
            && let Some(parent) = dir.parent()
        {
            // Traversable by the servers' OS users (each member's own directory is theirs),
            // not listable by others.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
        }
        a.target_dir = Some(dir);
        a.snapshot = m.snapshot.clone();
        a.pg.point_in_time = None;
        a.pg.latest = false;
        match &m.recovery {
            Some(Target::Time(t)) => a.pg.point_in_time = Some(t.to_rfc3339()),
            Some(Target::Name(n)) => a.pg.restore_point = Some(n.clone()),
            _ => {}
        }
        // Members that cannot be started are restored as files.
        a.pg.start = args.pg.start && matches!(m.source, "postgres" | "redis");
        if !args.json {
            outln!("{}:", m.policy);
        }
        results.push(serde_json::json!({
            "policy": m.policy,
            "target_dir": a.dir(),
            "result": restore_audited(&config, &m.policy, &a).await?,
        }));
    }
    if args.json {
        output::json(&serde_json::json!({ "plan": plan, "members": results }))?;
    } else if !args.dry_run {
        outln!("group {} restored: {}", plan.group, group::describe(&plan));
    }
    Ok(OK)
}
