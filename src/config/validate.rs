//! Raw config → validated types. Pure apart from `stat`-ing the secret files it must refuse when
//! they are group/world readable. Every problem is collected with its file and key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::raw;
use super::schedule::Schedule;
use super::types::{
    ApiSettings, CheckQuery, Config, CredentialSource, DaemonSettings, Drill, DrillCheck,
    DrillPoint, Expectation, KeySettings, PgMode, PipelineSettings, Policy, PolicyId, PostgresSpec,
    RedisSpec, Retention, S3Target, SecretRef, SourceSpec, StorageTarget, Tier, WalSettings,
};
use super::units::{parse_duration, parse_size};
use super::{ConfigError, check_secret_file};

/// Collects errors for one file while walking it.
pub(crate) struct Errors<'a> {
    file: &'a Path,
    pub(crate) list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub(crate) fn new(file: &'a Path) -> Self {
        Self {
            file,
            list: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, v: Option<&String>, default: Duration) -> Duration {
        match v.map(|s| parse_duration(s)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(key, e);
                default
            }
        }
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Validates `dr.toml` (without its policies, which `validate_policy` handles).
pub(crate) fn validate_main(path: &Path, raw: raw::DrConfig, errs: &mut Errors<'_>) -> Config {
    let base = path.parent().unwrap_or(Path::new("."));
    let recipients = raw
        .keys
        .recipients
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match age::x25519::Recipient::from_str(r.trim()) {
            Ok(r) => Some(r),
            Err(e) => {
                errs.push(
                    format!("keys.recipients[{i}]"),
                    format!("not an age recipient (age1…): {e}"),
                );
                None
            }
        })
        .collect::<Vec<_>>();
    if raw.keys.recipients.is_empty() {
        errs.push(
            "keys.recipients",
            "needs at least one age recipient (generate one with `dr keygen`)",
        );
    }
    let chunk_id_key_file = resolve(base, &raw.keys.chunk_id_key_file);
    if let Err(e) = check_secret_file(&chunk_id_key_file, true) {
        errs.push("keys.chunk_id_key_file", e);
    }
    let identity_file = raw.keys.identity_file.as_deref().map(|p| resolve(base, p));
    if let Some(id) = &identity_file {
        // A writer-only host has no identity: that is fine until it restores. A present but
        // loosely protected identity is refused outright.
        if let Err(e) = check_secret_file(id, false) {
            errs.push("keys.identity_file", e);
        }
    }

    let signing_key_file = raw
        .keys
        .signing_key_file
        .as_deref()
        .map(|p| resolve(base, p));
    if let Some(f) = &signing_key_file
        && let Err(e) = check_secret_file(f, false)
    {
        errs.push("keys.signing_key_file", e);
    }
    let trusted_signers = raw.keys.trusted_signers;
    for (i, k) in trusted_signers.iter().enumerate() {
        if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
            errs.push(
                format!("keys.trusted_signers[{i}]"),
                "must be a 64-hex-digit Ed25519 public key (printed by `dr keygen --signing`)",
            );
        }
    }

    let mut storage = BTreeMap::new();
    for (name, s) in raw.storage {
        let key = format!("storage.{name}");
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errs.push(&key, "target names use a-z, 0-9, - and _");
        }
        let target = match s {
            raw::StorageConfig::Local(l) => StorageTarget::Local {
                path: resolve(base, &l.path),
            },
            raw::StorageConfig::S3(s) => StorageTarget::S3(validate_s3(base, &key, s, errs)),
        };
        storage.insert(name, target);
    }
    if storage.is_empty() {
        errs.push("storage", "define at least one storage target, e.g. [storage.local] type = \"local\", path = \"repo\"");
    }

    let p = raw.pipeline.unwrap_or(raw::PipelineConfig {
        pack_size: None,
        upload_concurrency: None,
        restore_concurrency: None,
    });
    let pack_size = match p.pack_size.as_deref().map(parse_size) {
        None => 16 << 20,
        Some(Ok(n)) if (1 << 20..=512 << 20).contains(&n) => usize::try_from(n).unwrap_or(16 << 20),
        Some(Ok(_)) => {
            errs.push("pipeline.pack_size", "must be between 1MiB and 512MiB");
            16 << 20
        }
        Some(Err(e)) => {
            errs.push("pipeline.pack_size", e);
            16 << 20
        }
    };
    let mut count = |key: &str, v: Option<usize>, default: usize| match v {
        None => default,
        Some(n @ 1..=64) => n,
        Some(_) => {
            errs.push(key, "must be between 1 and 64");
            default
        }
    };
    let pipeline = PipelineSettings {
        pack_size,
        upload_concurrency: count("pipeline.upload_concurrency", p.upload_concurrency, 4),
        restore_concurrency: count("pipeline.restore_concurrency", p.restore_concurrency, 4),
    };

    let daemon = validate_daemon(raw.daemon.unwrap_or_default(), errs);
    let api = validate_api(base, raw.api, errs);

    Config {
        path: path.to_path_buf(),
        policies_dir: resolve(base, raw.policies_dir.as_deref().unwrap_or("policies")),
        drills_dir: resolve(base, raw.drills_dir.as_deref().unwrap_or("restore-drills")),
        state_dir: resolve(base, raw.state_dir.as_deref().unwrap_or("state")),
        keys: KeySettings {
            recipients,
            identity_file,
            chunk_id_key_file,
            signing_key_file,
            trusted_signers,
        },
        storage,
        pipeline,
        daemon,
        api,
        policies: BTreeMap::new(),
        drills: BTreeMap::new(),
    }
}

/// Validates one drill file against the main config and its policies.
pub(crate) fn validate_drill(
    name: &str,
    file: &Path,
    raw: raw::DrillConfig,
    main: &Config,
    errs: &mut Errors<'_>,
) -> Option<Drill> {
    let Ok(policy) = main.policy(&raw.policy) else {
        let known: Vec<&str> = main.policies.keys().map(PolicyId::as_str).collect();
        errs.push(
            "policy",
            format!("no policy `{}` (known: {})", raw.policy, known.join(", ")),
        );
        return None;
    };
    let tz = match raw.timezone.as_deref() {
        None => policy.schedule.timezone(),
        Some(s) => chrono_tz::Tz::from_str(s).unwrap_or_else(|_| {
            errs.push("timezone", format!("`{s}` is not an IANA time zone"));
            chrono_tz::UTC
        }),
    };
    let schedule = raw.schedule.as_deref().and_then(|e| {
        Schedule::parse(e, tz)
            .map_err(|m| errs.push("schedule", m))
            .ok()
    });
    let from_region = match raw.from_region {
        Some(r) if policy.targets.contains(&r) => r,
        Some(r) => {
            errs.push(
                "from_region",
                format!(
                    "policy {} does not write to `{r}` (its targets: {})",
                    policy.id,
                    policy.targets.join(", ")
                ),
            );
            policy.targets[0].clone()
        }
        // A replica by default: the drill then proves replication too.
        None => policy.targets.get(1).unwrap_or(&policy.targets[0]).clone(),
    };
    let is_pg = matches!(policy.source, SourceSpec::Postgres(_));
    let point = match raw.point_in_time.as_deref().map(str::trim) {
        None | Some("latest") => DrillPoint::Latest,
        Some("random") if is_pg => DrillPoint::Random,
        Some(p) if p.ends_with(" ago") && is_pg => {
            match parse_duration(p.trim_end_matches(" ago").trim()) {
                Ok(d) => DrillPoint::Ago(d),
                Err(e) => {
                    errs.push("point_in_time", e);
                    DrillPoint::Latest
                }
            }
        }
        Some(p) => {
            errs.push(
                "point_in_time",
                if is_pg {
                    format!(
                        "`{p}`: use \"latest\", \"random\" or \"<duration> ago\" (e.g. \"2h ago\")"
                    )
                } else {
                    format!(
                        "`{p}`: only \"latest\" applies to a policy without WAL (policy {})",
                        policy.id
                    )
                },
            );
            DrillPoint::Latest
        }
    };
    let sb = raw.sandbox.unwrap_or_default();
    let is_qdrant = matches!(policy.source, SourceSpec::Qdrant(_));
    if is_qdrant && sb.qdrant_url.is_none() {
        errs.push(
            "sandbox.qdrant_url",
            "a Qdrant drill restores into a scratch collection on a server you name here (it never picks the production one by itself)",
        );
    }
    let base = main.path.parent().unwrap_or(Path::new("."));
    let mut checks = Vec::new();
    for (i, c) in raw.check.into_iter().enumerate() {
        let key = format!("check[{i}]");
        let query = match (c.sql, c.redis) {
            (Some(sql), None) if is_pg => CheckQuery::Sql {
                database: c.database.unwrap_or_else(|| "postgres".to_owned()),
                sql,
            },
            (None, Some(cmd)) if matches!(policy.source, SourceSpec::Redis(_)) => {
                let parts: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
                if parts.is_empty() {
                    errs.push(format!("{key}.redis"), "empty command");
                    continue;
                }
                CheckQuery::Redis(parts)
            }
            _ => {
                errs.push(
                    &key,
                    if is_pg {
                        "a PostgreSQL drill check needs `sql` (and no `redis`)"
                    } else {
                        "checks take `sql` for postgres policies and `redis` for redis policies"
                    },
                );
                continue;
            }
        };
        let expect = c.expect.as_deref().and_then(|e| {
            Expectation::parse(e)
                .map_err(|m| errs.push(format!("{key}.expect"), m))
                .ok()
        });
        let expect_recent = c
            .expect_recent
            .as_ref()
            .map(|r| errs.duration(&format!("{key}.expect_recent"), Some(r), Duration::ZERO));
        if expect.is_none() && expect_recent.is_none() {
            errs.push(&key, "say what to expect: `expect` and/or `expect_recent`");
        }
        let name = c.name.unwrap_or_else(|| match &query {
            CheckQuery::Sql { sql, .. } => sql.clone(),
            CheckQuery::Redis(p) => p.join(" "),
        });
        checks.push(DrillCheck {
            name,
            query,
            expect,
            expect_recent,
        });
    }
    Some(Drill {
        name: name.to_owned(),
        file: file.to_path_buf(),
        policy: policy.id.clone(),
        schedule,
        from_region,
        point,
        rto: errs.duration("rto", raw.rto.as_ref(), policy.rto),
        rpo: errs.duration("rpo", raw.rpo.as_ref(), policy.rpo),
        sandbox_dir: sb.dir.as_deref().map(|d| resolve(base, d)),
        run_as: sb.run_as.unwrap_or_else(|| "postgres".to_owned()),
        db_user: sb.db_user.unwrap_or_else(|| "postgres".to_owned()),
        start_timeout: errs.duration(
            "sandbox.start_timeout",
            sb.start_timeout.as_ref(),
            Duration::from_secs(3600),
        ),
        qdrant_url: sb.qdrant_url.map(|u| u.trim_end_matches('/').to_owned()),
        checks,
    })
}

const SOURCE_TYPES: [&str; 4] = ["files", "postgres", "redis", "qdrant"];

fn validate_daemon(d: raw::DaemonConfig, errs: &mut Errors<'_>) -> DaemonSettings {
    let max_concurrent_jobs = match d.max_concurrent_jobs {
        None => 2,
        Some(n @ 1..=64) => n,
        Some(_) => {
            errs.push("daemon.max_concurrent_jobs", "must be between 1 and 64");
            2
        }
    };
    let mut max_concurrent = BTreeMap::new();
    for (kind, n) in d.max_concurrent.unwrap_or_default() {
        let key = format!("daemon.max_concurrent.{kind}");
        if !SOURCE_TYPES.contains(&kind.as_str()) {
            errs.push(
                &key,
                format!(
                    "unknown source type; use one of {}",
                    SOURCE_TYPES.join(", ")
                ),
            );
        } else if !(1..=64).contains(&n) {
            errs.push(&key, "must be between 1 and 64");
        } else {
            max_concurrent.insert(kind, n);
        }
    }
    let leader_election = match d.leader_election.as_deref() {
        None | Some("none") => crate::config::LeaderElection::None,
        Some("bucket") => crate::config::LeaderElection::Bucket,
        Some("kubernetes") => crate::config::LeaderElection::Kubernetes {
            name: d
                .lease_name
                .clone()
                .unwrap_or_else(|| "dr-leader".to_owned()),
            namespace: d.lease_namespace.clone(),
            api: d.kube_api.clone(),
        },
        Some(other) => {
            errs.push(
                "daemon.leader_election",
                format!("`{other}`: use \"none\", \"bucket\" or \"kubernetes\""),
            );
            crate::config::LeaderElection::None
        }
    };
    let min = Duration::from_secs(1);
    let mut every = |key: &str, v: Option<&String>, default: Duration| {
        let d = errs.duration(key, v, default);
        if d < min {
            errs.push(key, "must be at least 1s");
        }
        d
    };
    DaemonSettings {
        max_concurrent_jobs,
        max_concurrent,
        job_timeout: every(
            "daemon.job_timeout",
            d.job_timeout.as_ref(),
            Duration::from_secs(6 * 3600),
        ),
        replicate_every: every(
            "daemon.replicate_every",
            d.replicate_every.as_ref(),
            Duration::from_secs(300),
        ),
        retention_every: every(
            "daemon.retention_every",
            d.retention_every.as_ref(),
            Duration::from_secs(3600),
        ),
        wal_check_every: every(
            "daemon.wal_check_every",
            d.wal_check_every.as_ref(),
            Duration::from_secs(60),
        ),
        lease_ttl: every(
            "daemon.lease_ttl",
            d.lease_ttl.as_ref(),
            Duration::from_secs(30),
        ),
        jitter: errs.duration("daemon.jitter", d.jitter.as_ref(), Duration::ZERO),
        leader_election,
    }
}

fn validate_api(base: &Path, a: Option<raw::ApiConfig>, errs: &mut Errors<'_>) -> ApiSettings {
    let default_listen: std::net::SocketAddr = "127.0.0.1:7878".parse().expect("valid address");
    let Some(a) = a else {
        return ApiSettings {
            listen: default_listen,
            tokens_file: None,
            rate_limit_per_minute: 100,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            tls: None,
        };
    };
    let listen = match a.listen.as_deref().map(str::parse) {
        None => default_listen,
        Some(Ok(l)) => l,
        Some(Err(_)) => {
            errs.push(
                "api.listen",
                "must be host:port with an IP address, e.g. 0.0.0.0:7878",
            );
            default_listen
        }
    };
    let tokens_file = a.tokens_file.as_deref().map(|p| resolve(base, p));
    if let Some(t) = &tokens_file
        && let Err(e) = check_secret_file(t, true)
    {
        errs.push("api.tokens_file", e);
    }
    let tls = match (a.tls_cert_file, a.tls_key_file) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let key = resolve(base, &k);
            if let Err(e) = check_secret_file(&key, true) {
                errs.push("api.tls_key_file", e);
            }
            Some((resolve(base, &c), key))
        }
        _ => {
            errs.push("api", "tls_cert_file and tls_key_file go together");
            None
        }
    };
    let rate_limit_per_minute = match a.rate_limit_per_minute {
        None => 100,
        Some(0) => {
            errs.push("api.rate_limit_per_minute", "must be at least 1");
            100
        }
        Some(n) => n,
    };
    let max_connections = match a.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) if n < 8 => {
            errs.push(
                "api.max_connections",
                "must be at least 8 (probes and scrapes need room)",
            );
            DEFAULT_MAX_CONNECTIONS
        }
        Some(n) => n,
    };
    let header_read_timeout = errs.duration(
        "api.header_read_timeout",
        a.header_read_timeout.as_ref(),
        DEFAULT_HEADER_READ_TIMEOUT,
    );
    if header_read_timeout < Duration::from_secs(1) {
        errs.push("api.header_read_timeout", "must be at least 1s");
    }
    ApiSettings {
        listen,
        tokens_file,
        rate_limit_per_minute,
        max_connections,
        header_read_timeout,
        tls,
    }
}

/// `api.max_connections` when unset: far below the usual descriptor limits, far above what
/// probes, scrapes and operators need at once.
const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// `api.header_read_timeout` when unset.
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn validate_s3(base: &Path, key: &str, s: raw::S3StorageConfig, errs: &mut Errors<'_>) -> S3Target {
    if s.bucket.is_empty() {
        errs.push(format!("{key}.bucket"), "must not be empty");
    }
    if let Some(ep) = &s.endpoint
        && !(ep.starts_with("http://") || ep.starts_with("https://"))
    {
        errs.push(
            format!("{key}.endpoint"),
            "must start with http:// or https://",
        );
    }
    let mut prefix = s.prefix.unwrap_or_default();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    if prefix.starts_with('/') {
        errs.push(format!("{key}.prefix"), "must not start with /");
    }
    let credentials = match (
        s.access_key_id_env,
        s.secret_access_key_env,
        s.access_key_id_file,
        s.secret_access_key_file,
    ) {
        (None, None, None, None) => CredentialSource::Chain,
        (Some(a), Some(b), None, None) => CredentialSource::Env {
            access_key_id: a,
            secret_access_key: b,
        },
        (None, None, Some(a), Some(b)) => {
            let (a, b) = (resolve(base, &a), resolve(base, &b));
            if let Err(e) = check_secret_file(&b, true) {
                errs.push(format!("{key}.secret_access_key_file"), e);
            }
            CredentialSource::Files {
                access_key_id: a,
                secret_access_key: b,
            }
        }
        _ => {
            errs.push(
                key,
                "set both access_key_id_env and secret_access_key_env, or both *_file keys, or none (standard credential chain)",
            );
            CredentialSource::Chain
        }
    };
    let max_attempts = match s.max_attempts {
        None => 5,
        Some(n @ 1..=20) => n,
        Some(_) => {
            errs.push(format!("{key}.max_attempts"), "must be between 1 and 20");
            5
        }
    };
    let lock = s.lock.and_then(|l| {
        let compliance = match l.mode.as_str() {
            "compliance" => true,
            "governance" => false,
            other => {
                errs.push(
                    format!("{key}.lock.mode"),
                    format!("`{other}`: use \"compliance\" or \"governance\""),
                );
                return None;
            }
        };
        if !(1..=36_500).contains(&l.days) {
            errs.push(format!("{key}.lock.days"), "must be between 1 and 36500");
            return None;
        }
        Some(crate::config::ObjectLock {
            compliance,
            days: l.days,
        })
    });
    S3Target {
        lock,
        bucket: s.bucket,
        region: s.region.unwrap_or_else(|| "us-east-1".to_owned()),
        path_style: s.path_style.unwrap_or(s.endpoint.is_some()),
        endpoint: s.endpoint,
        prefix,
        credentials,
        timeout: errs.duration(
            &format!("{key}.timeout"),
            s.timeout.as_ref(),
            Duration::from_secs(60),
        ),
        max_attempts,
    }
}

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
    let compression = match raw.compression {
        None => 3,
        Some(n @ 1..=19) => n,
        Some(n) => {
            errs.push(
                "compression",
                format!("zstd level {n} is out of range 1-19"),
            );
            3
        }
    };
    let retention = validate_retention(raw.retention, main, errs);
    if raw.wal.is_some() && !matches!(source, SourceSpec::Postgres(_)) {
        errs.push("wal", "only PostgreSQL policies archive WAL");
    }
    let wal = validate_wal(raw.wal, errs);
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

fn validate_wal(raw: Option<raw::WalConfig>, errs: &mut Errors<'_>) -> WalSettings {
    let raw = raw.unwrap_or(raw::WalConfig {
        push_parallel: None,
        push_ahead: None,
        fetch_ahead: None,
    });
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
    }
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
    PostgresSpec {
        conninfo,
        mode,
        data_dir,
        bin_dir: pg.bin_dir.map(|b| resolve(base, &b)),
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
