//! `policies/*.toml`: one policy (source, targets, schedule, WAL, retention and tiers),
//! checked against the main config.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::{Errors, resolve};
use crate::config::check_secret_file;
use crate::config::raw;
use crate::config::schedule::Schedule;
use crate::config::types::{
    Config, PgMode, Policy, PolicyId, PostgresSpec, RedisSpec, Retention, SecretRef, SourceSpec,
    Tier, WalSettings, WalStream,
};

/// Validates one policy file against the main config.
pub(crate) fn validate_policy(
    id: PolicyId,
    file: &Path,
    raw: raw::PolicyConfig,
    main: &Config,
    errs: &mut Errors<'_>,
) -> Policy {
    let source = match raw.source {
        raw::SourceConfig::Files(f) => {
            let path = PathBuf::from(&f.path);
            if !path.is_absolute() {
                errs.push("source.path", "must be an absolute path");
            }
            let exclude = f
                .exclude
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let p = PathBuf::from(e);
                    if p.is_absolute()
                        || p.components()
                            .any(|c| matches!(c, std::path::Component::ParentDir))
                    {
                        errs.push(
                            format!("source.exclude[{i}]"),
                            "must be relative to source.path, without `..`",
                        );
                        None
                    } else {
                        Some(p)
                    }
                })
                .collect();
            SourceSpec::Files { path, exclude }
        }
        raw::SourceConfig::Postgres(pg) => SourceSpec::Postgres(validate_postgres(main, pg, errs)),
        raw::SourceConfig::Redis(r) => SourceSpec::Redis(validate_redis(main, r, errs)),
        raw::SourceConfig::Qdrant(q) => SourceSpec::Qdrant(validate_qdrant(main, q, errs)),
    };
    if raw.targets.is_empty() {
        errs.push(
            "targets",
            "list at least one storage target (the first is the primary)",
        );
    }
    for (i, t) in raw.targets.iter().enumerate() {
        if !main.storage.contains_key(t) {
            let known: Vec<&str> = main.storage.keys().map(String::as_str).collect();
            errs.push(
                format!("targets[{i}]"),
                format!(
                    "no storage target `{t}` in dr.toml (known: {})",
                    known.join(", ")
                ),
            );
        }
        if raw.targets[..i].contains(t) {
            errs.push(format!("targets[{i}]"), format!("`{t}` is listed twice"));
        }
    }
    let tz = match raw.timezone.as_deref() {
        None => chrono_tz::UTC,
        Some(s) => chrono_tz::Tz::from_str(s).unwrap_or_else(|_| {
            errs.push(
                "timezone",
                format!("`{s}` is not an IANA time zone (e.g. \"UTC\", \"Europe/Berlin\")"),
            );
            chrono_tz::UTC
        }),
    };
    let expr = raw.schedule.as_deref().unwrap_or("0 2 * * *");
    let schedule = Schedule::parse(expr, tz).unwrap_or_else(|e| {
        errs.push("schedule", e);
        Schedule::parse("0 2 * * *", tz).expect("the default schedule parses")
    });
    // PostgreSQL relation pages compress about twice as fast at level 1 as at 3, and to
    // within a few percent of its size (pgbench: 4.7 % smaller; md5 text: 2.5 % larger, in
    // 1 MiB windows); a full backup is bound by that compression on a few cores.
    let default_level = if matches!(source, SourceSpec::Postgres(_)) {
        1
    } else {
        3
    };
    let compression = match raw.compression {
        None => default_level,
        Some(n @ 1..=19) => n,
        Some(n) => {
            errs.push(
                "compression",
                format!("zstd level {n} is out of range 1-19"),
            );
            default_level
        }
    };
    let retention = validate_retention(raw.retention, main, errs);
    if raw.wal.is_some() && !matches!(source, SourceSpec::Postgres(_)) {
        errs.push("wal", "only PostgreSQL policies archive WAL");
    }
    let wal = validate_wal(raw.wal, &id, errs);
    Policy {
        id,
        file: file.to_path_buf(),
        source,
        targets: raw.targets,
        schedule,
        rpo: errs.duration("rpo", raw.rpo.as_ref(), Duration::from_secs(86_400)),
        rto: errs.duration("rto", raw.rto.as_ref(), Duration::from_secs(3600)),
        compression,
        retention,
        wal,
    }
}

fn validate_wal(raw: Option<raw::WalConfig>, id: &PolicyId, errs: &mut Errors<'_>) -> WalSettings {
    let mut raw = raw.unwrap_or(raw::WalConfig {
        push_parallel: None,
        push_ahead: None,
        fetch_ahead: None,
        compression: None,
        stream: None,
        slot: None,
        stream_flush: None,
        stream_max_lag: None,
    });
    let stream = validate_stream(&mut raw, id, errs);
    let mut within = |key: &str,
                      v: Option<usize>,
                      range: std::ops::RangeInclusive<usize>,
                      default: usize| match v {
        None => default,
        Some(n) if range.contains(&n) => n,
        Some(n) => {
            errs.push(
                format!("wal.{key}"),
                format!("{n} is out of range {}-{}", range.start(), range.end()),
            );
            default
        }
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let push_parallel = within("push_parallel", raw.push_parallel, 1..=64, cores);
    WalSettings {
        push_parallel,
        push_ahead: within("push_ahead", raw.push_ahead, 0..=1024, 8 * push_parallel),
        fetch_ahead: within("fetch_ahead", raw.fetch_ahead, 1..=1024, 32),
        compression: match raw.compression {
            None => 1,
            Some(n @ 1..=19) => n,
            Some(n) => {
                errs.push(
                    "wal.compression",
                    format!("zstd level {n} is out of range 1-19"),
                );
                1
            }
        },
        stream,
    }
}

/// `wal.stream` and the settings that only mean something with it.
fn validate_stream(
    raw: &mut raw::WalConfig,
    id: &PolicyId,
    errs: &mut Errors<'_>,
) -> Option<WalStream> {
    let (slot, flush, max_lag) = (
        raw.slot.take(),
        raw.stream_flush.take(),
        raw.stream_max_lag.take(),
    );
    if raw.stream != Some(true) {
        for (key, set) in [
            ("slot", slot.is_some()),
            ("stream_flush", flush.is_some()),
            ("stream_max_lag", max_lag.is_some()),
        ] {
            if set {
                errs.push(
                    format!("wal.{key}"),
                    "only means something with wal.stream = true",
                );
            }
        }
        return None;
    }
    let slot = slot.unwrap_or_else(|| default_slot(id.as_str()));
    if slot.is_empty()
        || slot.len() > 63
        || !slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        errs.push(
            "wal.slot",
            format!("`{slot}` is not a replication slot name (1-63 of a-z, 0-9 and _)"),
        );
    }
    let flush = errs.duration("wal.stream_flush", flush.as_ref(), Duration::from_secs(5));
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&flush) {
        errs.push("wal.stream_flush", "must be between 1s and 1h");
    }
    let max_lag = match max_lag.as_deref().map(crate::config::units::parse_size) {
        None => 1 << 30,
        Some(Ok(n)) if n > 0 => n,
        Some(Ok(_)) => {
            errs.push("wal.stream_max_lag", "must be more than 0");
            1 << 30
        }
        Some(Err(e)) => {
            errs.push("wal.stream_max_lag", e);
            1 << 30
        }
    };
    Some(WalStream {
        slot,
        flush,
        max_lag,
    })
}

/// `dr_` and the policy id (a-z, 0-9, `-`, `_`: validated) with `-` as `_`, at most 63.
pub(crate) fn default_slot(policy: &str) -> String {
    let mut s = format!("dr_{}", policy.replace('-', "_"));
    s.truncate(63);
    s
}

fn validate_postgres(
    main: &Config,
    pg: raw::PostgresSourceConfig,
    errs: &mut Errors<'_>,
) -> PostgresSpec {
    let base = main.path.parent().unwrap_or(Path::new("."));
    let neither = pg.conninfo_env.is_none() && pg.conninfo_file.is_none();
    let conninfo = secret_ref(base, "conninfo", pg.conninfo_env, pg.conninfo_file, errs)
        .unwrap_or_else(|| {
            if neither {
                errs.push("source", "set conninfo_env or conninfo_file (connection strings with passwords never go inline)");
            }
            SecretRef::Env(String::new())
        });
    let mode = match pg.mode.as_deref() {
        None | Some("local") => PgMode::Local,
        Some("stream") => PgMode::Stream,
        Some(m) => {
            errs.push("source.mode", format!("`{m}` is not a mode; use \"local\" (dr reads the data directory) or \"stream\" (pg_basebackup)"));
            PgMode::Local
        }
    };
    let data_dir = pg.data_dir.map(PathBuf::from);
    if mode == PgMode::Local {
        match &data_dir {
            None => errs.push(
                "source.data_dir",
                "required in local mode (or use mode = \"stream\")",
            ),
            Some(d) if !d.is_absolute() => errs.push("source.data_dir", "must be an absolute path"),
            Some(_) => {}
        }
    }
    let fail_on_bad_page = match pg.on_bad_page.as_deref() {
        None | Some("warn") => false,
        Some("fail") => true,
        Some(v) => {
            errs.push(
                "source.on_bad_page",
                format!("`{v}`: use \"warn\" (commit the backup and name the pages) or \"fail\" (commit nothing)"),
            );
            false
        }
    };
    let standby = secret_ref(
        base,
        "standby_conninfo",
        pg.standby_conninfo_env,
        pg.standby_conninfo_file,
        errs,
    );
    if standby.is_some() && mode != PgMode::Local {
        errs.push(
            "source.standby_conninfo_file",
            "a backup from a standby reads its data directory: use mode = \"local\" on the standby's host",
        );
    }
    PostgresSpec {
        conninfo,
        mode,
        data_dir,
        bin_dir: pg.bin_dir.map(|b| resolve(base, &b)),
        fail_on_bad_page,
        standby,
    }
}

fn validate_redis(main: &Config, r: raw::RedisSourceConfig, errs: &mut Errors<'_>) -> RedisSpec {
    let base = main.path.parent().unwrap_or(Path::new("."));
    let (mut host, mut port) = (String::from("127.0.0.1"), 6379u16);
    let tls = r.url.starts_with("rediss://");
    match r
        .url
        .strip_prefix("redis://")
        .or_else(|| r.url.strip_prefix("rediss://"))
    {
        None => errs.push(
            "source.url",
            format!("`{}` is not a redis:// or rediss:// URL", r.url),
        ),
        Some(rest) => {
            let hostport = rest.split('/').next().unwrap_or_default();
            if hostport.contains('@') {
                errs.push(
                    "source.url",
                    "no credentials in the URL: set username and password_env or password_file",
                );
            } else {
                let (h, p) = hostport
                    .rsplit_once(':')
                    .map_or((hostport, None), |(h, p)| (h, Some(p)));
                host = h.to_owned();
                match p.map(str::parse::<u16>) {
                    None => {}
                    Some(Ok(p)) => port = p,
                    Some(Err(_)) => errs.push("source.url", format!("bad port in `{}`", r.url)),
                }
            }
        }
    }
    let password = secret_ref(base, "password", r.password_env, r.password_file, errs);
    if r.tls_ca_file.is_some() && !tls {
        errs.push("source.tls_ca_file", "applies to rediss:// URLs only");
    }
    RedisSpec {
        host,
        port,
        username: r.username,
        password,
        rdb_path: r.rdb_path.map(|p| resolve(base, &p)),
        tls: tls.then(|| r.tls_ca_file.map(|f| resolve(base, &f))),
    }
}

/// `source.<name>_env` / `source.<name>_file`: at most one, the file not readable by others.
fn secret_ref(
    base: &Path,
    name: &str,
    env: Option<String>,
    file: Option<String>,
    errs: &mut Errors<'_>,
) -> Option<SecretRef> {
    match (env, file) {
        (None, None) => None,
        (Some(v), None) => Some(SecretRef::Env(v)),
        (None, Some(f)) => {
            let f = resolve(base, &f);
            if let Err(e) = check_secret_file(&f, true) {
                errs.push(format!("source.{name}_file"), e);
            }
            Some(SecretRef::File(f))
        }
        _ => {
            errs.push("source", format!("set {name}_env or {name}_file, not both"));
            None
        }
    }
}

fn validate_qdrant(
    main: &Config,
    q: raw::QdrantSourceConfig,
    errs: &mut Errors<'_>,
) -> crate::config::QdrantSpec {
    let base = main.path.parent().unwrap_or(Path::new("."));
    let url = qdrant_url("source.url", &q.url, errs);
    let peers = q
        .peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| qdrant_url(&format!("source.peers[{i}]"), p, errs))
        .collect();
    let api_key = secret_ref(base, "api_key", q.api_key_env, q.api_key_file, errs);
    let mut collections = q.collections.unwrap_or_else(|| vec!["*".to_owned()]);
    if collections.is_empty() {
        errs.push(
            "source.collections",
            "list collection names, or [\"*\"] for all",
        );
    }
    if collections.iter().any(|c| c == "*") {
        collections.clear();
    }
    crate::config::QdrantSpec {
        url,
        api_key,
        collections,
        snapshot_timeout: errs.duration(
            "source.snapshot_timeout",
            q.snapshot_timeout.as_ref(),
            Duration::from_secs(1800),
        ),
        snapshot_poll_above: q.snapshot_poll_above.unwrap_or(1_000_000),
        peers,
    }
}

/// An http(s) URL without credentials in it, trailing slashes trimmed.
fn qdrant_url(key: &str, raw: &str, errs: &mut Errors<'_>) -> String {
    let url = raw.trim_end_matches('/').to_owned();
    match url.split_once("://") {
        Some(("http" | "https", rest))
            if !rest.split('/').next().unwrap_or_default().contains('@') => {}
        Some(("http" | "https", _)) => errs.push(
            key,
            "no credentials in the URL: set api_key_env or api_key_file",
        ),
        _ => errs.push(key, format!("`{raw}` is not an http:// or https:// URL")),
    }
    url
}

fn validate_retention(
    raw: Option<raw::RetentionConfig>,
    main: &Config,
    errs: &mut Errors<'_>,
) -> Retention {
    let Some(r) = raw else {
        return Retention {
            keep_last: 1,
            hourly: 0,
            daily: 30,
            weekly: 12,
            monthly: 12,
            yearly: 0,
            wal_window: None,
            gc_grace: Duration::from_secs(86_400),
            tiers: Vec::new(),
        };
    };
    let mut tiers: Vec<Tier> = Vec::new();
    for (i, t) in r.tier.iter().enumerate() {
        let key = format!("retention.tier[{i}]");
        let after = errs.duration(&format!("{key}.after"), Some(&t.after), Duration::ZERO);
        if !t
            .storage_class
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_')
            || t.storage_class.is_empty()
        {
            errs.push(
                format!("{key}.storage_class"),
                format!(
                    "`{}` is not an S3 storage class (e.g. STANDARD_IA, GLACIER_IR)",
                    t.storage_class
                ),
            );
        }
        let only = t.only.clone().unwrap_or_default();
        for (j, o) in only.iter().enumerate() {
            if !main.storage.contains_key(o) {
                errs.push(
                    format!("{key}.only[{j}]"),
                    format!("no storage target `{o}`"),
                );
            }
        }
        if let Some(prev) = tiers.last()
            && prev.after >= after
        {
            errs.push(
                format!("{key}.after"),
                "tiers must be listed by increasing `after`",
            );
        }
        tiers.push(Tier {
            after,
            storage_class: t.storage_class.clone(),
            only,
        });
    }
    let keep_last = r.keep_last.unwrap_or(1);
    let total = keep_last
        + r.hourly.unwrap_or(0)
        + r.daily.unwrap_or(0)
        + r.weekly.unwrap_or(0)
        + r.monthly.unwrap_or(0)
        + r.yearly.unwrap_or(0);
    if total == 0 {
        errs.push("retention", "keeps nothing: set keep_last or one of hourly/daily/weekly/monthly/yearly to at least 1");
    }
    Retention {
        keep_last,
        hourly: r.hourly.unwrap_or(0),
        daily: r.daily.unwrap_or(0),
        weekly: r.weekly.unwrap_or(0),
        monthly: r.monthly.unwrap_or(0),
        yearly: r.yearly.unwrap_or(0),
        wal_window: r
            .wal_window
            .as_ref()
            .map(|w| errs.duration("retention.wal_window", Some(w), Duration::ZERO)),
        gc_grace: errs.duration(
            "retention.gc_grace",
            r.gc_grace.as_ref(),
            Duration::from_secs(86_400),
        ),
        tiers,
    }
}
