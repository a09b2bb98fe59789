//! A Redis drill: a sandbox server per restored RDB (one per master of a cluster snapshot),
//! the key count against the backup's, the Redis checks (a cluster's answered by the shard
//! that holds the data).

use std::time::Instant;

use super::super::{Run, record_check};
use crate::config::CheckQuery;
use crate::drill::sandbox::Sandbox;
use crate::restore;

/// Starts a sandbox server per restored RDB (one per master of a cluster), checks the key
/// count, runs the Redis checks.
pub(in crate::drill) async fn check(
    run: &mut Run<'_>,
    sb: &mut Sandbox,
    server_user: Option<crate::host::User>,
    r: &restore::redis::Restored,
) -> Result<(), crate::drill::DrillError> {
    let dirs = match &r.cluster {
        None => vec![r.dir.clone()],
        Some(c) => restore::redis::split_shards(&r.dir, &c.layout, sb.path())?,
    };
    let t = Instant::now();
    let mut ports = Vec::new();
    let mut keys_total = 0;
    let mut server_version = String::new();
    for dir in dirs {
        let port = Sandbox::free_port()?;
        sb.own_redis(port, dir.clone());
        match restore::redis::start(
            dir,
            port,
            None,
            server_user.clone(),
            run.config.sandbox.redis.clone(),
            run.cancel.clone(),
        )
        .await
        {
            Ok(s) => {
                keys_total += s.keys_total;
                server_version = s.version;
                ports.push(port);
            }
            Err(e) => {
                run.phase("recovery", t);
                run.builtin(
                    "redis-server loaded the snapshot",
                    "the sandbox answers",
                    crate::error::chain(&e),
                    false,
                    0.0,
                );
                return Ok(());
            }
        }
    }
    run.phase("recovery", t);
    run.versions
        .insert("redis (sandbox)".to_owned(), server_version);
    run.versions.insert(
        "redis (backed up)".to_owned(),
        r.facts.redis_version.clone(),
    );
    let expected = r.facts.keys_total;
    run.builtin(
        "key count matches the backup",
        &format!("{expected} keys (recorded at backup)"),
        format!("{keys_total} keys"),
        expected == keys_total,
        0.0,
    );
    let t = Instant::now();
    for c in run.drill.checks.clone() {
        let CheckQuery::Redis(parts) = c.query.clone() else {
            continue;
        };
        let tc = Instant::now();
        // With several shards, the answer of the shard that has the data: the first
        // that meets the expectation, else the first answer.
        let ports2 = ports.clone();
        let expect = c.expect.clone();
        let got = tokio::task::spawn_blocking(move || {
            let answers: Vec<Result<String, String>> =
                ports2.iter().map(|p| redis_command(*p, &parts)).collect();
            answers
                .iter()
                .find(|a| {
                    a.as_ref()
                        .is_ok_and(|v| expect.as_ref().is_none_or(|e| e.holds(v)))
                })
                .cloned()
                .unwrap_or_else(|| answers[0].clone())
        })
        .await?;
        // Judged against the recovery point: the snapshot's time.
        let point = run.snapshot.as_ref().map_or(run.started, |s| s.1);
        record_check(run, &c, "redis", got, point, tc);
    }
    run.phase("checks", t);
    Ok(())
}

pub(in crate::drill) fn redis_command(port: u16, parts: &[String]) -> Result<String, String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut c = client
        .get_connection_with_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut cmd = redis::cmd(&parts[0]);
    for a in &parts[1..] {
        cmd.arg(a);
    }
    let v: redis::Value = cmd.query(&mut c).map_err(|e| e.to_string())?;
    Ok(redis_text(&v))
}

fn redis_text(v: &redis::Value) -> String {
    match v {
        redis::Value::Nil => "(nil)".to_owned(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Okay => "OK".to_owned(),
        redis::Value::Array(a) | redis::Value::Set(a) => {
            a.iter().map(redis_text).collect::<Vec<_>>().join(" ")
        }
        redis::Value::Double(d) => d.to_string(),
        redis::Value::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}
