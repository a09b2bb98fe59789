//! `/metrics`: the daemon's status as Prometheus (OpenMetrics) text.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::daemon::status::DaemonStatus;
use crate::drill::report::Verdict;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Policy {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyResult {
    policy: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Region {
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Drill {
    drill: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Worker {
    worker: String,
}

type G<L> = Family<L, Gauge<f64, AtomicU64>>;
type C<L> = Family<L, Counter<u64, AtomicU64>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyRegion {
    policy: String,
    region: String,
}

/// A family registered under `name` (for a counter the encoder adds `_total`).
fn family<M>(r: &mut Registry, name: &str, help: &str) -> M
where
    M: Default + Clone + prometheus_client::registry::Metric,
{
    let m = M::default();
    r.register(name, help, m.clone());
    m
}

fn gauge<L>(r: &mut Registry, name: &str, help: &str) -> G<L>
where
    G<L>: Default + Clone + prometheus_client::registry::Metric,
{
    family(r, name, help)
}

fn counter<L>(r: &mut Registry, name: &str, help: &str) -> C<L>
where
    C<L>: Default + Clone + prometheus_client::registry::Metric,
{
    family(r, name, help)
}

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<f64> {
    t.map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// Encodes `s` (a fresh registry per scrape: the status is the source of truth).
pub fn render(s: &DaemonStatus) -> String {
    let mut r = Registry::default();
    let last_success = gauge::<Policy>(
        &mut r,
        "dr_backup_last_success_timestamp_seconds",
        "End of the last successful backup (Unix time)",
    );
    let duration = gauge::<Policy>(
        &mut r,
        "dr_backup_duration_seconds",
        "Duration of the last successful backup",
    );
    let last_failure = gauge::<Policy>(
        &mut r,
        "dr_backup_last_failure_timestamp_seconds",
        "End of the last failed backup (Unix time)",
    );
    let bad_pages = gauge::<Policy>(
        &mut r,
        "dr_backup_bad_pages",
        "Pages the last successful backup found failing their checksum (PostgreSQL with data checksums)",
    );
    let bytes = counter::<Policy>(
        &mut r,
        "dr_backup_stored_bytes",
        "Bytes stored by backups (after dedup, compression, encryption)",
    );
    let runs = counter::<PolicyResult>(
        &mut r,
        "dr_backup_runs",
        "Backups run, by result (ok, failed, skipped)",
    );
    let snapshots = gauge::<PolicyRegion>(
        &mut r,
        "dr_snapshots",
        "Snapshots kept in a storage target, as of the last retention pass",
    );
    let repo_bytes = gauge::<Region>(
        &mut r,
        "dr_repository_size_bytes",
        "Bytes of packs (the data) in a storage target, as of the last retention pass",
    );
    let wal_failures = counter::<Policy>(
        &mut r,
        "dr_wal_archive_failures",
        "Failed archive_command runs the server counts (pg_stat_archiver.failed_count)",
    );
    let next = gauge::<Policy>(
        &mut r,
        "dr_backup_next_run_timestamp_seconds",
        "Next scheduled backup (Unix time)",
    );
    let interval = gauge::<Policy>(
        &mut r,
        "dr_backup_schedule_interval_seconds",
        "Seconds between scheduled backups",
    );
    let rpo_objective = gauge::<Policy>(
        &mut r,
        "dr_policy_rpo_objective_seconds",
        "The policy's recovery point objective",
    );
    let rto_objective = gauge::<Policy>(
        &mut r,
        "dr_policy_rto_objective_seconds",
        "The policy's recovery time objective",
    );
    let wal_lag = gauge::<Policy>(
        &mut r,
        "dr_wal_archive_lag_seconds",
        "Age of the newest archived WAL segment",
    );
    let wal_lag_bytes = gauge::<Policy>(
        &mut r,
        "dr_wal_archive_lag_bytes",
        "WAL the server has written past the newest archived segment",
    );
    let stream_up = gauge::<Policy>(
        &mut r,
        "dr_wal_stream_up",
        "1 while the WAL receiver (wal.stream) streams, 0 while it reconnects",
    );
    let stream_lag_bytes = gauge::<Policy>(
        &mut r,
        "dr_wal_stream_lag_bytes",
        "WAL the server has flushed that the stream has not stored in the repository",
    );
    let stream_lag = gauge::<Policy>(
        &mut r,
        "dr_wal_stream_lag_seconds",
        "How long ago the oldest WAL not yet stored by the stream was written (0 when caught up)",
    );
    let slot_retained = gauge::<Policy>(
        &mut r,
        "dr_wal_stream_slot_retained_bytes",
        "WAL the stream's replication slot holds back on the server",
    );
    let slot_max = gauge::<Policy>(
        &mut r,
        "dr_wal_stream_max_lag_bytes",
        "wal.stream_max_lag: what the slot may hold back before DrWalStreamSlotBehind",
    );
    let repl_lag = gauge::<Region>(
        &mut r,
        "dr_replication_lag_seconds",
        "Seconds since the replica last held everything its primary had",
    );
    let repl_bytes = gauge::<Region>(
        &mut r,
        "dr_replication_lag_bytes",
        "Bytes the replica lacked at the last pass",
    );
    let rto = gauge::<Drill>(
        &mut r,
        "dr_drill_rto_seconds",
        "RTO measured by the last drill",
    );
    let rpo = gauge::<Drill>(
        &mut r,
        "dr_drill_rpo_seconds",
        "RPO measured by the last drill",
    );
    let drill_rto_objective = gauge::<Drill>(
        &mut r,
        "dr_drill_rto_objective_seconds",
        "RTO objective of the drill",
    );
    let drill_rpo_objective = gauge::<Drill>(
        &mut r,
        "dr_drill_rpo_objective_seconds",
        "RPO objective of the drill",
    );
    let verdict = gauge::<Drill>(
        &mut r,
        "dr_drill_last_verdict",
        "1 when the newest drill report passed and is trusted, 0 when it failed or is untrusted",
    );
    let trusted = gauge::<Drill>(
        &mut r,
        "dr_drill_last_report_trusted",
        "1 when the newest drill report is validly signed by a trusted key, 0 when not",
    );
    let drill_ts = gauge::<Drill>(
        &mut r,
        "dr_drill_last_run_timestamp_seconds",
        "Start of the last drill (Unix time)",
    );
    let failures = gauge::<Worker>(
        &mut r,
        "dr_worker_consecutive_failures",
        "Failed passes of a background worker since its last success",
    );
    let active = Gauge::<f64, AtomicU64>::default();
    r.register(
        "dr_active",
        "1 when this instance runs jobs (holds the lease)",
        active.clone(),
    );
    active.set(if s.active { 1.0 } else { 0.0 });

    for (id, p) in &s.policies {
        let l = Policy { policy: id.clone() };
        if let Some(t) = ts(p.last_success) {
            last_success.get_or_create(&l).set(t);
        }
        if let Some(d) = p.last_duration_seconds {
            duration.get_or_create(&l).set(d);
        }
        if let Some(n) = p.last_bad_pages {
            bad_pages.get_or_create(&l).set(n as f64);
        }
        if let Some(t) = ts(p.last_failure) {
            last_failure.get_or_create(&l).set(t);
        }
        bytes.get_or_create(&l).inc_by(p.bytes_stored_total);
        for (result, n) in [
            ("ok", p.backups_ok),
            ("failed", p.backups_failed),
            ("skipped", p.runs_skipped),
        ] {
            runs.get_or_create(&PolicyResult {
                policy: id.clone(),
                result: result.to_owned(),
            })
            .inc_by(n);
        }
        for (region, n) in &p.snapshots {
            snapshots
                .get_or_create(&PolicyRegion {
                    policy: id.clone(),
                    region: region.clone(),
                })
                .set(*n as f64);
        }
        if let Some(n) = p.wal.as_ref().and_then(|w| w.archive_failures) {
            wal_failures.get_or_create(&l).inc_by(n);
        }
        if let Some(t) = ts(p.next_run) {
            next.get_or_create(&l).set(t);
        }
        if let Some(i) = p.schedule_interval_seconds {
            interval.get_or_create(&l).set(i);
        }
        rpo_objective.get_or_create(&l).set(p.rpo_seconds as f64);
        rto_objective.get_or_create(&l).set(p.rto_seconds as f64);
        if let Some(lag) = p.wal.as_ref().and_then(|w| w.lag_seconds) {
            wal_lag.get_or_create(&l).set(lag);
        }
        if let Some(bytes) = p.wal.as_ref().and_then(|w| w.lag_bytes) {
            wal_lag_bytes.get_or_create(&l).set(bytes as f64);
        }
        if let Some(st) = p.wal.as_ref().and_then(|w| w.stream.as_ref()) {
            stream_up
                .get_or_create(&l)
                .set(if st.state == "streaming" { 1.0 } else { 0.0 });
            if let Some(b) = st.lag_bytes {
                stream_lag_bytes.get_or_create(&l).set(b as f64);
            }
            if let Some(t) = st.lag_seconds {
                stream_lag.get_or_create(&l).set(t);
            }
            if let Some(b) = st.slot_state.as_ref().and_then(|s| s.retained_bytes) {
                slot_retained.get_or_create(&l).set(b as f64);
            }
            slot_max.get_or_create(&l).set(st.max_lag_bytes as f64);
        }
    }
    for (region, rs) in &s.replicas {
        let l = Region {
            region: region.clone(),
        };
        if let Some(lag) = rs.lag_seconds {
            repl_lag.get_or_create(&l).set(lag);
        }
        repl_bytes.get_or_create(&l).set(rs.lag_bytes as f64);
    }
    for (name, d) in &s.drills {
        let l = Drill {
            drill: name.clone(),
        };
        if let Some(v) = d.rto_seconds {
            rto.get_or_create(&l).set(v);
        }
        if let Some(v) = d.rpo_seconds {
            rpo.get_or_create(&l).set(v);
        }
        drill_rto_objective
            .get_or_create(&l)
            .set(d.rto_objective_seconds);
        drill_rpo_objective
            .get_or_create(&l)
            .set(d.rpo_objective_seconds);
        if let Some(v) = d.last_verdict {
            verdict
                .get_or_create(&l)
                .set(if v == Verdict::Pass { 1.0 } else { 0.0 });
        }
        if let Some(t) = d.last_trusted {
            trusted.get_or_create(&l).set(if t { 1.0 } else { 0.0 });
        }
        if let Some(t) = ts(d.last_run) {
            drill_ts.get_or_create(&l).set(t);
        }
    }
    for (region, b) in &s.repositories {
        repo_bytes
            .get_or_create(&Region {
                region: region.clone(),
            })
            .set(*b as f64);
    }
    for (name, w) in &s.workers {
        failures
            .get_or_create(&Worker {
                worker: name.clone(),
            })
            .set(f64::from(w.consecutive_failures));
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    out
}

/// The same scrape in the classic Prometheus text format (0.0.4), for scrapers that do not
/// ask for OpenMetrics (`promtool check metrics`, older agents): a counter's `HELP` and
/// `TYPE` name its `_total` series, and there is no `# EOF` or `# UNIT`.
pub fn render_classic(s: &DaemonStatus) -> String {
    classic(&render(s))
}

fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::DrillStatus;

    fn verdict_line(v: Verdict) -> String {
        let mut s = DaemonStatus::default();
        s.drills.insert(
            "d".to_owned(),
            DrillStatus {
                last_verdict: Some(v),
                last_trusted: Some(v != Verdict::Untrusted),
                ..DrillStatus::default()
            },
        );
        render(&s)
            .lines()
            .filter(|l| l.starts_with("dr_drill_last_"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_classic_format_names_counters_by_their_series() {
        let om = "# HELP dr_backup_runs Backups run.\n# TYPE dr_backup_runs counter\ndr_backup_runs_total{policy=\"a\"} 2\n# HELP dr_active Active.\n# TYPE dr_active gauge\ndr_active 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP dr_backup_runs_total Backups run.\n# TYPE dr_backup_runs_total counter\ndr_backup_runs_total{policy=\"a\"} 2\n# HELP dr_active Active.\n# TYPE dr_active gauge\ndr_active 1\n"
        );
    }

    #[test]
    fn only_a_trusted_pass_is_a_passing_verdict() {
        let pass = verdict_line(Verdict::Pass);
        assert!(
            pass.contains("dr_drill_last_verdict{drill=\"d\"} 1"),
            "{pass}"
        );
        assert!(
            pass.contains("dr_drill_last_report_trusted{drill=\"d\"} 1"),
            "{pass}"
        );
        let untrusted = verdict_line(Verdict::Untrusted);
        assert!(
            untrusted.contains("dr_drill_last_verdict{drill=\"d\"} 0"),
            "{untrusted}"
        );
        assert!(
            untrusted.contains("dr_drill_last_report_trusted{drill=\"d\"} 0"),
            "{untrusted}"
        );
    }
}
