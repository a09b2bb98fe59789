//! Restores shared by `dr restore` and restore drills: a snapshot into a directory, and a
//! PostgreSQL base backup prepared for point-in-time recovery (tablespaces placed, recovery
//! settings with a `dr wal-fetch` restore command written).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Policy, SourceSpec};
use crate::pipeline::pitr::{self, Target};
use crate::pipeline::progress::Progress;
use crate::pipeline::restore::{self, RestoreOptions, RestoreSummary};
use crate::pipeline::{Repository, SpooledManifest};
use crate::repo::keys::Identity;
use crate::repo::manifest::{ManifestHead, Refs};
use crate::source::postgres::recovery::{self, StartOptions};

/// Where and how to restore.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Target directory.
    pub target_dir: &'a Path,
    /// Overwrite into a non-empty directory.
    pub force: bool,
    /// Keep setuid/setgid bits of restored files.
    pub keep_setuid: bool,
    /// The storage target read from (for WAL fetching), `None` = primary.
    pub region: Option<&'a str>,
    /// Snapshot selector (`None`: latest, or chosen for the PITR target).
    pub snapshot: Option<&'a str>,
}

/// Restores `manifest` into the request's directory.
///
/// # Errors
/// Any restore failure (named object, I/O path).
pub async fn files(
    config: &Config,
    repo: &Repository,
    identity: Arc<Identity>,
    manifest: &SpooledManifest,
    req: &Request<'_>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> anyhow::Result<RestoreSummary> {
    let opts = RestoreOptions {
        concurrency: config.pipeline.restore_concurrency,
        force: req.force,
        keep_setuid: req.keep_setuid,
    };
    Ok(restore::run(
        repo,
        identity,
        manifest,
        req.target_dir,
        &opts,
        progress,
        cancel,
    )
    .await?)
}

/// The manifest of the request's snapshot (default: the latest).
///
/// # Errors
/// No such snapshot, storage or key errors.
pub async fn selected_manifest(
    repo: &Repository,
    identity: &Arc<Identity>,
    policy: &Policy,
    snapshot: Option<&str>,
) -> anyhow::Result<SpooledManifest> {
    let id = repo
        .resolve(policy.id.as_str(), snapshot.unwrap_or("latest"))
        .await?;
    Ok(repo
        .spool_manifest(identity.clone(), policy.id.as_str(), &id)
        .await?)
}

/// A PostgreSQL data directory restored and configured to recover to a target.
#[derive(Debug)]
pub struct PgPrepared {
    /// The file restore.
    pub restore: RestoreSummary,
    /// The base backup's refs (LSNs, timeline, versions).
    pub refs: Refs,
    /// First WAL segment needed.
    pub wal_from: String,
    /// Last WAL segment needed (for a bounded target).
    pub wal_to: String,
    /// Recovery settings written (`recovery_target_time = …`).
    pub settings: Vec<(&'static str, String)>,
    /// Tablespaces placed: (OID, directory).
    pub placed: Vec<(String, PathBuf)>,
    /// Absolute data directory.
    pub data_dir: PathBuf,
    /// The `restore_command` written (and forced when dr starts the server).
    pub restore_command: String,
    /// The cluster's WAL segment size.
    pub wal_segment_size: u64,
}

impl PgPrepared {
    /// Options to start it with (`--start`, drills).
    pub fn start_options(
        &self,
        policy: &Policy,
        port: u16,
        run_as: &str,
        db_user: &str,
        timeout: std::time::Duration,
    ) -> StartOptions {
        let bin_dir = match &policy.source {
            SourceSpec::Postgres(spec) => spec.bin_dir.clone(),
            _ => None,
        };
        let major = self
            .refs
            .facts
            .get("server_version_num")
            .and_then(serde_json::Value::as_i64)
            .map_or(15, |v| i32::try_from(v / 10000).unwrap_or(15));
        StartOptions {
            bin_dir,
            major,
            port,
            run_as: run_as.to_owned(),
            db_user: db_user.to_owned(),
            timeout,
            also_own: self.placed.iter().map(|(_, d)| d.clone()).collect(),
            restore_command: self.restore_command.clone(),
        }
    }

    /// Starts the prepared cluster as `o` says and waits for recovery and promotion, its WAL
    /// fed from `repo` through a spool beside the data directory (the server's
    /// `restore_command` then needs no keys: see [`super::wal_feed`]). `owner` is the
    /// server's OS user when dr runs as root; `fetch_ahead` segments (`wal.fetch_ahead`) at most
    /// wait in the spool.
    ///
    /// # Errors
    /// The spool cannot be set up, or the server does not start or promote in time.
    pub async fn start(
        &self,
        repo: &Repository,
        identity: Arc<Identity>,
        mut o: StartOptions,
        owner: Option<crate::host::User>,
        fetch_ahead: usize,
    ) -> anyhow::Result<recovery::Reached> {
        let mut spool = self.data_dir.as_os_str().to_owned();
        spool.push(".wal-spool");
        let feed = super::wal_feed::WalFeed::start(
            Arc::new(repo.clone()),
            identity,
            &self.refs.policy,
            self.wal_segment_size,
            PathBuf::from(spool),
            owner,
            fetch_ahead,
        )
        .await?;
        o.restore_command = feed.restore_command()?;
        let dir = self.data_dir.clone();
        let reached = tokio::task::spawn_blocking(move || recovery::start(&dir, &o)).await;
        feed.stop().await;
        Ok(reached??)
    }
}

/// Plans (base backup + WAL continuity, before writing anything), restores the base backup,
/// places tablespaces and writes the recovery settings for `target`.
///
/// # Errors
/// No base backup or WAL gap for the target, restore failures, I/O.
#[allow(clippy::too_many_arguments)]
pub async fn postgres(
    config: &Config,
    policy: &Policy,
    repo: &Repository,
    identity: Arc<Identity>,
    target: &Target,
    req: &Request<'_>,
    tablespace_map: &BTreeMap<String, PathBuf>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> anyhow::Result<PgPrepared> {
    if req.force {
        refuse_running_cluster(req.target_dir)?;
    }
    let plan = pitr::plan(repo, policy.id.as_str(), target, req.snapshot).await?;
    // Tablespace names become paths beside the data directory: only OIDs are accepted.
    let tablespaces: BTreeMap<String, String> = plan
        .refs
        .facts
        .get("tablespaces")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    if let Some(bad) = tablespaces.keys().find(|oid| !is_oid(oid)) {
        anyhow::bail!(crate::pipeline::PipelineError::HostileEntry {
            snapshot: plan.snapshot.to_string(),
            name: format!("pg_tblspc/{bad}"),
            reason: "is a tablespace whose name is not an OID".to_owned(),
        });
    }
    let manifest = repo
        .spool_manifest(identity.clone(), policy.id.as_str(), &plan.snapshot)
        .await?;
    tracing::info!(
        policy = %policy.id,
        snapshot = %plan.snapshot,
        wal_from = %plan.wal_from,
        wal_to = %plan.wal_to,
        "Base backup chosen; the WAL it needs is present."
    );
    let restore = files(config, repo, identity, &manifest, req, progress, cancel).await?;

    let dir = std::path::absolute(req.target_dir)?;
    let placed = recovery::place_tablespaces(&dir, &tablespaces, tablespace_map)?;
    let exe = std::env::current_exe().context("locating the dr executable for restore_command")?;
    let mut restore_command = format!(
        "\"{}\" -c \"{}\" wal-fetch --policy {} --wal-segment-size {}",
        exe.display(),
        config.path.display(),
        policy.id,
        plan.wal_segment_size
    );
    if let Some(r) = req.region {
        restore_command.push_str(&format!(" --region {r}"));
    }
    restore_command.push_str(" %f %p");
    let mut settings: Vec<(&'static str, String)> = match target {
        Target::Time(t) => vec![(
            "recovery_target_time",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        )],
        Target::Lsn(l) => vec![("recovery_target_lsn", l.to_string())],
        Target::Xid(x) => vec![("recovery_target_xid", x.clone())],
        Target::Name(n) => vec![("recovery_target_name", n.clone())],
        Target::Immediate => vec![("recovery_target", "immediate".to_owned())],
        Target::Latest => vec![],
    };
    if !matches!(target, Target::Latest) {
        settings.push(("recovery_target_action", "promote".to_owned()));
    }
    recovery::write_recovery(&dir, &restore_command, &settings)?;
    // The moves and recovery settings are as durable as the files restored before them.
    let tblspc = dir.join("pg_tblspc");
    restore::sync_dirs(
        std::iter::once(dir.as_path())
            .chain(placed.iter().map(|_| tblspc.as_path()))
            .chain(placed.iter().filter_map(|(_, d)| d.parent())),
    )?;
    Ok(PgPrepared {
        restore,
        refs: plan.refs,
        wal_from: plan.wal_from,
        wal_to: plan.wal_to,
        settings,
        placed,
        data_dir: dir,
        restore_command,
        wal_segment_size: plan.wal_segment_size,
    })
}

/// A tablespace OID as PostgreSQL writes it under `pg_tblspc/`.
fn is_oid(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u32>().is_ok()
}

/// `--force` into the data directory of a running server would corrupt it under the server's
/// feet: refused while `postmaster.pid` names a live process.
fn refuse_running_cluster(dir: &Path) -> anyhow::Result<()> {
    let pid_file = dir.join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let pid = text.lines().next().unwrap_or_default().trim();
    if !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && Path::new("/proc").join(pid).exists()
    {
        return Err(crate::error::UsageError(format!(
            "{} is the data directory of a running PostgreSQL server (pid {pid}, {}): stop it first, or restore elsewhere",
            dir.display(),
            pid_file.display()
        ))
        .into());
    }
    Ok(())
}

/// What a Qdrant restore did per collection: (collection, restored as, points).
pub type QdrantRestored = Vec<(String, String, u64)>;

/// The collections recorded in a Qdrant snapshot's manifest, and the server version.
///
/// # Errors
/// The manifest lacks them (not a Qdrant snapshot).
pub fn qdrant_facts(
    manifest: &ManifestHead,
) -> anyhow::Result<(String, Vec<crate::source::qdrant::CollectionFacts>)> {
    let f = &manifest.source.facts;
    let version = f["qdrant_version"].as_str().unwrap_or_default().to_owned();
    let collections = serde_json::from_value(f["collections"].clone()).map_err(|e| {
        anyhow::anyhow!(
            "snapshot {} has no Qdrant collection facts: {e}",
            manifest.snapshot
        )
    })?;
    Ok((version, collections))
}

/// Uploads the restored `.snapshot` files in `dir` to the target server or cluster (after
/// checking its version), each as `rename_to` or its own name, and checks each point count.
///
/// # Errors
/// Version mismatch, unknown collection, upload, layout or count failures.
pub async fn qdrant_upload(
    target: &crate::source::qdrant::restore::Target,
    manifest: &ManifestHead,
    dir: &Path,
    collection: Option<&str>,
    rename_to: Option<&str>,
) -> anyhow::Result<QdrantRestored> {
    let (version, facts) = qdrant_facts(manifest)?;
    let server = target.entry.version().await?;
    crate::source::qdrant::restore::compatible(&version, &server)
        .map_err(|e| crate::error::UsageError(format!("{}: {e}", target.entry.url())))?;
    let selected: Vec<_> = facts
        .iter()
        .filter(|f| collection.is_none_or(|c| c == f.name))
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = facts.iter().map(|f| f.name.as_str()).collect();
        return Err(crate::error::UsageError(format!(
            "snapshot {} has no collection `{}` (it has: {})",
            manifest.snapshot,
            collection.unwrap_or_default(),
            names.join(", ")
        ))
        .into());
    }
    let mut out = Vec::new();
    for f in selected {
        let name = rename_to.unwrap_or(&f.name).to_owned();
        if !crate::source::qdrant::valid_collection_name(&name) {
            anyhow::bail!(crate::pipeline::PipelineError::HostileEntry {
                snapshot: manifest.snapshot.to_string(),
                name: name.escape_debug().to_string(),
                reason: "is not a usable collection name".to_owned(),
            });
        }
        let n = crate::source::qdrant::restore::restore_collection(target, dir, &name, f).await?;
        out.push((f.name.clone(), name, n));
    }
    Ok(out)
}
