//! A PostgreSQL drill: the restored cluster started in the sandbox with its WAL fed through
//! the keyless spool, the point recovery reached judged against the target, the SQL checks.

use std::sync::Arc;
use std::time::Instant;

use super::super::{Run, record_check};
use crate::config::CheckQuery;
use crate::drill::sandbox::Sandbox;
use crate::pipeline::Repository;
use crate::pipeline::pitr::Target;
use crate::repo::keys::Identity;
use crate::restore;
use crate::source::postgres::recovery::{self, Reached};

/// Starts the restored cluster in the sandbox, checks the point recovery reached, runs the
/// SQL checks.
pub(in crate::drill) async fn check(
    run: &mut Run<'_>,
    repo: &Repository,
    identity: Arc<Identity>,
    sb: &mut Sandbox,
    server_user: Option<crate::host::User>,
    prepared: &restore::postgres::Prepared,
    target: &Target,
) -> Result<(), crate::drill::DrillError> {
    let port = Sandbox::free_port()?;
    let mut o = prepared.start_options(
        run.policy,
        &run.config.sandbox,
        port,
        &run.drill.run_as,
        &run.drill.db_user,
        run.drill.start_timeout,
    );
    o.cancel = run.cancel.clone();
    sb.own_postgres(prepared.data_dir.clone(), o.clone());
    let t = Instant::now();
    let reached = prepared
        .start(
            repo,
            identity,
            o.clone(),
            server_user,
            run.policy.wal.fetch_ahead,
        )
        .await;
    run.phase("recovery", t);
    let reached = match reached {
        Ok(r) => r,
        Err(e) => {
            run.builtin(
                "server started, WAL replayed, promoted",
                "the sandbox answers queries after recovery",
                crate::error::chain(&e),
                false,
                0.0,
            );
            return Ok(());
        }
    };
    run.reached = Some(match &reached.replay_timestamp {
        Some(ts) => format!("{ts} (LSN {})", reached.lsn),
        None => format!(
            "LSN {} (no transaction replayed after the base backup)",
            reached.lsn
        ),
    });
    let (ok, expected, actual) = pitr_reached(target, &reached);
    run.builtin(
        "recovery reached the target point",
        &expected,
        actual,
        ok,
        reached.seconds,
    );
    if let Ok(v) = recovery::psql(&prepared.data_dir, &o, "postgres", "SHOW server_version") {
        run.versions.insert("postgresql (sandbox)".to_owned(), v);
    }
    // Freshness is judged against the recovery point: the target time, or for `latest` the
    // last replayed transaction (the base backup's end when there was none).
    let point = match target {
        Target::Time(t) => *t,
        _ => reached
            .replay_timestamp
            .as_deref()
            .and_then(|s| crate::pipeline::pitr::parse_time(s).ok())
            .or(run.snapshot.as_ref().map(|s| s.1))
            .unwrap_or(run.started),
    };
    let t = Instant::now();
    for c in run.drill.checks.clone() {
        let (dir, o) = (prepared.data_dir.clone(), o.clone());
        let CheckQuery::Sql { database, sql } = c.query.clone() else {
            continue;
        };
        let tc = Instant::now();
        let got = tokio::task::spawn_blocking(move || recovery::psql(&dir, &o, &database, &sql))
            .await?
            .map_err(|e| e.to_string());
        record_check(run, &c, "sql", got, point, tc);
    }
    run.phase("checks", t);
    Ok(())
}

/// Did recovery stop where it should? Time targets: the last replayed transaction is not after
/// the target. Latest: the server promoted (it replayed everything archived).
fn pitr_reached(target: &Target, reached: &Reached) -> (bool, String, String) {
    match target {
        Target::Time(t) => {
            let replay = reached
                .replay_timestamp
                .as_deref()
                .and_then(|s| crate::pipeline::pitr::parse_time(s).ok());
            let expected = format!("last replayed transaction at or before {}", t.to_rfc3339());
            match replay {
                Some(r) => (
                    r <= *t,
                    expected,
                    format!(
                        "last replayed transaction at {} (LSN {}), promoted",
                        r.to_rfc3339(),
                        reached.lsn
                    ),
                ),
                None => (
                    true,
                    expected,
                    format!(
                        "no transaction after the base backup to replay before the target; consistent at LSN {}, promoted",
                        reached.lsn
                    ),
                ),
            }
        }
        _ => (
            true,
            "all archived WAL replayed, server promoted".to_owned(),
            format!(
                "promoted at LSN {}; last replayed transaction {}",
                reached.lsn,
                reached
                    .replay_timestamp
                    .as_deref()
                    .unwrap_or("(none after the base backup)")
            ),
        ),
    }
}
