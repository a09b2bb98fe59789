//! Validated configuration: what the rest of `dr` sees. Built only by `config::validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::schedule::Schedule;

/// A policy id: the file stem of `policies/<id>.toml` (`[a-z0-9_-]`, 1–64 chars).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId(String);

impl PolicyId {
    /// Checks the id's characters.
    ///
    /// # Errors
    /// A message when `s` is empty, too long or has characters outside `[a-z0-9_-]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !s.starts_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "policy id `{s}` must be 1-64 characters of a-z, 0-9, - and _"
            ))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of `dr.toml`.
    pub path: PathBuf,
    /// Folder of policy files.
    pub policies_dir: PathBuf,
    /// Folder of drill definitions.
    pub drills_dir: PathBuf,
    /// Folder of application groups.
    pub groups_dir: PathBuf,
    /// Local state (index cache, probes).
    pub state_dir: PathBuf,
    /// Key locations and recipients.
    pub keys: KeySettings,
    /// Storage targets by name.
    pub storage: BTreeMap<String, StorageTarget>,
    /// Pipeline tuning.
    pub pipeline: PipelineSettings,
    /// Daemon settings.
    pub daemon: DaemonSettings,
    /// HTTP API settings.
    pub api: ApiSettings,
    /// Server binaries for restores and drills (`[sandbox]`).
    pub sandbox: ServerBinaries,
    /// Policies by id.
    pub policies: BTreeMap<PolicyId, Policy>,
    /// Restore drills by name.
    pub drills: BTreeMap<String, Drill>,
    /// Application groups by id.
    pub groups: BTreeMap<String, Group>,
}

/// `groups/<id>.toml`, validated: policies recovered together to one point in time.
#[derive(Debug, Clone)]
pub struct Group {
    /// Id (file stem).
    pub id: String,
    /// The group file.
    pub file: PathBuf,
    /// Members, as listed (each a known policy, once).
    pub members: Vec<PolicyId>,
    /// How far before the group's point a snapshot-based member's snapshot may be.
    pub max_skew: Duration,
    /// Cross-store checks of its drills.
    pub checks: Vec<CrossCheck>,
    /// When `dr daemon` backs it up as a group.
    pub schedule: Option<Schedule>,
}

/// A cross-store check: two members' numbers, at most `tolerance` apart.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossCheck {
    /// Name in the report.
    pub name: String,
    /// One side.
    pub left: CrossQuery,
    /// The other side.
    pub right: CrossQuery,
    /// How far apart they may be.
    pub tolerance: f64,
}

/// One side of a [`CrossCheck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossQuery {
    /// The member asked.
    pub policy: PolicyId,
    /// What is asked (a Qdrant side counts the points of a collection).
    pub query: CrossAsk,
}

/// What a [`CrossQuery`] asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossAsk {
    /// SQL or a Redis command, as a drill check asks.
    Check(CheckQuery),
    /// The point count of a Qdrant collection (its restored scratch copy).
    Points(String),
}

impl std::fmt::Display for CrossQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.query {
            CrossAsk::Check(CheckQuery::Sql { sql, .. }) => write!(f, "{}: {sql}", self.policy),
            CrossAsk::Check(CheckQuery::Redis(parts)) => {
                write!(f, "{}: {}", self.policy, parts.join(" "))
            }
            CrossAsk::Points(c) => write!(f, "{}: points in {c}", self.policy),
        }
    }
}

impl Config {
    /// The policy `id`, or an error listing the known ones.
    ///
    /// # Errors
    /// When no policy has that id.
    pub fn policy(&self, id: &str) -> Result<&Policy, String> {
        self.policies
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, p)| p)
            .ok_or_else(|| {
                let known: Vec<&str> = self.policies.keys().map(PolicyId::as_str).collect();
                format!(
                    "no policy `{id}` in {} (known: {})",
                    self.policies_dir.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }
}

/// `[keys]`, validated.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// age recipients, parsed.
    pub recipients: Vec<age::x25519::Recipient>,
    /// Restore identity file, if this host has one configured.
    pub identity_file: Option<PathBuf>,
    /// Chunk-id key file.
    pub chunk_id_key_file: PathBuf,
    /// Drill report signing key file.
    pub signing_key_file: Option<PathBuf>,
    /// Accepted report signers (hex Ed25519 public keys).
    pub trusted_signers: Vec<String>,
}

impl Config {
    /// The files holding secrets that a host which only writes backups does not need: the
    /// restore identity, the drill signing key, the API tokens and the TLS key. A server
    /// started on restored data (which a compromised database host could have crafted) must
    /// not be able to read them. The chunk-id key, storage credentials and source passwords
    /// are left out: every writer holds them already, so reading them gains such a host
    /// nothing.
    pub fn restore_host_secrets(&self) -> Vec<&std::path::Path> {
        let keys = &self.keys;
        keys.identity_file
            .iter()
            .chain(&keys.signing_key_file)
            .chain(&self.api.tokens_file)
            .chain(self.api.tls.iter().map(|(_, key)| key))
            .map(PathBuf::as_path)
            .collect()
    }
}

/// A storage target.
#[derive(Debug, Clone)]
pub enum StorageTarget {
    /// A local directory.
    Local {
        /// Repository root.
        path: PathBuf,
    },
    /// An S3 bucket.
    S3(S3Target),
}

/// Where credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// The AWS standard chain (env, profile, web identity, IMDS).
    Chain,
    /// Named environment variables.
    Env {
        /// Variable with the access key id.
        access_key_id: String,
        /// Variable with the secret key.
        secret_access_key: String,
    },
    /// Files (checked for permissions).
    Files {
        /// File with the access key id.
        access_key_id: PathBuf,
        /// File with the secret key.
        secret_access_key: PathBuf,
    },
}

/// Object Lock retention for writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// Compliance (true) or governance mode.
    pub compliance: bool,
    /// Days from each write.
    pub days: u32,
}

/// `type = "s3"`, validated.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// Object Lock for writes, when the bucket has it enabled.
    pub lock: Option<ObjectLock>,
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Custom endpoint.
    pub endpoint: Option<String>,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// Path-style addressing.
    pub path_style: bool,
    pub credentials: CredentialSource,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Attempts for retryable errors.
    pub max_attempts: u32,
}

/// A restore drill (run by `drill::run`).
#[derive(Debug, Clone)]
pub struct Drill {
    /// Name (file stem).
    pub name: String,
    /// Its file.
    pub file: PathBuf,
    /// Policy restored (a group drill's: its first member, whose repository keeps the
    /// reports).
    pub policy: PolicyId,
    /// The application group restored as a whole, for a group drill.
    pub group: Option<String>,
    /// When it runs on its own.
    pub schedule: Option<Schedule>,
    /// Storage target restored from.
    pub from_region: String,
    /// Recovery point.
    pub point: DrillPoint,
    /// RTO objective.
    pub rto: Duration,
    /// RPO objective.
    pub rpo: Duration,
    /// Sandbox parent directory.
    pub sandbox_dir: Option<PathBuf>,
    /// OS user for PostgreSQL when root.
    pub run_as: String,
    /// Database user for checks.
    pub db_user: String,
    /// Start-up and recovery timeout.
    pub start_timeout: Duration,
    /// Qdrant server for scratch collections.
    pub qdrant_url: Option<String>,
    pub checks: Vec<DrillCheck>,
}

/// Which point a drill restores to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrillPoint {
    /// The newest recoverable point.
    Latest,
    /// A random point in the PITR window.
    Random,
    /// This long before the drill starts.
    Ago(Duration),
}

/// One drill check.
#[derive(Debug, Clone)]
pub struct DrillCheck {
    /// Name in the report.
    pub name: String,
    /// What to ask.
    pub query: CheckQuery,
    /// Expected value.
    pub expect: Option<Expectation>,
    /// Freshness bound for a timestamp result.
    pub expect_recent: Option<Duration>,
    /// Group drills: the member it asks.
    pub member: Option<PolicyId>,
}

/// A check's question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckQuery {
    /// SQL in a database.
    Sql {
        database: String,
        /// Query.
        sql: String,
    },
    /// A Redis command, split on whitespace.
    Redis(Vec<String>),
}

/// `>= 1000` and friends.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// Operator: `=`, `!=`, `<`, `<=`, `>`, `>=`.
    pub op: &'static str,
    /// Right-hand side.
    pub value: String,
}

impl Expectation {
    /// Parses `">= 1000"`, `"= ok"` or a bare value (equality).
    ///
    /// # Errors
    /// An ordering operator with a non-numeric value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (op, rest) = ["<=", ">=", "!=", "=", "<", ">"]
            .into_iter()
            .find_map(|op| s.strip_prefix(op).map(|r| (op, r.trim())))
            .unwrap_or(("=", s));
        if matches!(op, "<" | "<=" | ">" | ">=") && rest.parse::<f64>().is_err() {
            return Err(format!("`{s}`: {op} needs a number"));
        }
        Ok(Self {
            op,
            value: rest.to_owned(),
        })
    }

    /// Whether `actual` meets it (numerically when both sides are numbers).
    pub fn holds(&self, actual: &str) -> bool {
        let actual = actual.trim();
        match (actual.parse::<f64>(), self.value.parse::<f64>()) {
            (Ok(a), Ok(b)) => match self.op {
                "=" => a == b,
                "!=" => a != b,
                "<" => a < b,
                "<=" => a <= b,
                ">" => a > b,
                _ => a >= b,
            },
            _ => match self.op {
                "=" => actual == self.value,
                "!=" => actual != self.value,
                _ => false,
            },
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, self.value)
    }
}

/// `dr daemon` settings.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Jobs at once, all kinds.
    pub max_concurrent_jobs: usize,
    /// Jobs at once per source type (`files`, `postgres`, `redis`, `qdrant`); absent = 1.
    pub max_concurrent: BTreeMap<String, usize>,
    /// Job timeout.
    pub job_timeout: Duration,
    /// Random start delay of scheduled runs, at most this.
    pub jitter: Duration,
    /// Replicator period.
    pub replicate_every: Duration,
    /// Retention period.
    pub retention_every: Duration,
    /// WAL lag measurement period.
    pub wal_check_every: Duration,
    /// How one active instance is elected.
    pub leader_election: LeaderElection,
    /// Lease time to live.
    pub lease_ttl: Duration,
}

/// Leader election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderElection {
    /// Always active.
    None,
    /// A lease object in the bucket.
    Bucket,
    /// A Kubernetes Lease.
    Kubernetes {
        /// Lease name.
        name: String,
        /// Namespace (default: the pod's).
        namespace: Option<String>,
        /// API server URL (default: in-cluster).
        api: Option<String>,
    },
}

/// `[sandbox]` of `dr.toml`: the server binaries a restore that starts the server, or a drill,
/// runs a backup's data with.
#[derive(Debug, Clone, Default)]
pub struct ServerBinaries {
    /// PostgreSQL `bin` directories by major version (tried before the Debian layout and PATH).
    pub postgres: BTreeMap<i32, PathBuf>,
    /// `redis-server` / `valkey-server` programs tried first (then PATH's): the first that
    /// reads the dump's RDB version starts it.
    pub redis: Vec<PathBuf>,
}

/// HTTP API settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// Tokens file (none: every route but `/healthz` answers 401).
    pub tokens_file: Option<PathBuf>,
    /// Requests per minute per token, or per client IP without a valid token.
    pub rate_limit_per_minute: u32,
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to send a request's headers (also the keep-alive idle timeout).
    pub header_read_timeout: std::time::Duration,
    /// Certificate and key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Pipeline tuning.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Target pack size in bytes.
    pub pack_size: usize,
    /// Concurrent uploads.
    pub upload_concurrency: usize,
    /// Concurrent ranged reads during restore.
    pub restore_concurrency: usize,
}

/// A backup policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Id (file stem).
    pub id: PolicyId,
    /// The policy file.
    pub file: PathBuf,
    /// What to back up.
    pub source: SourceSpec,
    /// Target names: primary first.
    pub targets: Vec<String>,
    /// When to back up.
    pub schedule: Schedule,
    /// Recovery point objective.
    pub rpo: Duration,
    /// Recovery time objective.
    pub rto: Duration,
    /// zstd level.
    pub compression: i32,
    /// What to keep.
    pub retention: Retention,
    /// WAL archiving and fetching.
    pub wal: WalSettings,
}

/// `[wal]` of a PostgreSQL policy, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// Segments stored at once by one `wal-push`.
    pub push_parallel: usize,
    /// Following `.ready` segments a `wal-push` stores along with its own.
    pub push_ahead: usize,
    /// Segments fetched ahead of replay for a server dr starts.
    pub fetch_ahead: usize,
    /// zstd level of archived segments.
    pub compression: i32,
    /// WAL streamed over the replication protocol (`wal.stream = true`).
    pub stream: Option<WalStream>,
}

/// `wal.stream = true` of a PostgreSQL policy: the daemon's WAL receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalStream {
    /// The physical replication slot.
    pub slot: String,
    /// How often the segment being written is stored as a `.partial` object.
    pub flush: Duration,
    /// WAL the slot may hold back on the server before it counts as an alert.
    pub max_lag: u64,
}

/// What a policy backs up.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// A directory tree.
    Files {
        /// Root directory.
        path: PathBuf,
        /// Paths relative to the root that are skipped.
        exclude: Vec<PathBuf>,
    },
    /// A PostgreSQL cluster.
    Postgres(PostgresSpec),
    /// A Redis server.
    Redis(RedisSpec),
    /// A Qdrant server.
    Qdrant(QdrantSpec),
}

/// A Qdrant source, validated.
#[derive(Debug, Clone)]
pub struct QdrantSpec {
    /// REST base URL, without a trailing slash.
    pub url: String,
    /// API key source.
    pub api_key: Option<SecretRef>,
    /// Collection names; empty = all.
    pub collections: Vec<String>,
    /// Snapshot creation timeout.
    pub snapshot_timeout: Duration,
    /// Above this many points a snapshot is created with `wait=false` and polled for.
    pub snapshot_poll_above: u64,
    /// REST URLs of the peers of a distributed deployment (without trailing slashes).
    pub peers: Vec<String>,
}

/// A Redis source, validated.
#[derive(Debug, Clone)]
pub struct RedisSpec {
    pub host: String,
    pub port: u16,
    /// ACL user.
    pub username: Option<String>,
    /// Password source.
    pub password: Option<SecretRef>,
    /// `dump.rdb` location for the BGSAVE fallback.
    pub rdb_path: Option<PathBuf>,
    /// TLS (`rediss://`): `Some(ca_file)`, where `None` inside means the public web roots.
    pub tls: Option<Option<PathBuf>>,
}

impl SourceSpec {
    /// The source type as written in config (`files`, `postgres`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Files { .. } => "files",
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Qdrant(_) => "qdrant",
        }
    }
}

/// Where a secret value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable's value.
    Env(String),
    /// A file's contents (trimmed).
    File(PathBuf),
}

/// A secret that cannot be read; names the variable or file, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    NotSet(String),
    /// The file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

impl SecretRef {
    /// Reads the secret.
    ///
    /// # Errors
    /// The variable is not set or the file cannot be read.
    pub fn read(&self) -> Result<String, SecretError> {
        match self {
            Self::Env(v) => std::env::var(v).map_err(|_| SecretError::NotSet(v.clone())),
            Self::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .map_err(|error| SecretError::Unreadable {
                    path: p.clone(),
                    error,
                }),
        }
    }
}

/// How a PostgreSQL base backup is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgMode {
    /// dr reads the data directory between `pg_backup_start` and `pg_backup_stop`.
    Local,
    /// `pg_basebackup -Ft -X none -D -`, parsed as it streams.
    Stream,
}

/// A PostgreSQL source, validated.
#[derive(Debug, Clone)]
pub struct PostgresSpec {
    /// Connection string source.
    pub conninfo: SecretRef,
    /// Backup mode.
    pub mode: PgMode,
    /// Data directory (local mode).
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL binaries directory, if configured.
    pub bin_dir: Option<PathBuf>,
    /// `on_bad_page = "fail"`: a page failing its checksum fails the backup.
    pub fail_on_bad_page: bool,
    /// Back up from this streaming standby (local mode; `data_dir` is the standby's).
    pub standby: Option<SecretRef>,
}

/// Retention rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Newest N kept.
    pub keep_last: u32,
    /// Hourly buckets.
    pub hourly: u32,
    /// Daily buckets.
    pub daily: u32,
    /// Weekly buckets.
    pub weekly: u32,
    /// Monthly buckets.
    pub monthly: u32,
    /// Yearly buckets.
    pub yearly: u32,
    /// PITR window for WAL.
    pub wal_window: Option<Duration>,
    /// Grace period of two-phase pack deletion.
    pub gc_grace: Duration,
    /// Storage-class tiers, by increasing age.
    pub tiers: Vec<Tier>,
}

/// A storage-class tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Age after which objects move.
    pub after: Duration,
    /// Target storage class.
    pub storage_class: String,
    /// Targets it applies to (empty = all).
    pub only: Vec<String>,
}
