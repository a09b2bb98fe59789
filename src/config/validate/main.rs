//! `dr.toml`: keys, storage targets, pipeline, daemon and API settings.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::{Errors, resolve};
use crate::config::check_secret_file;
use crate::config::raw;
use crate::config::types::{
    ApiSettings, Config, CredentialSource, DaemonSettings, KeySettings, PipelineSettings, S3Target,
    ServerBinaries, StorageTarget,
};
use crate::config::units::parse_size;

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
    let sandbox = validate_sandbox(base, raw.sandbox.unwrap_or_default(), errs);

    Config {
        path: path.to_path_buf(),
        policies_dir: resolve(base, raw.policies_dir.as_deref().unwrap_or("policies")),
        drills_dir: resolve(base, raw.drills_dir.as_deref().unwrap_or("restore-drills")),
        groups_dir: resolve(base, raw.groups_dir.as_deref().unwrap_or("groups")),
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
        sandbox,
        policies: BTreeMap::new(),
        drills: BTreeMap::new(),
        groups: BTreeMap::new(),
    }
}

fn validate_sandbox(base: &Path, s: raw::ServersConfig, errs: &mut Errors<'_>) -> ServerBinaries {
    let mut postgres = BTreeMap::new();
    for (major, dir) in s.postgres.unwrap_or_default() {
        match major.parse::<i32>() {
            Ok(m @ 10..=99) => {
                postgres.insert(m, resolve(base, &dir));
            }
            _ => errs.push(
                format!("sandbox.postgres.{major}"),
                "not a PostgreSQL major version (e.g. 17 = \"/usr/lib/postgresql/17/bin\")",
            ),
        }
    }
    ServerBinaries {
        postgres,
        redis: s
            .redis
            .unwrap_or_default()
            .iter()
            .map(|p| resolve(base, p))
            .collect(),
    }
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
