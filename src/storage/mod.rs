//! Object storage: a local directory or an S3 bucket, behind one [`Storage`] handle that adds
//! timeouts and retries (retryable errors only, capped exponential backoff with jitter).
//!
//! Backends never build keys (that is `repo::layout`) and never interpret contents. Bodies are
//! `Bytes`: every object is bounded (packs, indexes, manifests), so streaming ends before here.
//!
//! Deviation from the design (README "Deviations"): one concrete handle over an enum instead
//! of `ReadStorage` / `Storage` traits plus generic decorators. With two backends and one decorator (retry +
//! timeout) the traits bought nothing but `Send`-bound noise on async trait methods; read-only
//! use is a matter of the credentials configured, which the store enforces anyway.

mod local;
#[cfg(any(test, feature = "integration-tests"))]
mod memory;
mod s3;

#[cfg(any(test, feature = "integration-tests"))]
pub mod conformance;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::StorageTarget;
use crate::repo::layout::{KeyPrefix, ObjectKey};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A listed or `head`ed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the repository root.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, when the backend knows it.
    pub modified: Option<DateTime<Utc>>,
    /// Storage class, when the backend has them (S3).
    pub storage_class: Option<String>,
}

/// How a `put` treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it.
    Overwrite,
    /// Fail with [`StorageError::AlreadyExists`] (content-addressed objects treat that as done).
    CreateOnly,
}

/// What a storage target really supports, found by writing and reading probe objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Bucket versioning enabled.
    pub versioning: bool,
    /// Object Lock enabled on the bucket.
    pub object_lock: bool,
    /// A storage class set on PUT is reported back by HEAD.
    pub storage_classes: bool,
    /// `If-None-Match: *` on PUT is enforced.
    pub conditional_writes: bool,
}

/// Storage failures, each naming the object and the store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("{key} not found in {location}")]
    NotFound { key: String, location: String },
    /// A create-only write found the object present.
    #[error("{key} already exists in {location}")]
    AlreadyExists { key: String, location: String },
    /// A conditional write found the object changed since it was read.
    #[error("{key} in {location} changed since it was read")]
    Changed { key: String, location: String },
    /// Fewer bytes arrived than the object or range holds.
    #[error("{key} in {location} is truncated: expected {expected} bytes, got {got}")]
    Truncated {
        key: String,
        location: String,
        /// Expected length.
        expected: u64,
        /// Received length.
        got: u64,
    },
    /// A filesystem error.
    #[error("{op} of {key} in {location} failed")]
    Io {
        op: &'static str,
        key: String,
        location: String,
        #[source]
        source: std::io::Error,
    },
    /// A remote (S3) error.
    #[error("{op} of {key} in {location} failed{}", describe(*status, code.as_deref()))]
    Remote {
        op: &'static str,
        key: String,
        location: String,
        /// HTTP status, when a response arrived.
        status: Option<u16>,
        /// S3 error code.
        code: Option<String>,
        /// Whether trying again can help.
        retryable: bool,
        #[source]
        source: BoxError,
    },
    /// An attempt took longer than the configured timeout.
    #[error("{op} of {key} in {location} timed out after {after:?}")]
    Timeout {
        op: &'static str,
        key: String,
        location: String,
        /// The timeout.
        after: Duration,
    },
    /// The target could not be set up.
    #[error("storage target {location}: {reason}")]
    Setup {
        location: String,
        /// What is wrong.
        reason: String,
    },
}

fn describe(status: Option<u16>, code: Option<&str>) -> String {
    match (status, code) {
        (Some(s), Some(c)) => format!(" (HTTP {s} {c})"),
        (Some(s), None) => format!(" (HTTP {s})"),
        (None, Some(c)) => format!(" ({c})"),
        (None, None) => String::new(),
    }
}

impl StorageError {
    /// Whether the same request may succeed if repeated.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Remote { retryable, .. } => *retryable,
            Self::Timeout { .. } | Self::Truncated { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            Self::NotFound { .. }
            | Self::AlreadyExists { .. }
            | Self::Changed { .. }
            | Self::Setup { .. } => false,
        }
    }

    /// True for [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

enum Backend {
    Local(local::LocalStorage),
    S3(s3::S3Storage),
    #[cfg(any(test, feature = "integration-tests"))]
    Memory(memory::MemoryStorage),
}

/// Retry schedule for retryable errors.
#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    attempts: u32,
    base: Duration,
    cap: Duration,
    timeout: Duration,
}

struct Inner {
    name: String,
    location: String,
    backend: Backend,
    retry: RetryPolicy,
}

/// What a put writes: bytes in memory, or a file streamed from disk.
enum PutBody<'a> {
    Bytes(Bytes),
    File(&'a std::path::Path),
}

/// A handle on one storage target; cheap to clone.
#[derive(Clone)]
pub struct Storage(Arc<Inner>);

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({} at {})", self.0.name, self.0.location)
    }
}

impl Storage {
    /// Opens the target named `name`.
    ///
    /// # Errors
    /// `StorageError::Setup` when credentials cannot be read.
    pub async fn open(name: &str, target: &StorageTarget) -> Result<Self, StorageError> {
        let (backend, location, retry) = match target {
            StorageTarget::Local { path } => {
                let location = format!("local:{}", path.display());
                let retry = RetryPolicy {
                    attempts: 3,
                    base: Duration::from_millis(50),
                    cap: Duration::from_secs(1),
                    timeout: Duration::from_secs(300),
                };
                (
                    Backend::Local(local::LocalStorage::new(path.clone(), location.clone())),
                    location,
                    retry,
                )
            }
            StorageTarget::S3(t) => {
                let location = format!("s3://{}/{} ({})", t.bucket, t.prefix, t.region);
                let retry = RetryPolicy {
                    attempts: t.max_attempts,
                    base: Duration::from_millis(200),
                    cap: Duration::from_secs(10),
                    timeout: t.timeout,
                };
                (
                    Backend::S3(s3::S3Storage::new(t, location.clone()).await?),
                    location,
                    retry,
                )
            }
        };
        Ok(Self(Arc::new(Inner {
            name: name.to_owned(),
            location,
            backend,
            retry,
        })))
    }

    /// An in-memory store for tests.
    #[cfg(any(test, feature = "integration-tests"))]
    pub fn memory() -> Self {
        Self(Arc::new(Inner {
            name: "memory".into(),
            location: "memory:".into(),
            backend: Backend::Memory(memory::MemoryStorage::default()),
            retry: RetryPolicy {
                attempts: 1,
                base: Duration::ZERO,
                cap: Duration::ZERO,
                timeout: Duration::from_secs(10),
            },
        }))
    }

    /// The target's name in `dr.toml`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Where it is, for messages: `s3://bucket/prefix (region)`, `local:/path`.
    pub fn location(&self) -> &str {
        &self.0.location
    }

    /// The file behind `key` when this is a local directory: a restore's worker threads read
    /// ranges of local packs themselves, into buffers they reuse.
    pub fn local_file(&self, key: &ObjectKey) -> Option<std::path::PathBuf> {
        match &self.0.backend {
            Backend::Local(b) => Some(b.file(key)),
            _ => None,
        }
    }

    async fn with_retry<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut f: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let p = self.0.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match tokio::time::timeout(p.timeout, f()).await {
                Ok(r) => r,
                Err(_) => Err(StorageError::Timeout {
                    op,
                    key: key.to_owned(),
                    location: self.0.location.clone(),
                    after: p.timeout,
                }),
            };
            match result {
                Err(e) if e.is_retryable() && attempt < p.attempts => {
                    let exp = p.base.saturating_mul(1 << attempt.min(16)).min(p.cap);
                    let wait = exp.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                    tracing::warn!(op, key, location = %self.0.location, attempt, error = %e, "Retrying storage request.");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Reads an object, or a byte range of it.
    ///
    /// # Errors
    /// `NotFound`, `Truncated` (after retries) or a backend error.
    pub async fn get(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, StorageError> {
        self.with_retry("get", key.as_str(), || {
            let range = range.clone();
            async move {
                match &self.0.backend {
                    Backend::Local(b) => b.get(key, range).await,
                    Backend::S3(b) => b.get(key, range).await,
                    #[cfg(any(test, feature = "integration-tests"))]
                    Backend::Memory(b) => b.get(&self.0.location, key, range),
                }
            }
        })
        .await
    }

    /// Size and time of an object, `None` when absent.
    ///
    /// # Errors
    /// A backend error.
    pub async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        self.with_retry("head", key.as_str(), || async move {
            match &self.0.backend {
                Backend::Local(b) => b.head(key).await,
                Backend::S3(b) => b.head(key).await,
                #[cfg(any(test, feature = "integration-tests"))]
                Backend::Memory(b) => Ok(b.head(key)),
            }
        })
        .await
    }

    /// Every object under `prefix`, sorted by key.
    ///
    /// # Errors
    /// A backend error.
    pub async fn list(&self, prefix: &KeyPrefix) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut v = self
            .with_retry("list", prefix.as_str(), || async move {
                match &self.0.backend {
                    Backend::Local(b) => b.list(prefix).await,
                    Backend::S3(b) => b.list(prefix).await,
                    #[cfg(any(test, feature = "integration-tests"))]
                    Backend::Memory(b) => Ok(b.list(prefix)),
                }
            })
            .await?;
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }

    /// Writes an object durably: success means it is stored (fsync'd, or acknowledged by S3).
    ///
    /// # Errors
    /// `AlreadyExists` for `CreateOnly` when present, or a backend error.
    pub async fn put(
        &self,
        key: &ObjectKey,
        body: Bytes,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        self.put_body(key, &PutBody::Bytes(body), mode).await
    }

    /// Writes an object from a file (a spooled pack or manifest) durably, as [`Storage::put`]
    /// does, without reading it into memory.
    ///
    /// # Errors
    /// `AlreadyExists` for `CreateOnly` when present, or a backend error.
    pub async fn put_file(
        &self,
        key: &ObjectKey,
        path: &std::path::Path,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        self.put_body(key, &PutBody::File(path), mode).await
    }

    async fn put_body(
        &self,
        key: &ObjectKey,
        body: &PutBody<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let io = |source| StorageError::Io {
            op: "put",
            key: key.to_string(),
            location: self.0.location.clone(),
            source,
        };
        // The file's bytes, where the backend needs them in memory.
        let bytes = || async {
            match body {
                PutBody::Bytes(b) => Ok(b.clone()),
                PutBody::File(p) => tokio::fs::read(p).await.map(Bytes::from).map_err(io),
            }
        };
        let mut attempt = 0;
        self.with_retry("put", key.as_str(), || {
            attempt += 1;
            let first = attempt == 1;
            async move {
                let r = match (&self.0.backend, body) {
                    (Backend::Local(b), PutBody::Bytes(bytes)) => {
                        b.put(key, bytes.clone(), mode).await
                    }
                    (Backend::Local(b), PutBody::File(path)) => b.put_file(key, path, mode).await,
                    (Backend::S3(b), PutBody::Bytes(bytes)) => {
                        b.put(key, bytes.clone(), mode).await
                    }
                    (Backend::S3(b), PutBody::File(path)) => b.put_file(key, path, mode).await,
                    #[cfg(any(test, feature = "integration-tests"))]
                    (Backend::Memory(b), _) => b.put(&self.0.location, key, bytes().await?, mode),
                };
                match r {
                    // A retried create-only PUT whose first attempt was stored but not
                    // acknowledged finds its own object: compare before calling it a conflict.
                    Err(StorageError::AlreadyExists { .. })
                        if !first && mode == PutMode::CreateOnly =>
                    {
                        let existing = self.get_once(key).await?;
                        if existing == bytes().await? {
                            Ok(())
                        } else {
                            r
                        }
                    }
                    other => other,
                }
            }
        })
        .await
    }

    /// Where a backup spools the packs it builds for this target before [`Storage::put_file`]:
    /// inside the repository for a local target (publishing is then a link, no copy); `None`
    /// for the others (the caller uses its cache directory).
    pub fn spool_dir(&self) -> Option<std::path::PathBuf> {
        match &self.0.backend {
            Backend::Local(b) => Some(b.spool_dir()),
            _ => None,
        }
    }

    /// Reads a small mutable object (the leader lease) with a tag that changes with every
    /// write: the S3 ETag, or the BLAKE3 of the bytes elsewhere. `None` when absent.
    ///
    /// # Errors
    /// A backend error.
    pub async fn get_tagged(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<(Bytes, String)>, StorageError> {
        let r = match &self.0.backend {
            Backend::S3(b) => b.get_tagged(key).await,
            _ => self.get_once(key).await.map(|b| {
                let tag = blake3::hash(&b).to_hex().to_string();
                (b, tag)
            }),
        };
        match r {
            Ok(x) => Ok(Some(x)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Compare-and-swap: writes `body` only if the object is absent (`expected` = `None`) or
    /// still carries tag `expected` (from [`Storage::get_tagged`]). Not retried: the caller
    /// re-reads and decides.
    ///
    /// # Errors
    /// `AlreadyExists` / `Changed` when the condition fails; a backend error.
    pub async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        expected: Option<&str>,
    ) -> Result<(), StorageError> {
        let r = match &self.0.backend {
            Backend::S3(b) => b.put_if(key, body, expected).await,
            Backend::Local(b) => b.put_if(key, body, expected.map(str::to_owned)).await,
            #[cfg(any(test, feature = "integration-tests"))]
            Backend::Memory(b) => b.put_if(&self.0.location, key, body, expected),
        };
        match r {
            Err(StorageError::AlreadyExists { key, location }) if expected.is_some() => {
                Err(StorageError::Changed { key, location })
            }
            other => other,
        }
    }

    async fn get_once(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        match &self.0.backend {
            Backend::Local(b) => b.get(key, None).await,
            Backend::S3(b) => b.get(key, None).await,
            #[cfg(any(test, feature = "integration-tests"))]
            Backend::Memory(b) => b.get(&self.0.location, key, None),
        }
    }

    /// Deletes an object; deleting an absent object succeeds.
    ///
    /// # Errors
    /// A backend error (e.g. an Object Lock refusal).
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.with_retry("delete", key.as_str(), || async move {
            match &self.0.backend {
                Backend::Local(b) => b.delete(key).await,
                Backend::S3(b) => b.delete(key).await,
                #[cfg(any(test, feature = "integration-tests"))]
                Backend::Memory(b) => {
                    b.delete(key);
                    Ok(())
                }
            }
        })
        .await
    }

    /// The Object Lock retention configured for this target, if any (it applies only where
    /// the bucket has Object Lock enabled).
    pub fn lock(&self) -> Option<crate::config::ObjectLock> {
        match &self.0.backend {
            Backend::S3(b) => b.lock(),
            _ => None,
        }
    }

    /// Extends an object's Object Lock retention to at least `until`; `Ok(false)` when it
    /// already lasts long enough or the target has no lock.
    ///
    /// # Errors
    /// A backend error.
    pub async fn extend_lock(
        &self,
        key: &ObjectKey,
        until: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        match &self.0.backend {
            Backend::S3(b) => {
                self.with_retry("extend lock", key.as_str(), || b.extend_lock(key, until))
                    .await
            }
            _ => Ok(false),
        }
    }

    /// Moves an object to another storage class (S3 copy onto itself).
    ///
    /// # Errors
    /// A backend error; `Setup` on backends without storage classes.
    pub async fn set_storage_class(
        &self,
        key: &ObjectKey,
        class: &str,
    ) -> Result<(), StorageError> {
        match &self.0.backend {
            Backend::S3(b) => {
                self.with_retry("set storage class", key.as_str(), || {
                    b.set_storage_class(key, class)
                })
                .await
            }
            _ => Err(StorageError::Setup {
                location: self.0.location.clone(),
                reason: "this backend has no storage classes".to_owned(),
            }),
        }
    }

    /// Finds out what the target really supports by writing probe objects under `scratch/`.
    ///
    /// # Errors
    /// When the probe objects cannot be written at all.
    pub async fn probe(&self) -> Result<Capabilities, StorageError> {
        match &self.0.backend {
            Backend::Local(b) => b.probe().await,
            Backend::S3(b) => b.probe().await,
            #[cfg(any(test, feature = "integration-tests"))]
            Backend::Memory(_) => Ok(Capabilities {
                conditional_writes: true,
                ..Capabilities::default()
            }),
        }
    }
}
