//! Single active leader: a Kubernetes Lease ([`super::kube`]) in a cluster, or elsewhere a
//! lease object in the primary bucket, taken and renewed with
//! conditional writes (`If-None-Match: *` to create, `If-Match: <etag>` to renew or take over
//! an expired one). Stores that ignore conditional writes (Garage) are refused at start-up: a
//! lease there could have two holders.
//!
//! The holder renews every `ttl / 3`. If it cannot renew before its own lease is two thirds
//! gone, it stops being leader (the daemon shuts down gracefully and exits 1, so its
//! supervisor restarts it as a follower) — before anyone else may take the lease over.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::layout::ObjectKey;
use crate::storage::{Storage, StorageError};

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    holder: String,
    renewed: DateTime<Utc>,
    expires: DateTime<Utc>,
}

/// This instance's name in a lease: host, pid and a random part (a restarted process is a new
/// holder).
pub fn holder_id() -> String {
    let host = crate::host::name().unwrap_or_default();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    )
}

/// A lease in one store.
pub struct Lease {
    storage: Storage,
    key: ObjectKey,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// The lease `leader/lease.json` in `storage`, held for `ttl` per renewal.
    pub fn new(storage: Storage, ttl: Duration) -> Self {
        Self {
            storage,
            key: ObjectKey::from_listed("leader/lease.json".to_owned()),
            holder: holder_id(),
            ttl,
        }
    }

    /// This instance's name in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Renewal period.
    pub fn period(&self) -> Duration {
        self.ttl / 3
    }

    /// Takes or renews the lease; `Ok(true)` when this instance holds it afterwards.
    ///
    /// # Errors
    /// Storage errors other than a lost race.
    pub async fn try_acquire(&self) -> Result<bool, StorageError> {
        let now = Utc::now();
        let rec = Record {
            holder: self.holder.clone(),
            renewed: now,
            expires: now + chrono::Duration::from_std(self.ttl).unwrap_or_default(),
        };
        let body = Bytes::from(serde_json::to_vec(&rec).expect("lease serializes"));
        let expected = match self.storage.get_tagged(&self.key).await? {
            None => None,
            Some((bytes, tag)) => {
                let current: Option<Record> = serde_json::from_slice(&bytes).ok();
                let ours_or_free = current
                    .as_ref()
                    .is_none_or(|c| c.holder == self.holder || c.expires < now);
                if !ours_or_free {
                    return Ok(false);
                }
                Some(tag)
            }
        };
        match self
            .storage
            .put_if(&self.key, body, expected.as_deref())
            .await
        {
            Ok(()) => Ok(true),
            Err(StorageError::AlreadyExists { .. } | StorageError::Changed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Who holds it now, if anyone (for logs and status).
    pub async fn current_holder(&self) -> Option<String> {
        let (bytes, _) = self.storage.get_tagged(&self.key).await.ok()??;
        let r: Record = serde_json::from_slice(&bytes).ok()?;
        (r.expires > Utc::now()).then_some(r.holder)
    }

    /// Gives the lease up (expires it now) if this instance holds it, so a follower takes over
    /// at once instead of after the TTL.
    pub async fn release(&self) {
        let Ok(Some((bytes, tag))) = self.storage.get_tagged(&self.key).await else {
            return;
        };
        let ours = serde_json::from_slice::<Record>(&bytes).is_ok_and(|r| r.holder == self.holder);
        if ours {
            let now = Utc::now();
            let rec = Record {
                holder: self.holder.clone(),
                renewed: now,
                expires: now,
            };
            let body = Bytes::from(serde_json::to_vec(&rec).expect("lease serializes"));
            let _ = self.storage.put_if(&self.key, body, Some(&tag)).await;
        }
    }
}

/// A lease that cannot be read or written (a lost race is `Ok(false)`, not an error).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The bucket holding it.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// The Kubernetes API server.
    #[error(transparent)]
    Kube(#[from] super::kube::KubeError),
}

/// The lease this instance competes for.
pub enum Leader {
    /// A lease object in the bucket.
    Bucket(Lease),
    /// A Kubernetes Lease.
    Kube {
        /// The Lease.
        lease: super::kube::KubeLease,
        /// This instance.
        holder: String,
        /// Lease duration.
        ttl: Duration,
    },
}

impl Leader {
    /// This instance's name in the lease.
    pub fn holder(&self) -> &str {
        match self {
            Self::Bucket(l) => l.holder(),
            Self::Kube { holder, .. } => holder,
        }
    }

    /// Renewal period.
    pub fn period(&self) -> Duration {
        match self {
            Self::Bucket(l) => l.period(),
            Self::Kube { ttl, .. } => *ttl / 3,
        }
    }

    /// Takes or renews; `Ok(true)` when this instance holds it afterwards.
    ///
    /// # Errors
    /// The store or API server fails (not a lost race).
    pub async fn try_acquire(&self) -> Result<bool, LeaseError> {
        Ok(match self {
            Self::Bucket(l) => l.try_acquire().await?,
            Self::Kube { lease, holder, ttl } => lease.try_acquire(holder, *ttl).await?,
        })
    }

    /// Gives it up if held.
    pub async fn release(&self) {
        match self {
            Self::Bucket(l) => l.release().await,
            Self::Kube { lease, holder, .. } => lease.release(holder).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_after_expiry() {
        let s = Storage::memory();
        let a = Lease::new(s.clone(), Duration::from_millis(300));
        let b = Lease::new(s.clone(), Duration::from_millis(300));
        assert!(a.try_acquire().await.unwrap());
        assert!(!b.try_acquire().await.unwrap());
        assert!(a.try_acquire().await.unwrap(), "the holder renews");
        assert_eq!(b.current_holder().await.as_deref(), Some(a.holder()));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(
            b.try_acquire().await.unwrap(),
            "an expired lease is taken over"
        );
        assert!(!a.try_acquire().await.unwrap(), "the old holder lost it");
        b.release().await;
        assert!(
            a.try_acquire().await.unwrap(),
            "a released lease is free at once"
        );
    }
}
