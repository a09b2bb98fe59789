//! PostgreSQL: the newest base backup that ends before the recovery target, chosen with
//! every WAL segment it needs checked present before anything is written; restored,
//! tablespaces placed, recovery settings with a `dr wal-fetch` restore command written; and
//! started (`--start`, drills) with its WAL fed through a keyless spool ([`super::wal_feed`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Job, RestoreError};
use crate::config::{Policy, SourceSpec};
use crate::pipeline::pitr::{self, Target};
use crate::pipeline::restore::{self, Existing, RestoreSummary};
use crate::pipeline::{PipelineError, Repository};
use crate::repo::keys::Identity;
use crate::repo::manifest::Refs;
use crate::source::SourceError;
use crate::source::postgres::PgFacts;
use crate::source::postgres::binaries::{self, Fits};
use crate::source::postgres::recovery::{self, StartOptions};

/// A PostgreSQL data directory restored and configured to recover to a target.
#[derive(Debug)]
pub struct Prepared {
    /// The files restored.
    pub restore: RestoreSummary,
    /// The base backup's refs.
    pub refs: Refs,
    /// Its facts (LSNs, timeline, versions).
    pub facts: PgFacts,
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

impl Prepared {
    /// Options to start it with (`--start`, drills).
    pub fn start_options(
        &self,
        policy: &Policy,
        servers: &crate::config::ServerBinaries,
        port: u16,
        run_as: &str,
        db_user: &str,
        timeout: std::time::Duration,
    ) -> StartOptions {
        let major = self.facts.major();
        let bin_dirs = server_dirs(servers, policy, major);
        StartOptions {
            bin_dirs,
            major,
            port,
            run_as: run_as.to_owned(),
            db_user: db_user.to_owned(),
            timeout,
            also_own: self.placed.iter().map(|(_, d)| d.clone()).collect(),
            restore_command: self.restore_command.clone(),
            cancel: tokio_util::sync::CancellationToken::new(),
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
    ) -> Result<recovery::Reached, RestoreError> {
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
        o.restore_command = feed.restore_command().map_err(RestoreError::io(
            "locating the dr executable for restore_command",
        ))?;
        let dir = self.data_dir.clone();
        let reached = tokio::task::spawn_blocking(move || recovery::start(&dir, &o)).await;
        feed.stop().await;
        Ok(reached.map_err(|e| PipelineError::Internal(e.to_string()))??)
    }
}

/// Where the server programs of `major` are looked for first: `[sandbox]`'s directory for
/// that major, then the policy's own `source.bin_dir` ([`binaries::find`] goes on to Debian's
/// layout and PATH).
fn server_dirs(
    servers: &crate::config::ServerBinaries,
    policy: &Policy,
    major: i32,
) -> Vec<PathBuf> {
    servers
        .postgres
        .get(&major)
        .cloned()
        .into_iter()
        .chain(match &policy.source {
            SourceSpec::Postgres(spec) => spec.bin_dir.clone(),
            _ => None,
        })
        .collect()
}

/// Plans (base backup + WAL continuity, before writing anything), restores the base backup,
/// places tablespaces and writes the recovery settings for the request's target (default:
/// the end of the archived WAL).
///
/// # Errors
/// No base backup or WAL gap for the target, restore failures, I/O.
pub async fn prepare(job: &Job<'_>) -> Result<Prepared, RestoreError> {
    let (config, policy, req) = (job.config, job.policy, job.req);
    let target = req
        .options
        .recovery_target
        .as_ref()
        .unwrap_or(&Target::Latest);
    let (plan, manifest) = chosen(job, target).await?;
    if req.options.start {
        let major = plan.facts.major();
        let dirs = server_dirs(&config.sandbox, policy, major);
        if let Err(SourceError::ToolMissing { tool, install }) =
            binaries::find("pg_ctl", &dirs, major, Fits::Exact)
        {
            return Err(RestoreError::usage_with_hint(
                format!(
                    "the snapshot is of PostgreSQL {major}, and this host has no {tool} to start it with"
                ),
                install,
            ));
        }
    }
    let tablespaces = &plan.facts.tablespaces;
    tracing::info!(
        policy = %policy.id,
        snapshot = %plan.snapshot,
        wal_from = %plan.wal_from,
        wal_to = %plan.wal_to,
        "Base backup chosen; the WAL it needs is present."
    );
    let dir = req.absolute_dir()?;
    let linked = if req.existing == Existing::Delta {
        linked_tablespaces(&dir, tablespaces, &req.options.tablespace_map)
    } else {
        Vec::new()
    };
    let layout = restore::Layout {
        sparse: other_databases(&manifest, &req.options.db_include)?,
        redirect: linked
            .iter()
            .map(|(oid, d)| (format!("pg_tblspc/{oid}").into_bytes(), d.clone()))
            .collect(),
    };
    let restore = super::files::into_dir(job, &manifest, layout).await?;

    let placed =
        recovery::place_tablespaces(&dir, tablespaces, &req.options.tablespace_map, &linked)?;
    let exe = std::env::current_exe().map_err(RestoreError::io(
        "locating the dr executable for restore_command",
    ))?;
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
    Ok(Prepared {
        restore,
        refs: plan.refs,
        facts: plan.facts,
        wal_from: plan.wal_from,
        wal_to: plan.wal_to,
        settings,
        placed,
        data_dir: dir,
        restore_command,
        wal_segment_size: plan.wal_segment_size,
    })
}

/// Databases `--db-include` always restores: without them the cluster does not start, or
/// nothing can connect to drop the others.
const SYSTEM_DATABASES: [&str; 3] = ["postgres", "template0", "template1"];

/// With `--db-include`: which entries of `manifest` are relation files of the databases
/// not included (restored as holes of their size, as pgBackRest does; replay overwrites the
/// pages it touches with their full-page images, and `DROP DATABASE` needs nothing of them).
///
/// # Errors
/// A name the base backup does not have (the ones it has listed), or a base backup from
/// before database names were recorded.
pub fn other_databases(
    manifest: &crate::pipeline::SpooledManifest,
    include: &[String],
) -> Result<Option<restore::Sparse>, RestoreError> {
    if include.is_empty() {
        return Ok(None);
    }
    let snapshot = manifest.snapshot.to_string();
    let facts = PgFacts::of(
        &snapshot,
        manifest.source.facts.as_object().into_iter().flatten(),
    )?;
    if facts.databases.is_empty() {
        return Err(RestoreError::usage_with_hint(
            format!("base backup {snapshot} does not record its databases (taken by an older dr)"),
            "restore it whole, or take a base backup now and restore that",
        ));
    }
    let unknown: Vec<&str> = include
        .iter()
        .filter(|n| !facts.databases.values().any(|d| d == *n))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let mut have: Vec<&str> = facts.databases.values().map(String::as_str).collect();
        have.sort_unstable();
        return Err(RestoreError::usage(format!(
            "no database {} in base backup {snapshot}; it has: {}",
            unknown.join(", "),
            have.join(", ")
        )));
    }
    let others: std::collections::BTreeSet<String> = facts
        .databases
        .into_iter()
        .filter(|(_, name)| !include.contains(name) && !SYSTEM_DATABASES.contains(&name.as_str()))
        .map(|(oid, _)| oid)
        .collect();
    Ok(Some(Arc::new(move |name: &[u8]| {
        relation_database(name).is_some_and(|db| others.contains(db))
    })))
}

/// The database OID of a relation file's entry name: `base/DB/FILE` or
/// `pg_tblspc/TS/PG_…/DB/FILE` where FILE is a relation file (`16384`, `16384_fsm`,
/// `16384.1`; not `PG_VERSION`, `pg_filenode.map`, `pg_internal.init`).
fn relation_database(name: &[u8]) -> Option<&str> {
    use std::os::unix::ffi::OsStrExt;
    let rel = Path::new(std::ffi::OsStr::from_bytes(name));
    if !crate::source::postgres::is_relation_file(rel) {
        return None;
    }
    let parts: Vec<&str> = rel
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<_>>()?;
    let db = match parts.as_slice() {
        ["base", db, _] | ["pg_tblspc", _, _, db, _] => *db,
        _ => return None,
    };
    is_oid(db).then_some(db)
}

/// The base backup `target` needs, its WAL checked present, and its manifest; with
/// `--force`, the target directory checked not to hold a running cluster.
///
/// # Errors
/// No base backup or WAL gap for the target, a running cluster, a hostile tablespace name.
pub async fn chosen(
    job: &Job<'_>,
    target: &Target,
) -> Result<(pitr::Plan, crate::pipeline::SpooledManifest), RestoreError> {
    let (policy, repo, req) = (job.policy, job.repo, job.req);
    if req.existing != Existing::Refuse {
        refuse_running_cluster(req.target_dir)?;
    }
    let plan = pitr::plan(repo, policy.id.as_str(), target, req.snapshot).await?;
    // Tablespace names become paths beside the data directory: only OIDs are accepted.
    if let Some(bad) = plan.facts.tablespaces.keys().find(|oid| !is_oid(oid)) {
        return Err(PipelineError::HostileEntry {
            snapshot: plan.snapshot.to_string(),
            name: format!("pg_tblspc/{bad}"),
            reason: "is a tablespace whose name is not an OID".to_owned(),
        }
        .into());
    }
    let manifest = repo
        .spool_manifest(job.identity.clone(), policy.id.as_str(), &plan.snapshot)
        .await?;
    Ok((plan, manifest))
}

/// `--delta`: the tablespaces whose `pg_tblspc/OID` link in the data directory leads to
/// where the restore would place them (beside the data directory, as an earlier restore
/// left them, or the `--tablespace-map` directory): brought up to date there, the links
/// kept. A link anywhere else (a copy of a data directory whose links still lead to the
/// running cluster's tablespaces) is not followed: it is removed, and the tablespace is
/// restored afresh to its place, which must then be empty. A replica's tablespaces are
/// updated in place with `--tablespace-map OID=THAT_DIR`.
fn linked_tablespaces(
    dir: &Path,
    tablespaces: &std::collections::BTreeMap<String, String>,
    map: &std::collections::BTreeMap<String, PathBuf>,
) -> Vec<(String, PathBuf)> {
    tablespaces
        .keys()
        .filter_map(|oid| {
            let link = dir.join("pg_tblspc").join(oid);
            if !std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                return None;
            }
            let (at, place) = (
                std::fs::canonicalize(&link).ok()?,
                std::fs::canonicalize(recovery::tablespace_place(dir, oid, map)).ok()?,
            );
            (at == place && place.is_dir()).then(|| (oid.clone(), place))
        })
        .collect()
}

/// A tablespace OID as PostgreSQL writes it under `pg_tblspc/`.
fn is_oid(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u32>().is_ok()
}

/// `--force` into the data directory of a running server would corrupt it under the server's
/// feet: refused while `postmaster.pid` names a live process.
fn refuse_running_cluster(dir: &Path) -> Result<(), RestoreError> {
    let pid_file = dir.join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let pid = text.lines().next().unwrap_or_default().trim();
    if !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && Path::new("/proc").join(pid).exists()
    {
        return Err(RestoreError::usage_with_hint(
            format!(
                "{} is the data directory of a running PostgreSQL server (pid {pid}, {})",
                dir.display(),
                pid_file.display()
            ),
            "stop it first, or restore elsewhere",
        ));
    }
    Ok(())
}
