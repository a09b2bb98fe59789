//! Qdrant: the collection snapshots of a backup into a staging directory and, when asked,
//! uploaded to a server or a distributed cluster (each shard to a peer that hosts it) after
//! checking its version, each collection's point count checked against the backup's.

use std::path::Path;
use std::time::Duration;

use super::{Job, RestoreError};
use crate::config::{QdrantSpec, SecretRef};
use crate::repo::manifest::ManifestHead;
use crate::source::qdrant::load::{Target, compatible, restore_collection};
use crate::source::qdrant::{Client, QdrantFacts, valid_collection_name};

/// Where to upload restored collections.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The server's REST URL.
    pub url: String,
    /// Environment variable with its API key (default: the policy's key).
    pub api_key_env: Option<String>,
    /// Other peers of a distributed deployment (default: the policy's `peers` when `url` is
    /// the policy's server or one of its peers).
    pub peers: Vec<String>,
    /// Only this collection.
    pub collection: Option<String>,
    /// Under this name (with `collection`).
    pub rename_to: Option<String>,
}

/// A Qdrant snapshot restored.
#[derive(Debug)]
pub struct Restored {
    /// The `.snapshot` files and manifest.
    pub files: super::files::Restored,
    /// The directory the `.snapshot` files are in.
    pub dir: std::path::PathBuf,
    /// With an [`Upload`]: the server and what went there.
    pub uploaded: Option<(String, Uploaded)>,
}

/// What an upload did per collection: (collection, restored as, points).
pub type Uploaded = Vec<(String, String, u64)>;

/// Restores the request's snapshot and uploads it when the request says so.
///
/// # Errors
/// Restore failures, an unreadable API key, and what [`upload`] refuses.
pub async fn restore(job: &Job<'_>, spec: &QdrantSpec) -> Result<Restored, RestoreError> {
    let req = job.req;
    let files = super::files::restore(job).await?;
    let uploaded = match &req.options.qdrant_upload {
        Some(u) => {
            let into = target(spec, u)?;
            let done = upload(
                &into,
                &files.manifest,
                req.target_dir,
                u.collection.as_deref(),
                u.rename_to.as_deref(),
            )
            .await?;
            Some((into.entry.url().to_owned(), done))
        }
        None => None,
    };
    Ok(Restored {
        files,
        uploaded,
        dir: req.target_dir.to_owned(),
    })
}

/// The server (and peers) an upload goes to.
fn target(spec: &QdrantSpec, u: &Upload) -> Result<Target, RestoreError> {
    let key = match &u.api_key_env {
        Some(v) => Some(SecretRef::Env(v.clone())),
        None => spec.api_key.clone(),
    };
    let key = key
        .map(|k| k.read().map_err(|e| RestoreError::usage(e.to_string())))
        .transpose()?;
    let url = u.url.trim_end_matches('/');
    let same_cluster = url == spec.url || spec.peers.iter().any(|p| p == url);
    let peers = if u.peers.is_empty() && same_cluster {
        &spec.peers
    } else {
        &u.peers
    };
    let client = |u: &str| Client::new(u, key.clone(), Duration::from_secs(3600));
    Ok(Target {
        entry: client(url)?,
        peers: peers
            .iter()
            .filter(|p| p.trim_end_matches('/') != url)
            .map(|p| client(p))
            .collect::<Result<_, _>>()?,
    })
}

/// The facts recorded in a Qdrant snapshot's manifest.
///
/// # Errors
/// The manifest lacks them (not a Qdrant snapshot).
pub fn facts(manifest: &ManifestHead) -> Result<QdrantFacts, RestoreError> {
    Ok(QdrantFacts::of(
        &manifest.snapshot.to_string(),
        &manifest.source.facts,
    )?)
}

/// Uploads the restored `.snapshot` files in `dir` to the target server or cluster (after
/// checking its version), each as `rename_to` or its own name, and checks each point count.
///
/// # Errors
/// Version mismatch, unknown collection, upload, layout or count failures.
pub async fn upload(
    target: &Target,
    manifest: &ManifestHead,
    dir: &Path,
    collection: Option<&str>,
    rename_to: Option<&str>,
) -> Result<Uploaded, RestoreError> {
    let QdrantFacts {
        qdrant_version: version,
        collections: facts,
        ..
    } = facts(manifest)?;
    let server = target.entry.version().await?;
    compatible(&version, &server)
        .map_err(|e| RestoreError::usage(format!("{}: {e}", target.entry.url())))?;
    let selected: Vec<_> = facts
        .iter()
        .filter(|f| collection.is_none_or(|c| c == f.name))
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = facts.iter().map(|f| f.name.as_str()).collect();
        return Err(RestoreError::usage(format!(
            "snapshot {} has no collection `{}` (it has: {})",
            manifest.snapshot,
            collection.unwrap_or_default(),
            names.join(", ")
        )));
    }
    let mut out = Vec::new();
    for f in selected {
        let name = rename_to.unwrap_or(&f.name).to_owned();
        if !valid_collection_name(&name) {
            return Err(crate::pipeline::PipelineError::HostileEntry {
                snapshot: manifest.snapshot.to_string(),
                name: name.escape_debug().to_string(),
                reason: "is not a usable collection name".to_owned(),
            }
            .into());
        }
        let n = restore_collection(target, dir, &name, f).await?;
        out.push((f.name.clone(), name, n));
    }
    Ok(out)
}
