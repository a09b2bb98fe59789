//! WAL archive objects: one per segment or history file, compressed and sealed like a
//! one-chunk pack, behind a MAC'd header that writers can read.
//!
//! ```text
//! object = "DRWAL\0\0\x01" u32le(len(header)) header pack
//! header = mac::seal("wal", {"name", "id", "size", "pushed_at", ["pad_to"]})   (id = keyed chunk id)
//! ```
//!
//! The header lets `wal-push` answer "is what is archived under this name the same segment?"
//! without the restore identity: the same segment twice succeeds, a different one under the
//! same name is refused. Success is reported only after the store acknowledged the write.
//!
//! A WAL stream (`ops::wal_stream`) also stores the segment it is receiving, as far as it got,
//! as `wal-stream/<policy>/<segment>.<len>.partial` (header name `<segment>.partial`, `pad_to`
//! the segment size): [`download`] falls back to the longest of them when the segment itself
//! is not archived, and [`open`] pads it with zeros to a whole segment, as PostgreSQL expects
//! (replay stops where the received WAL ends).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{PipelineError, Repository};
use crate::repo::RepoError;
use crate::repo::ids::ChunkId;
use crate::repo::keys::{Identity, Recipients};
use crate::repo::layout;
use crate::repo::layout::ObjectKey;
use crate::repo::mac;
use crate::repo::pack::{PackKey, PackWriter, parse_pack};
use crate::storage::{ObjectMeta, PutMode, StorageError};

const MAGIC: &[u8; 8] = b"DRWAL\x00\x00\x01";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    id: ChunkId,
    size: u64,
    pushed_at: DateTime<Utc>,
    /// A streamed partial segment: zeros up to this size follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pad_to: Option<u64>,
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Newly stored.
    Stored,
    /// The identical file was already archived.
    AlreadyArchived,
}

/// WAL-specific failures.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A different file is archived under the same name.
    #[error(
        "a different {name} is already archived in {location} (pushed {pushed_at}); refusing to overwrite it. Two clusters archiving into one policy, or a restored cluster still archiving here?"
    )]
    Conflict {
        /// File name.
        name: String,
        location: String,
        /// When the archived one was pushed.
        pushed_at: DateTime<Utc>,
    },
    /// Not in the archive.
    #[error("{name} is not in the WAL archive of policy {policy} at {location}")]
    NotFound {
        /// File name.
        name: String,
        policy: String,
        location: String,
    },
    /// Anything else.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl From<StorageError> for WalError {
    fn from(e: StorageError) -> Self {
        Self::Pipeline(e.into())
    }
}

impl From<RepoError> for WalError {
    fn from(e: RepoError) -> Self {
        Self::Pipeline(e.into())
    }
}

/// Splits an object into its authenticated header and pack part.
fn open_header<'a>(
    repo: &Repository,
    object: &str,
    name: &str,
    bytes: &'a [u8],
) -> Result<(Header, &'a [u8]), RepoError> {
    let corrupt = |reason: &str| RepoError::Corrupt {
        object: object.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a dr WAL object"));
    }
    let n = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[12..];
    if rest.len() < n {
        return Err(corrupt("truncated header"));
    }
    let body = mac::open(&repo.ids, "wal", &repo.meta.repo_id, object, &rest[..n])?;
    let h: Header = serde_json::from_slice(body).map_err(|e| corrupt(&e.to_string()))?;
    if h.name != name {
        return Err(corrupt(&format!("holds {}, not {name}", h.name)));
    }
    Ok((h, &rest[n..]))
}

/// Archives one WAL file (what `archive_command` runs).
///
/// # Errors
/// `Conflict` when a different file has that name; storage errors otherwise.
pub async fn push(
    repo: &Repository,
    recipients: &Recipients,
    policy: &str,
    name: &str,
    data: Vec<u8>,
    level: i32,
) -> Result<PushOutcome, WalError> {
    let key = layout::wal(policy, name);
    let (id, object) = seal(repo, recipients, name.to_owned(), data, level, None).await?;
    match repo
        .storage
        .put(&key, Bytes::from(object), PutMode::CreateOnly)
        .await
    {
        Ok(()) => Ok(PushOutcome::Stored),
        Err(StorageError::AlreadyExists { .. }) => {
            let existing = repo.storage.get(&key, None).await?;
            let (h, _) = open_header(
                repo,
                &format!("{key} in {}", repo.storage.location()),
                name,
                &existing,
            )?;
            if h.id == id {
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(WalError::Conflict {
                    name: name.to_owned(),
                    location: repo.storage.location().to_owned(),
                    pushed_at: h.pushed_at,
                })
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Compresses, encrypts and frames `data` as the WAL object `name`, off the runtime.
async fn seal(
    repo: &Repository,
    recipients: &Recipients,
    name: String,
    data: Vec<u8>,
    level: i32,
    pad_to: Option<u64>,
) -> Result<(ChunkId, Vec<u8>), WalError> {
    let keys = RepoRef {
        ids: repo.ids.clone(),
        repo_id: repo.meta.repo_id.clone(),
    };
    let recipients = recipients.clone();
    Ok(
        tokio::task::spawn_blocking(move || keys.seal(&recipients, &name, &data, level, pad_to))
            .await
            .map_err(|e| PipelineError::Internal(e.to_string()))??,
    )
}

/// The keys `seal` needs, detached from the repository so it can move to a blocking thread.
struct RepoRef {
    ids: crate::repo::keys::ChunkIdKey,
    repo_id: String,
}

impl RepoRef {
    fn seal(
        &self,
        recipients: &Recipients,
        name: &str,
        data: &[u8],
        level: i32,
        pad_to: Option<u64>,
    ) -> Result<(ChunkId, Vec<u8>), RepoError> {
        let id = self.ids.chunk_id(data);
        let mut w = PackWriter::new(data.len() + 4096);
        let mut z =
            zstd::bulk::Compressor::new(level).map_err(|e| RepoError::Encrypt(e.to_string()))?;
        w.add(id, data, &mut z)?;
        let pack = w.finish(recipients)?;
        let header = serde_json::to_vec(&Header {
            name: name.to_owned(),
            id,
            size: data.len() as u64,
            pushed_at: Utc::now(),
            pad_to,
        })
        .expect("header serializes");
        let header = mac::seal(&self.ids, "wal", &self.repo_id, &header);
        let mut out = Vec::with_capacity(12 + header.len() + pack.bytes.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(
            &u32::try_from(header.len())
                .expect("small header")
                .to_le_bytes(),
        );
        out.extend_from_slice(&header);
        out.extend_from_slice(&pack.bytes);
        Ok((id, out))
    }
}

/// One downloaded WAL object, not yet opened.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its key.
    pub key: ObjectKey,
    /// The name its header must carry (`<segment>.partial` for a streamed one).
    pub name: String,
    /// The object.
    pub bytes: Bytes,
}

/// Downloads the archived `name` without opening it; for a segment that is not archived,
/// the longest partial a WAL stream stored of it.
///
/// # Errors
/// `NotFound` when neither is there.
pub async fn download(repo: &Repository, policy: &str, name: &str) -> Result<Fetched, WalError> {
    let key = layout::wal(policy, name);
    match repo.storage.get(&key, None).await {
        Ok(bytes) => {
            return Ok(Fetched {
                key,
                name: name.to_owned(),
                bytes,
            });
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    // Only segments are streamed, not history or backup files.
    let longest = match name.len() {
        24 => list_partials(repo, policy)
            .await?
            .into_iter()
            .filter(|p| p.segment == name)
            .max_by_key(|p| p.len),
        _ => None,
    };
    let not_found = || WalError::NotFound {
        name: name.to_owned(),
        policy: policy.to_owned(),
        location: repo.storage.location().to_owned(),
    };
    let Some(p) = longest else {
        return Err(not_found());
    };
    match repo.storage.get(&p.meta.key, None).await {
        Ok(bytes) => Ok(Fetched {
            key: p.meta.key,
            name: format!("{name}.partial"),
            bytes,
        }),
        // Replaced by a longer one meanwhile: that one is fetched on the next request.
        Err(e) if e.is_not_found() => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// Authenticates, decrypts and checks a downloaded WAL object (a streamed partial padded to
/// its segment size).
///
/// # Errors
/// `RepoError` naming the object when anything does not match.
pub fn open(repo: &Repository, identity: &Identity, f: &Fetched) -> Result<Vec<u8>, RepoError> {
    let object = format!("{} in {}", f.key, repo.storage.location());
    let (h, pack) = open_header(repo, &object, &f.name, &f.bytes)?;
    let pack_id = crate::repo::ids::PackId(*blake3::hash(pack).as_bytes());
    let (_, wrapped) = parse_pack(&pack_id, pack)?;
    let key = PackKey::unwrap(identity, &pack_id, &wrapped)?;
    let sealed = &pack[crate::repo::pack::PACK_MAGIC.len()..pack.len() - 12 - wrapped.len()];
    let entry = crate::repo::pack::BlobEntry {
        id: h.id,
        offset: 8,
        len: u32::try_from(sealed.len()).unwrap_or(u32::MAX),
        raw_len: u32::try_from(h.size).unwrap_or(u32::MAX),
        inner: None,
    };
    let mut z = zstd::bulk::Decompressor::new().map_err(|e| RepoError::Corrupt {
        object: object.clone(),
        reason: e.to_string(),
    })?;
    let mut data = key
        .open(&repo.ids, &pack_id, &entry, sealed, &mut z)
        .map_err(|e| match e {
            RepoError::Corrupt { reason, .. } => RepoError::Corrupt {
                object: object.clone(),
                reason,
            },
            other => other,
        })?;
    if let Some(size) = h.pad_to {
        // A writer's claim: bounded by the largest segment size PostgreSQL allows.
        if size > 1 << 30 || size < data.len() as u64 {
            return Err(RepoError::Corrupt {
                object,
                reason: format!("pads {} bytes to {size}", data.len()),
            });
        }
        data.resize(usize::try_from(size).unwrap_or(0), 0);
    }
    Ok(data)
}

/// A partial segment a WAL stream stored.
#[derive(Debug, Clone)]
pub struct Partial {
    /// The segment's name.
    pub segment: String,
    /// Bytes of it received.
    pub len: u64,
    /// The object.
    pub meta: ObjectMeta,
}

/// Every partial segment WAL streams stored for `policy`.
///
/// # Errors
/// Storage errors.
pub async fn list_partials(repo: &Repository, policy: &str) -> Result<Vec<Partial>, PipelineError> {
    Ok(repo
        .storage
        .list(&layout::wal_stream_prefix(policy))
        .await?
        .into_iter()
        .filter_map(|meta| {
            let file = meta.key.as_str().rsplit('/').next()?;
            let (segment, len) = layout::parse_wal_stream(file)?;
            crate::source::postgres::lsn::is_wal_file_name(segment).then(|| Partial {
                segment: segment.to_owned(),
                len,
                meta: meta.clone(),
            })
        })
        .collect())
}

/// Stores the first `data.len()` bytes of `segment` (of `seg_size`) received by a WAL stream.
/// Storing the same length again is a no-op.
///
/// # Errors
/// Storage errors.
pub async fn push_partial(
    repo: &Repository,
    recipients: &Recipients,
    policy: &str,
    segment: &str,
    data: Vec<u8>,
    seg_size: u64,
    level: i32,
) -> Result<ObjectKey, WalError> {
    let key = layout::wal_stream(policy, segment, data.len() as u64);
    let name = format!("{segment}.partial");
    let (_, object) = seal(repo, recipients, name, data, level, Some(seg_size)).await?;
    match repo
        .storage
        .put(&key, Bytes::from(object), PutMode::CreateOnly)
        .await
    {
        Ok(()) | Err(StorageError::AlreadyExists { .. }) => Ok(key),
        Err(e) => Err(e.into()),
    }
}

/// Every archived WAL object of a policy, by file name.
///
/// # Errors
/// Storage errors.
pub async fn list(
    repo: &Repository,
    policy: &str,
) -> Result<Vec<(String, ObjectMeta)>, PipelineError> {
    Ok(repo
        .storage
        .list(&layout::wal_prefix(policy))
        .await?
        .into_iter()
        .filter_map(|m| {
            let name = m.key.as_str().rsplit('/').next()?.to_owned();
            crate::source::postgres::lsn::is_wal_file_name(&name).then_some((name, m))
        })
        .collect())
}

/// The newest segment (not history, partial or backup file) of a [`list`].
pub fn newest_segment(list: &[(String, ObjectMeta)]) -> Option<&(String, ObjectMeta)> {
    list.iter()
        .filter(|(n, _)| n.len() == 24)
        .max_by(|a, b| a.0.cmp(&b.0))
}

/// When the newest archived WAL object of a policy (a streamed partial segment included)
/// reached the repository, if any.
///
/// # Errors
/// Storage errors.
pub async fn newest_archived_at(
    repo: &Repository,
    policy: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, PipelineError> {
    let partials = list_partials(repo, policy).await?;
    Ok(list(repo, policy)
        .await?
        .iter()
        .map(|(_, m)| m)
        .chain(partials.iter().map(|p| &p.meta))
        .filter_map(|m| m.modified)
        .max())
}
