//! S3-compatible buckets through aws-sdk-s3.
//!
//! The SDK's own retries are disabled: [`super::Storage`] retries every backend the same way,
//! including body reads cut short, which the SDK does not retry. Checksums are calculated only
//! when an operation requires them (Garage rejects the SDK's default streaming checksums).

use std::ops::Range;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, MetadataDirective, ObjectLockEnabled, ObjectLockMode, ObjectLockRetention,
    ObjectLockRetentionMode, StorageClass,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{Capabilities, ObjectMeta, PutMode, StorageError};
use crate::config::{CredentialSource, ObjectLock, S3Target};
use crate::repo::layout::{KeyPrefix, ObjectKey};

pub(super) struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
    location: String,
    lock: Option<ObjectLock>,
    /// Whether the bucket has Object Lock enabled, asked once.
    lock_enabled: tokio::sync::OnceCell<bool>,
}

/// Objects dr writes once and may lock: data, indexes, snapshots, WAL, drill reports, audit.
/// Not prune state, the leader lease or probes, which change or go away.
fn lockable(key: &ObjectKey) -> bool {
    use crate::repo::layout::Parsed;
    matches!(
        crate::repo::layout::parse(key),
        Parsed::Pack(_) | Parsed::Index(_) | Parsed::Manifest { .. } | Parsed::Refs { .. }
    ) || ["wal/", "drills/", "audit/"]
        .iter()
        .any(|p| key.as_str().starts_with(p))
}

/// `self.client.<op>()` on this bucket and the object `key` (under the prefix): the start of
/// every per-object request.
macro_rules! object {
    ($s:expr, $op:ident, $key:expr) => {
        $s.client.$op().bucket(&$s.bucket).key($s.full($key))
    };
}

fn read_secret(
    location: &str,
    what: &str,
    r: std::io::Result<String>,
) -> Result<String, StorageError> {
    r.map(|s| s.trim().to_owned())
        .map_err(|e| StorageError::Setup {
            location: location.to_owned(),
            reason: format!("cannot read {what}: {e}"),
        })
}

impl S3Storage {
    pub(super) async fn new(t: &S3Target, location: String) -> Result<Self, StorageError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(t.region.clone()));
        let creds = match &t.credentials {
            CredentialSource::Chain => None,
            CredentialSource::Env {
                access_key_id,
                secret_access_key,
            } => {
                let get = |v: &str| {
                    std::env::var(v).map_err(|_| StorageError::Setup {
                        location: location.clone(),
                        reason: format!("environment variable {v} is not set"),
                    })
                };
                Some((get(access_key_id)?, get(secret_access_key)?))
            }
            CredentialSource::Files {
                access_key_id,
                secret_access_key,
            } => Some((
                read_secret(
                    &location,
                    &access_key_id.display().to_string(),
                    std::fs::read_to_string(access_key_id),
                )?,
                read_secret(
                    &location,
                    &secret_access_key.display().to_string(),
                    std::fs::read_to_string(secret_access_key),
                )?,
            )),
        };
        if let Some((ak, sk)) = creds {
            loader = loader.credentials_provider(Credentials::new(ak, sk, None, None, "dr-config"));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(t.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .operation_attempt_timeout(t.timeout)
                    .build(),
            );
        if let Some(ep) = &t.endpoint {
            conf = conf.endpoint_url(ep);
        }
        Ok(Self {
            client: Client::from_conf(conf.build()),
            bucket: t.bucket.clone(),
            prefix: t.prefix.clone(),
            location,
            lock: t.lock,
            lock_enabled: tokio::sync::OnceCell::new(),
        })
    }

    /// Reads a response body to the end; a body cut short is retryable.
    async fn collect(&self, key: &ObjectKey, body: ByteStream) -> Result<Bytes, StorageError> {
        body.collect()
            .await
            .map(aws_sdk_s3::primitives::AggregatedBytes::into_bytes)
            .map_err(|e| StorageError::Remote {
                op: "get",
                key: key.to_string(),
                location: self.location.clone(),
                status: None,
                code: None,
                retryable: true,
                source: Box::new(e),
            })
    }

    pub(super) fn lock(&self) -> Option<ObjectLock> {
        self.lock
    }

    /// The lock to apply to a write of `key`, if any.
    async fn lock_for(
        &self,
        key: &ObjectKey,
    ) -> Option<(ObjectLockMode, aws_smithy_types::DateTime)> {
        let lock = self.lock?;
        if !lockable(key) {
            return None;
        }
        let enabled = *self
            .lock_enabled
            .get_or_init(|| async {
                let on = self.bucket_has_object_lock().await;
                if !on {
                    tracing::warn!(location = %self.location, "lock is configured but the bucket does not have Object Lock enabled; writing without retention.");
                }
                on
            })
            .await;
        if !enabled {
            return None;
        }
        let until = Utc::now() + chrono::Duration::days(i64::from(lock.days));
        let mode = if lock.compliance {
            ObjectLockMode::Compliance
        } else {
            ObjectLockMode::Governance
        };
        Some((
            mode,
            aws_smithy_types::DateTime::from_secs(until.timestamp()),
        ))
    }

    pub(super) async fn extend_lock(
        &self,
        key: &ObjectKey,
        until: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let (Some(lock), Some((mode, _))) = (self.lock, self.lock_for(key).await) else {
            return Ok(false);
        };
        let k = key.as_str();
        let head = self
            .send("head", k, object!(self, head_object, k).send())
            .await?;
        let current = head.object_lock_retain_until_date().and_then(to_chrono);
        // Extend only when less than half the configured period is left: one request per
        // object per half period, not per retention run.
        let half = chrono::Duration::days(i64::from(lock.days)) / 2;
        if current.is_some_and(|c| c >= until - half) {
            return Ok(false);
        }
        let until = aws_smithy_types::DateTime::from_secs(until.timestamp());
        self.put_retention(key, &mode, until, "extend lock").await?;
        Ok(true)
    }

    /// Sets an object's Object Lock retention (S3 wants a checksum with lock parameters).
    async fn put_retention(
        &self,
        key: &ObjectKey,
        mode: &ObjectLockMode,
        until: aws_smithy_types::DateTime,
        op: &'static str,
    ) -> Result<(), StorageError> {
        let k = key.as_str();
        let retention = ObjectLockRetention::builder()
            .mode(ObjectLockRetentionMode::from(mode.as_str()))
            .retain_until_date(until)
            .build();
        let request = object!(self, put_object_retention, k)
            .retention(retention)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send();
        self.send(op, k, request).await.map(|_| ())
    }

    pub(super) async fn set_storage_class(
        &self,
        key: &ObjectKey,
        class: &str,
    ) -> Result<(), StorageError> {
        let k = key.as_str();
        let request = object!(self, copy_object, k)
            .copy_source(format!("{}/{}", self.bucket, self.full(k)))
            .metadata_directive(MetadataDirective::Copy)
            .storage_class(StorageClass::from(class))
            .send();
        self.send("set storage class", k, request).await?;
        // The copy is a new version: give it the lock the original had (set apart from the
        // copy, because S3 wants a checksum with lock parameters, which a copy has not).
        if let Some((mode, until)) = self.lock_for(key).await {
            self.put_retention(key, &mode, until, "lock").await?;
        }
        Ok(())
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Awaits a request, its error typed and named ([`Self::err`]).
    async fn send<T, E>(
        &self,
        op: &'static str,
        key: &str,
        request: impl std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        >,
    ) -> Result<T, StorageError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        request.await.map_err(|e| self.err(op, key, e))
    }

    fn err<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().map(str::to_owned);
        if status == Some(404) || matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) {
            return StorageError::NotFound {
                key: key.to_owned(),
                location: self.location.clone(),
            };
        }
        if status == Some(412) || code.as_deref() == Some("PreconditionFailed") {
            return StorageError::AlreadyExists {
                key: key.to_owned(),
                location: self.location.clone(),
            };
        }
        let retryable = match &e {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(_) => {
                matches!(status, Some(s) if s >= 500 || s == 429 || s == 408)
                    || matches!(
                        code.as_deref(),
                        Some("SlowDown" | "RequestTimeout" | "InternalError")
                    )
            }
            _ => false,
        };
        StorageError::Remote {
            op,
            key: key.to_owned(),
            location: self.location.clone(),
            status,
            code,
            retryable,
            source: Box::new(e),
        }
    }

    pub(super) async fn get(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, StorageError> {
        let k = key.as_str();
        let bytes_range = range
            .as_ref()
            .map(|r| format!("bytes={}-{}", r.start, r.end.saturating_sub(1)));
        let request = object!(self, get_object, k).set_range(bytes_range).send();
        let resp = self.send("get", k, request).await?;
        let expected = match &range {
            Some(r) => r.end - r.start,
            None => resp
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
        };
        let bytes = self.collect(key, resp.body).await?;
        if bytes.len() as u64 != expected {
            return Err(StorageError::Truncated {
                key: key.to_string(),
                location: self.location.clone(),
                expected,
                got: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    pub(super) async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let k = key.as_str();
        match self
            .send("head", k, object!(self, head_object, k).send())
            .await
        {
            Ok(r) => Ok(Some(ObjectMeta {
                key: key.clone(),
                size: r
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                modified: r.last_modified().and_then(to_chrono),
                storage_class: r.storage_class().map(|c| c.as_str().to_owned()),
            })),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn list(&self, prefix: &KeyPrefix) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full(prefix.as_str()))
                .set_continuation_token(token)
                .send();
            let resp = self.send("list", prefix.as_str(), request).await?;
            for o in resp.contents() {
                let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: ObjectKey::from_listed(k.to_owned()),
                    size: o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    modified: o.last_modified().and_then(to_chrono),
                    storage_class: o.storage_class().map(|c| c.as_str().to_owned()),
                });
            }
            match (resp.is_truncated(), resp.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    pub(super) async fn put(
        &self,
        key: &ObjectKey,
        body: Bytes,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        self.put_body(key, ByteStream::from(body), mode).await
    }

    /// As `put`, the body streamed from a file (a spooled pack).
    pub(super) async fn put_file(
        &self,
        key: &ObjectKey,
        path: &std::path::Path,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StorageError::Io {
                op: "put",
                key: key.to_string(),
                location: self.location.clone(),
                source: std::io::Error::other(e),
            })?;
        self.put_body(key, body, mode).await
    }

    async fn put_body(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        if mode == PutMode::CreateOnly && self.head(key).await?.is_some() {
            // Stores that ignore If-None-Match (Garage) would overwrite silently: look first.
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
                location: self.location.clone(),
            });
        }
        let k = key.as_str();
        let mut req = object!(self, put_object, k).body(body);
        if mode == PutMode::CreateOnly {
            req = req.if_none_match("*");
        }
        if let Some((mode, until)) = self.lock_for(key).await {
            // S3 wants a checksum on writes with Object Lock parameters.
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until)
                .checksum_algorithm(ChecksumAlgorithm::Crc32);
        }
        self.send("put", k, req.send()).await.map(|_| ())
    }

    pub(super) async fn get_tagged(
        &self,
        key: &ObjectKey,
    ) -> Result<(Bytes, String), StorageError> {
        let k = key.as_str();
        let resp = self
            .send("get", k, object!(self, get_object, k).send())
            .await?;
        let tag = resp.e_tag().unwrap_or_default().to_owned();
        Ok((self.collect(key, resp.body).await?, tag))
    }

    pub(super) async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        expected: Option<&str>,
    ) -> Result<(), StorageError> {
        let k = key.as_str();
        let req = object!(self, put_object, k).body(ByteStream::from(body));
        let req = match expected {
            None => req.if_none_match("*"),
            Some(tag) => req.if_match(tag),
        };
        self.send("put", k, req.send()).await.map(|_| ())
    }

    pub(super) async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let k = key.as_str();
        match self
            .send("delete", k, object!(self, delete_object, k).send())
            .await
        {
            Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn bucket_has_object_lock(&self) -> bool {
        self.client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
            .ok()
            .and_then(|r| {
                r.object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled().cloned())
            })
            == Some(ObjectLockEnabled::Enabled)
    }

    pub(super) async fn probe(&self) -> Result<Capabilities, StorageError> {
        let object_lock = self.bucket_has_object_lock().await;

        let key = crate::repo::layout::scratch(&format!(
            "probe-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let (k, full) = (key.as_str(), self.full(key.as_str()));
        self.put(&key, Bytes::from_static(b"probe"), PutMode::Overwrite)
            .await?;
        // Conditional writes: a second create-only PUT must be refused with 412.
        let again = object!(self, put_object, k)
            .if_none_match("*")
            .body(ByteStream::from_static(b"again"))
            .send();
        let conditional_writes = matches!(
            self.send("put", k, again).await,
            Err(StorageError::AlreadyExists { .. })
        );
        // Storage classes: what HEAD reports after a PUT with a non-default class.
        let class_key = format!("{k}-class");
        let put_class = object!(self, put_object, &class_key)
            .storage_class(StorageClass::StandardIa)
            .body(ByteStream::from_static(b"c"))
            .send();
        let storage_classes = match put_class.await {
            Ok(_) => {
                let head = object!(self, head_object, &class_key).send().await;
                let honoured = head.ok().and_then(|h| h.storage_class().cloned())
                    == Some(StorageClass::StandardIa);
                let _ = object!(self, delete_object, &class_key).send().await;
                honoured
            }
            Err(_) => false,
        };
        // Versioning: after an overwrite, a versioned bucket still holds the old version. (Asking
        // GetBucketVersioning is not enough: some stores answer in a shape the SDK rejects,
        // others send version ids without keeping versions.)
        self.put(&key, Bytes::from_static(b"again"), PutMode::Overwrite)
            .await?;
        let versions: Vec<String> = match self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(&full)
            .send()
            .await
        {
            Ok(r) => r
                .versions()
                .iter()
                .filter(|v| v.key() == Some(full.as_str()))
                .filter_map(|v| v.version_id().map(str::to_owned))
                .filter(|v| v != "null")
                .collect(),
            Err(_) => Vec::new(),
        };
        let versioning = versions.len() >= 2;
        for v in &versions {
            let _ = object!(self, delete_object, k).version_id(v).send().await;
        }
        let _ = object!(self, delete_object, k).send().await;
        Ok(Capabilities {
            versioning,
            object_lock,
            storage_classes,
            conditional_writes,
        })
    }
}

fn to_chrono(t: &aws_smithy_types::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}
