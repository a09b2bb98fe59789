//! Restoring Qdrant collection snapshots: version compatibility, upload with
//! `priority=snapshot` (the default priority recovers an *empty* collection when it already
//! exists) and the server checking our checksum, then the point count against the manifest.

use std::path::Path;

use super::{Client, CollectionFacts, Sample, unusable};
use crate::source::SourceError;

fn minor(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A snapshot from Qdrant `snapshot` restores into a server of version `server` only when
/// the server is the same minor version or one newer.
///
/// # Errors
/// A message saying which versions differ and how.
pub fn compatible(snapshot: &str, server: &str) -> Result<(), String> {
    let (Some(s), Some(v)) = (minor(snapshot), minor(server)) else {
        return Err(format!(
            "cannot compare Qdrant versions `{snapshot}` (snapshot) and `{server}` (server)"
        ));
    };
    if v.0 != s.0 || v.1 < s.1 {
        return Err(format!(
            "the snapshot is from Qdrant {snapshot}; the server runs {server}, which is older: restore into a server of {}.{} or {}.{}",
            s.0,
            s.1,
            s.0,
            s.1 + 1
        ));
    }
    if v.1 > s.1 + 1 {
        return Err(format!(
            "the snapshot is from Qdrant {snapshot}; the server runs {server}, more than one minor version newer (Qdrant supports upgrading one minor version at a time): restore into {}.{} or {}.{} first",
            s.0,
            s.1,
            s.0,
            s.1 + 1
        ));
    }
    Ok(())
}

/// Uploads `file` as collection `target` and checks the point count against `facts`.
///
/// # Errors
/// Upload refused (bad checksum, server error) or a different point count.
pub async fn restore_collection(
    client: &Client,
    file: &Path,
    target: &str,
    facts: &CollectionFacts,
) -> Result<u64, SourceError> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| SourceError::Read {
            path: file.display().to_string(),
            source: e,
        })?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
    let part = reqwest::multipart::Part::stream_with_length(body, len)
        .file_name(format!("{}.snapshot", facts.name));
    let form = reqwest::multipart::Form::new().part("snapshot", part);
    client
        .call(
            &format!("upload of the snapshot of {} as {target}", facts.name),
            client
                .req(
                    reqwest::Method::POST,
                    &format!(
                        "/collections/{target}/snapshots/upload?wait=true&priority=snapshot&checksum={}",
                        facts.checksum
                    ),
                )
                .multipart(form),
        )
        .await?;
    let count = client.count(target).await?;
    if count != facts.points {
        return Err(unusable(
            "restore",
            format!(
                "collection {target} holds {count} points after the upload, the snapshot recorded {}",
                facts.points
            ),
        ));
    }
    Ok(count)
}

/// Runs the recorded searches against `target`: `(passed, detail)` per sample.
pub async fn check_samples(
    client: &Client,
    target: &str,
    samples: &[Sample],
) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for s in samples {
        match client
            .search(target, &s.vector, s.using.as_deref(), s.top.len().max(1))
            .await
        {
            Ok((top, _)) => out.push((
                top == s.top,
                format!(
                    "top ids {} (recorded {})",
                    serde_json::json!(top),
                    serde_json::json!(s.top)
                ),
            )),
            Err(e) => out.push((false, e.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rules() {
        compatible("1.19.0", "1.19.3").unwrap();
        compatible("1.19.0", "1.20.0").unwrap();
        assert!(
            compatible("1.19.0", "1.18.9")
                .unwrap_err()
                .contains("older")
        );
        assert!(
            compatible("1.19.0", "1.21.0")
                .unwrap_err()
                .contains("more than one minor")
        );
        assert!(compatible("1.19.0", "2.0.0").is_err());
        assert!(compatible("x", "1.0.0").is_err());
    }
}
