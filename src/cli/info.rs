//! `dr info`: one overview of every policy (see [`crate::ops::info`]).

use std::path::Path;
use std::time::Duration;

use crate::config::units::{format_bytes, format_duration};
use crate::error::{OK, PARTIAL};
use crate::ops::info::{self, Info, PolicyInfo};

use super::{context, output};

/// Arguments of `dr info`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Reads only the repositories (no database, no restore identity).
Exit code 3 when a policy file does not load or a primary repository cannot be read.

Examples:
  dr info
  dr info --policy pg-main
  dr info --json | jq '.policies[] | {id, newest: .newest.finished, latest: .postgres.latest}'
The JSON schema is docs/info.md."
)]
pub struct InfoArgs {
    /// Only this policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// JSON on stdout (schema `dr.info/2`).
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: &InfoArgs) -> anyhow::Result<i32> {
    let scope = match &args.policy {
        Some(id) => crate::config::Scope::Focus(id),
        None => crate::config::Scope::All,
    };
    let (config, mut broken) = crate::config::load_scoped(&context::config_path(config), scope)?;
    if let Some(id) = &args.policy {
        context::policy(&config, id)?;
        // Other files' errors are not this policy's.
        broken.clear();
    }
    let info = info::gather(&config, args.policy.as_deref(), &broken).await;
    if args.json {
        output::json(&info)?;
    } else {
        print(&info);
    }
    let failed = !info.broken.is_empty() || info.policies.iter().any(|p| p.error.is_some());
    Ok(if failed { PARTIAL } else { OK })
}

fn ago(seconds: i64) -> String {
    format!(
        "{} ago",
        format_duration(Duration::from_secs(seconds.max(0).unsigned_abs()))
    )
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn print(info: &Info) {
    if info.policies.is_empty() && info.broken.is_empty() {
        outln!("No policies (add one to the policies directory).");
    }
    for j in &info.running {
        outln!(
            "RUNNING {} {} (policy {}), started {}: {}",
            j.kind,
            j.name,
            j.policy,
            ago(j.elapsed_seconds as i64),
            output::describe(&j.progress)
        );
    }
    for p in &info.policies {
        print_policy(p);
    }
    for g in &info.groups {
        outln!(
            "group {}: {} (max_skew {}{})",
            g.id,
            g.members.join(", "),
            format_duration(Duration::from_secs_f64(g.max_skew_seconds)),
            g.schedule
                .as_deref()
                .map(|s| format!(", schedule \"{s}\""))
                .unwrap_or_default()
        );
        match (&g.error, &g.last_run) {
            (Some(e), _) => outln!("  ERROR reading its runs: {e}"),
            (None, None) => outln!("  runs: none yet (dr backup --group {})", g.id),
            (None, Some(r)) => outln!(
                "  runs: {}, newest {} finished {}, members within {:.1}s",
                g.runs,
                r.run,
                ago(r.age_seconds),
                r.skew_seconds
            ),
        }
    }
    for b in &info.broken {
        outln!("BROKEN {} (not loaded; nothing runs for it):", b.file);
        for e in &b.errors {
            outln!("  {e}");
        }
    }
}

fn print_policy(p: &PolicyInfo) {
    outln!(
        "{} ({}) -> {}   RPO {}, RTO {}",
        p.id,
        p.source,
        p.targets.join(", "),
        format_duration(Duration::from_secs(p.rpo_seconds)),
        format_duration(Duration::from_secs(p.rto_seconds))
    );
    if let Some(e) = &p.error {
        outln!("  ERROR reading {}: {e}", p.targets[0]);
    }
    match (&p.newest, &p.oldest) {
        (Some(n), Some(o)) => {
            outln!(
                "  snapshots: {} in {}; newest {} ({}, {} read, {} added); oldest {} ({})",
                p.snapshots,
                p.location.as_deref().unwrap_or("?"),
                n.id,
                ago(n.age_seconds),
                format_bytes(n.bytes_read),
                format_bytes(n.bytes_stored),
                o.id,
                ago(o.age_seconds)
            );
            outln!(
                "  stored: {} by this policy; {} in the repository's packs",
                format_bytes(p.bytes_stored),
                p.repository_bytes.map_or("?".to_owned(), format_bytes)
            );
        }
        _ if p.error.is_none() => outln!("  snapshots: none yet"),
        _ => {}
    }
    if let Some(pg) = &p.postgres {
        let w = &pg.window;
        match (w.earliest, w.latest) {
            (Some(a), Some(b)) => outln!(
                "  recoverable: {} .. {} (latest from base backup {})",
                time(&a),
                time(&b),
                w.latest_from.as_deref().unwrap_or("?")
            ),
            _ => outln!(
                "  recoverable: nothing ({} base backups, none with its WAL archived)",
                w.base_backups
            ),
        }
        match (&w.wal_first, &w.wal_last) {
            (Some(a), Some(b)) => outln!(
                "  WAL: {} segments, {a} .. {b}, newest archived {}",
                w.wal_segments,
                pg.archive_lag_seconds.map_or("?".to_owned(), ago)
            ),
            _ => outln!("  WAL: none archived (is archive_command `dr wal-push`?)"),
        }
        if let Some(st) = &pg.stream {
            outln!("  {}", stream_line(st));
        }
        if let Some(g) = &w.wal_gap {
            outln!("  WAL GAP: {g} is missing; recovery from the newest backup stops before it");
        }
    }
    for r in &p.replicas {
        match &r.error {
            Some(e) => outln!("  replica {}: ERROR {e}", r.target),
            None => outln!(
                "  replica {}: {} snapshots, {} missing, newest {}{}{}",
                r.target,
                r.snapshots,
                r.missing,
                r.newest.as_deref().unwrap_or("none"),
                r.lag_seconds
                    .map(|s| format!(
                        ", {} behind",
                        format_duration(Duration::from_secs(s.max(0).unsigned_abs()))
                    ))
                    .unwrap_or_default(),
                r.wal_last
                    .as_deref()
                    .map(|w| format!(", WAL to {w}"))
                    .unwrap_or_default()
            ),
        }
    }
    for d in &p.drills {
        match (&d.error, d.verdict) {
            (Some(e), _) => outln!("  drill {}: ERROR {e}", d.drill),
            (None, None) => outln!("  drill {}: never run", d.drill),
            (None, Some(v)) => outln!(
                "  drill {}: {} {}{}",
                d.drill,
                serde_json::to_value(v)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_uppercase))
                    .unwrap_or_default(),
                d.age_seconds.map(ago).unwrap_or_default(),
                match (d.rto_seconds, d.rpo_seconds) {
                    (Some(t), Some(o)) => format!(" (RTO {t:.0}s, RPO {o:.0}s)"),
                    _ => String::new(),
                }
            ),
        }
    }
}

/// `WAL stream: streaming from …, stored to LSN …, lag …; slot …`.
fn stream_line(st: &crate::ops::wal_stream::StreamStatus) -> String {
    let mut line = format!(
        "WAL stream: {} from {} (slot {})",
        st.state,
        st.server.as_deref().unwrap_or("?"),
        st.slot
    );
    if let Some(l) = &st.stored_lsn {
        line.push_str(&format!(
            ", stored to {l}{}",
            st.stored_at
                .map(|t| format!(" {}", ago((chrono::Utc::now() - t).num_seconds())))
                .unwrap_or_default()
        ));
    }
    if let (Some(b), Some(s)) = (st.lag_bytes, st.lag_seconds) {
        line.push_str(&format!(", lag {} / {s:.1}s", format_bytes(b)));
    }
    match &st.slot_state {
        Some(slot) => line.push_str(&format!(
            "; slot {}, holds {} of WAL on the server ({}){}",
            if slot.active { "active" } else { "INACTIVE" },
            slot.retained_bytes.map_or("?".to_owned(), format_bytes),
            slot.wal_status.as_deref().unwrap_or("?"),
            if st.over_max_lag {
                format!(
                    ", OVER wal.stream_max_lag {}",
                    format_bytes(st.max_lag_bytes)
                )
            } else {
                String::new()
            }
        )),
        None => line.push_str("; slot not found on the server"),
    }
    if let Some(u) = st.updated {
        let age = (chrono::Utc::now() - u).num_seconds();
        if age > 60 {
            line.push_str(&format!(" [as of {}: is the daemon running?]", ago(age)));
        }
    }
    if let Some(e) = &st.last_error {
        line.push_str(&format!("; last error: {e}"));
    }
    line
}
