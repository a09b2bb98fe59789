//! Serde mirror of the configuration files, with no logic.
//!
//! Every struct denies unknown fields; alternatives are internally tagged enums whose variants
//! wrap structs (never unit variants, never `#[serde(flatten)]`, both of which silently disable
//! the unknown-field check: serde-rs/serde#2123, #2283). Durations and sizes stay strings here;
//! `config::validate` parses them so that every bad value is reported, not just the first.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `dr.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrConfig {
    /// Folder of `<policy-id>.toml` files, relative to `dr.toml` (default `policies`).
    pub policies_dir: Option<String>,
    /// Folder of restore drill definitions, relative to `dr.toml` (default `restore-drills`).
    pub drills_dir: Option<String>,
    /// Folder of application groups, relative to `dr.toml` (default `groups`).
    pub groups_dir: Option<String>,
    /// Local state: index cache, capability probes (default `state`, relative to `dr.toml`).
    pub state_dir: Option<String>,
    /// Encryption and chunk-id keys.
    pub keys: KeysConfig,
    /// Storage targets by name; a policy's `targets` refer to these names.
    #[serde(default)]
    pub storage: BTreeMap<String, StorageConfig>,
    /// Tuning of the backup pipeline.
    pub pipeline: Option<PipelineConfig>,
    /// `dr daemon`: concurrency, timeouts and how often the background workers run.
    pub daemon: Option<DaemonConfig>,
    /// The daemon's HTTP status API.
    pub api: Option<ApiConfig>,
    /// Server binaries for restores that start a server (`--start`) and drills.
    pub sandbox: Option<ServersConfig>,
}

/// `[sandbox]` of `dr.toml`: which server binaries this host restores and drills with.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServersConfig {
    /// PostgreSQL binary directories by major version: `{ 17 = "/usr/lib/postgresql/17/bin" }`.
    pub postgres: Option<BTreeMap<String, String>>,
    /// `redis-server` or `valkey-server` programs to start Redis dumps with, tried in order
    /// before PATH's: the first that reads the dump's RDB version is used.
    pub redis: Option<Vec<String>>,
}

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Jobs (backups, drills) running at once, all kinds together (default 2).
    pub max_concurrent_jobs: Option<usize>,
    /// Per source type limits, e.g. `{ postgres = 1, redis = 1 }` (default: 1 each).
    pub max_concurrent: Option<BTreeMap<String, usize>>,
    /// A job running longer is cancelled (default `6h`).
    pub job_timeout: Option<String>,
    /// Each scheduled run starts up to this much later, at random (default `0s`).
    pub jitter: Option<String>,
    /// How often the replicator copies what replicas lack (default `5m`).
    pub replicate_every: Option<String>,
    /// How often retention is applied and packs collected (default `1h`).
    pub retention_every: Option<String>,
    /// How often the WAL archive lag is measured (default `1m`).
    pub wal_check_every: Option<String>,
    /// `"none"` (default: this instance is always active), `"bucket"` (several instances share a
    /// lease object in the audit target, the first policy's primary) or `"kubernetes"` (a
    /// `coordination.k8s.io` Lease); one instance is active.
    pub leader_election: Option<String>,
    /// How long a lease holds without renewal (default `30s`).
    pub lease_ttl: Option<String>,
    /// `"kubernetes"`: name of the Lease object (default `dr-leader`).
    pub lease_name: Option<String>,
    /// `"kubernetes"`: namespace of the Lease (default: the pod's).
    pub lease_namespace: Option<String>,
    /// `"kubernetes"`: API server URL (default: the in-cluster one).
    pub kube_api: Option<String>,
}

/// `[api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `host:port` to listen on (default `127.0.0.1:7878`).
    pub listen: Option<String>,
    /// TOML file of bearer tokens: `[tokens.<name>] token_sha256 = "…", role = "operator"`.
    pub tokens_file: Option<String>,
    /// Requests per minute per token, and per client IP for requests without a valid token
    /// (default 100). `/healthz` and `/readyz` are never limited.
    pub rate_limit_per_minute: Option<u32>,
    /// Open connections at most (default 512). At the cap a new connection closes the oldest
    /// one that is not serving a request (still sending its headers, idle between requests, or
    /// in the TLS handshake); when all are serving one, the new connection is closed.
    pub max_connections: Option<usize>,
    /// Time a client has to send a request's headers (and the TLS handshake), counted from
    /// the connection's start or the end of the previous response: also the keep-alive idle
    /// timeout (default `"10s"`).
    pub header_read_timeout: Option<String>,
    /// PEM certificate chain: serve HTTPS.
    pub tls_cert_file: Option<String>,
    /// PEM private key for `tls_cert_file`.
    pub tls_key_file: Option<String>,
}

/// `[keys]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// age recipients (`age1…`): every pack key and manifest is encrypted to all of them.
    pub recipients: Vec<String>,
    /// age identity file needed to restore, verify data and run drills. Writers do not need it.
    pub identity_file: Option<String>,
    /// Secret shared by all writers of a repository: keys chunk ids and index/refs MACs.
    pub chunk_id_key_file: String,
    /// Ed25519 key that signs drill reports (`dr keygen --signing FILE`); where drills run.
    pub signing_key_file: Option<String>,
    /// Public keys (hex) whose report signatures `dr drill verify-report` accepts (default:
    /// the one of `signing_key_file`).
    #[serde(default)]
    pub trusted_signers: Vec<String>,
}

/// `[storage.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum StorageConfig {
    /// A directory on a local or mounted filesystem.
    #[serde(rename = "local")]
    Local(LocalStorageConfig),
    /// An S3-compatible bucket.
    #[serde(rename = "s3")]
    S3(S3StorageConfig),
}

/// `type = "local"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalStorageConfig {
    /// Repository directory; relative paths are relative to `dr.toml`.
    pub path: String,
}

/// `type = "s3"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3StorageConfig {
    /// Bucket name.
    pub bucket: String,
    /// Region to sign requests for (default `us-east-1`).
    pub region: Option<String>,
    /// Endpoint URL for S3-compatible stores (Garage, MinIO); AWS when absent.
    pub endpoint: Option<String>,
    /// Key prefix inside the bucket, e.g. `"prod/"`.
    pub prefix: Option<String>,
    /// Path-style addressing (default: true when `endpoint` is set).
    pub path_style: Option<bool>,
    /// Environment variable holding the access key id (default: the standard credential chain).
    pub access_key_id_env: Option<String>,
    /// Environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// File holding the access key id.
    pub access_key_id_file: Option<String>,
    /// File holding the secret access key (must not be group/world readable).
    pub secret_access_key_file: Option<String>,
    /// Timeout of one request attempt (default `60s`).
    pub timeout: Option<String>,
    /// Attempts for retryable errors (default 5).
    pub max_attempts: Option<u32>,
    /// Object Lock retention for what dr writes, when the bucket has Object Lock enabled:
    /// `{ mode = "compliance" | "governance", days = 30 }`.
    pub lock: Option<LockConfig>,
}

/// `lock = { … }` of an S3 target.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// `compliance` (nobody can shorten it) or `governance` (privileged users can).
    pub mode: String,
    /// Retention in days from each write (and from each extension by retention).
    pub days: u32,
}

/// `[pipeline]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Target pack size (default `16MiB`).
    pub pack_size: Option<String>,
    /// Concurrent uploads per target (default 4).
    pub upload_concurrency: Option<usize>,
    /// Concurrent ranged reads during restore (default 4).
    pub restore_concurrency: Option<usize>,
}

/// `policies/<id>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// What to back up.
    pub source: SourceConfig,
    /// Storage target names: the first is the primary, the others are replicas.
    pub targets: Vec<String>,
    /// Cron expression, 5 fields (`min hour dom month dow`) or 6 with seconds first
    /// (default `"0 2 * * *"`, daily at 02:00).
    pub schedule: Option<String>,
    /// IANA time zone of the schedule (default `UTC`).
    pub timezone: Option<String>,
    /// Recovery point objective (default `24h`).
    pub rpo: Option<String>,
    /// Recovery time objective (default `1h`).
    pub rto: Option<String>,
    /// zstd level, 1–19 (default 1 for PostgreSQL, 3 otherwise).
    pub compression: Option<i32>,
    /// What to keep.
    pub retention: Option<RetentionConfig>,
    /// WAL archiving and fetching (PostgreSQL policies).
    pub wal: Option<WalConfig>,
}

/// `[wal]` of a PostgreSQL policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// Segments `wal-push` stores at once, its own and the `.ready` ones after it (default:
    /// the cores, at least 2).
    pub push_parallel: Option<usize>,
    /// Following `.ready` segments one `wal-push` stores along with its own (default
    /// 8 × push_parallel; 0 = only its own).
    pub push_ahead: Option<usize>,
    /// Segments fetched and decrypted ahead of replay for a server dr starts (default 32).
    pub fetch_ahead: Option<usize>,
    /// zstd level for WAL segments, 1–19 (default 1: on WAL about as small as level 3 and
    /// about 1.7 times as fast, and archiving speed is what bounds the RPO).
    pub compression: Option<i32>,
    /// Stream WAL from the server over the replication protocol (`dr daemon`), beside or
    /// instead of `archive_command` (default false).
    pub stream: Option<bool>,
    /// The physical replication slot the stream holds (default `dr_<policy>`).
    pub slot: Option<String>,
    /// How often the segment being written is stored as a `.partial` object (default `5s`).
    pub stream_flush: Option<String>,
    /// WAL the slot may hold back on the server before an alert (default `1GiB`).
    pub stream_max_lag: Option<String>,
}

/// `groups/<id>.toml`: policies recovered together, to one point in time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The member policies (PostgreSQL ones recover exactly to the point, snapshot-based
    /// ones to their newest snapshot at or before it).
    pub members: Vec<String>,
    /// How far before the point a snapshot-based member's snapshot may be (default `5m`).
    pub max_skew: Option<String>,
    /// Cron expression: `dr daemon` runs `backup --group` on it (default: never on its own).
    pub schedule: Option<String>,
    /// IANA time zone of the schedule (default `UTC`).
    pub timezone: Option<String>,
    /// Cross-store checks a group drill runs on the restored members.
    #[serde(default)]
    pub check: Vec<CrossCheckConfig>,
}

/// `[[check]]` of a group: one member's answer compared with another's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossCheckConfig {
    /// Shown in the report.
    pub name: String,
    /// One side.
    pub left: CrossQueryConfig,
    /// The other side.
    pub right: CrossQueryConfig,
    /// How far apart the two numbers may be (default 0: equal).
    pub tolerance: Option<f64>,
}

/// One side of a cross-store check: a member and a question with a number for an answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossQueryConfig {
    /// The member asked.
    pub policy: String,
    /// PostgreSQL: a query returning one number.
    pub sql: Option<String>,
    /// PostgreSQL: its database (default `postgres`).
    pub database: Option<String>,
    /// Redis: a command answering a number (`DBSIZE`, `SCARD orders`).
    pub redis: Option<String>,
    /// Qdrant: a collection whose point count is the answer.
    pub points: Option<String>,
}

/// `restore-drills/<name>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// The policy whose backups are restored.
    pub policy: Option<String>,
    /// Or: the application group (`groups/<id>.toml`) restored as a whole to one point.
    pub group: Option<String>,
    /// Cron expression; without one the drill only runs on demand (`dr drill run`, the API).
    pub schedule: Option<String>,
    /// IANA time zone of the schedule (default: the policy's).
    pub timezone: Option<String>,
    /// Storage target to restore from (default: the policy's first replica, else its primary).
    pub from_region: Option<String>,
    /// `latest` (default), `random` (within the PITR window; PostgreSQL), or `<duration> ago`.
    pub point_in_time: Option<String>,
    /// Objective for the measured RTO (default: the policy's `rto`).
    pub rto: Option<String>,
    /// Objective for the measured RPO (default: the policy's `rpo`).
    pub rpo: Option<String>,
    /// Throwaway server settings.
    pub sandbox: Option<SandboxConfig>,
    /// Checks run against the restored server.
    #[serde(default)]
    pub check: Vec<CheckConfig>,
}

/// `[sandbox]` of a drill.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Parent directory for sandboxes (default: the system temp dir).
    pub dir: Option<String>,
    /// OS user running PostgreSQL when dr runs as root (default `postgres`).
    pub run_as: Option<String>,
    /// Database user for checks (default `postgres`).
    pub db_user: Option<String>,
    /// Give up on start-up and recovery after (default `1h`).
    pub start_timeout: Option<String>,
    /// Qdrant drills: the server to restore into (a scratch collection, dropped afterwards).
    pub qdrant_url: Option<String>,
}

/// `[[check]]` of a drill.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Shown in the report (default: the query).
    pub name: Option<String>,
    /// PostgreSQL: a query returning one value.
    pub sql: Option<String>,
    /// PostgreSQL: database to run it in (default `postgres`).
    pub database: Option<String>,
    /// Redis: a command, e.g. `"GET config:version"`.
    pub redis: Option<String>,
    /// Group drills: the member asked.
    pub member: Option<String>,
    /// Expected value: `">= 1000"`, `"= 42"`, `"!= 0"`, `"< 5"`, or a bare value for equality.
    pub expect: Option<String>,
    /// The value is a timestamp no older than this before the recovery point (e.g. `"10m"`).
    pub expect_recent: Option<String>,
}

/// `source = { type = … }`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum SourceConfig {
    /// A directory tree.
    #[serde(rename = "files")]
    Files(FilesSourceConfig),
    /// A PostgreSQL cluster: base backups plus continuous WAL archiving.
    #[serde(rename = "postgres")]
    Postgres(PostgresSourceConfig),
    /// A Redis server: its RDB snapshot, streamed over the replication protocol.
    #[serde(rename = "redis")]
    Redis(RedisSourceConfig),
    /// A Qdrant server: collection snapshots, checksum-verified while streaming.
    #[serde(rename = "qdrant")]
    Qdrant(QdrantSourceConfig),
}

/// `source = { type = "qdrant", … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QdrantSourceConfig {
    /// REST URL, e.g. `http://qdrant:6333` (no credentials in it).
    pub url: String,
    /// Environment variable holding the API key (sent as the `api-key` header).
    pub api_key_env: Option<String>,
    /// File holding the API key (must not be group/world readable).
    pub api_key_file: Option<String>,
    /// Collections to back up: `["*"]` (default) for all, or names.
    pub collections: Option<Vec<String>>,
    /// How long one collection snapshot may take to create (default `30m`).
    pub snapshot_timeout: Option<String>,
    /// Collections with more points than this are snapshotted with `wait=false` and the
    /// snapshot list polled, instead of one request held open until the snapshot is made
    /// (which proxies with short timeouts cut). Default 1000000; 0 = always poll.
    pub snapshot_poll_above: Option<u64>,
    /// Distributed deployment: the REST URL of every peer (`url` may be one of them). Each
    /// shard is snapshotted on a peer holding an active replica of it.
    pub peers: Option<Vec<String>>,
}

/// `source = { type = "redis", … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSourceConfig {
    /// `redis://host:port` (no password in the URL: use `password_env` or `password_file`).
    pub url: String,
    /// ACL user (default: the `default` user).
    pub username: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (must not be group/world readable).
    pub password_file: Option<String>,
    /// Where the server writes `dump.rdb`, for the BGSAVE fallback when SYNC is not allowed
    /// (managed services). Without it, a refused SYNC is an error.
    pub rdb_path: Option<String>,
    /// `rediss://` only: PEM file of the CA that signed the server's certificate (default:
    /// the public web roots).
    pub tls_ca_file: Option<String>,
}

/// `source = { type = "postgres", … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Environment variable holding the libpq connection string (passwords never go inline).
    pub conninfo_env: Option<String>,
    /// File holding the connection string (must not be group/world readable).
    pub conninfo_file: Option<String>,
    /// `local` (dr reads the data directory; block-level incrementals) or `stream`
    /// (`pg_basebackup` over the network). Default `local`.
    pub mode: Option<String>,
    /// The cluster's data directory (required for `local`).
    pub data_dir: Option<String>,
    /// Directory of the PostgreSQL binaries (`pg_basebackup`, `pg_ctl`); default: PATH, then
    /// `/usr/lib/postgresql/<major>/bin`.
    pub bin_dir: Option<String>,
    /// Back up from a streaming standby (local mode): the environment variable or file holding
    /// its connection string. `data_dir` is then the standby's, the backup functions run on
    /// the standby, and the primary (`conninfo_*`) only switches WAL and reports archiving.
    pub standby_conninfo_env: Option<String>,
    /// See `standby_conninfo_env`.
    pub standby_conninfo_file: Option<String>,
    /// A page failing its checksum (clusters with data checksums, local mode): `warn` (the
    /// backup is committed and names it; default) or `fail` (nothing is committed).
    pub on_bad_page: Option<String>,
}

/// `source = { type = "files", … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSourceConfig {
    /// Absolute path of the directory to back up.
    pub path: String,
    /// Glob-free exclusions: paths relative to `path` that are skipped with everything below.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `[retention]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Newest snapshots always kept.
    pub keep_last: Option<u32>,
    /// Newest snapshot of each of the last N hours.
    pub hourly: Option<u32>,
    /// … days.
    pub daily: Option<u32>,
    /// … ISO weeks.
    pub weekly: Option<u32>,
    /// … months.
    pub monthly: Option<u32>,
    /// … years.
    pub yearly: Option<u32>,
    /// Point-in-time window for WAL, independent of snapshot counts.
    pub wal_window: Option<String>,
    /// Grace period between marking an unreferenced pack and deleting it (default `24h`).
    pub gc_grace: Option<String>,
    /// Storage-class tiers.
    #[serde(default)]
    pub tier: Vec<TierConfig>,
}

/// `[[retention.tier]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Age after which objects move.
    pub after: String,
    /// S3 storage class, e.g. `STANDARD_IA`.
    pub storage_class: String,
    /// Only these targets (default: all).
    pub only: Option<Vec<String>>,
}
