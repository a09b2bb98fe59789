//! One behaviour suite for every backend (like Garage's `db/test.rs`): unit tests run it on
//! memory and local storage, the integration tests on Garage and moto.

use bytes::Bytes;

use super::{PutMode, Storage, StorageError};
use crate::repo::layout::{scratch, scratch_prefix};

/// Runs every check; panics with a message naming the backend on the first failure.
///
/// # Panics
/// When the backend does not behave as the rest of `dr` assumes.
pub async fn run(s: &Storage) {
    let loc = s.location().to_owned();
    let run = hex::encode(rand::random::<[u8; 4]>());
    let a = scratch(&format!("{run}/a"));
    let b = scratch(&format!("{run}/sub/b"));

    assert!(
        s.head(&a).await.unwrap().is_none(),
        "{loc}: head of a missing object"
    );
    let e = s.get(&a, None).await.unwrap_err();
    assert!(
        e.is_not_found(),
        "{loc}: get of a missing object gave {e:?}"
    );
    assert!(!e.is_retryable());

    let body = Bytes::from(
        (0..100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    s.put(&a, body.clone(), PutMode::CreateOnly).await.unwrap();
    assert_eq!(s.get(&a, None).await.unwrap(), body, "{loc}: full read");
    assert_eq!(
        s.get(&a, Some(10..20)).await.unwrap(),
        body.slice(10..20),
        "{loc}: ranged read"
    );
    assert_eq!(
        s.get(&a, Some(99_990..100_000)).await.unwrap(),
        body.slice(99_990..),
        "{loc}: ranged read at the end"
    );
    assert_eq!(
        s.head(&a).await.unwrap().unwrap().size,
        100_000,
        "{loc}: head size"
    );

    let e = s
        .put(&a, Bytes::from_static(b"other"), PutMode::CreateOnly)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::AlreadyExists { .. }),
        "{loc}: create-only over an existing object gave {e:?}"
    );
    assert_eq!(
        s.get(&a, None).await.unwrap(),
        body,
        "{loc}: a refused create-only write changed the object"
    );

    s.put(&b, Bytes::from_static(b"one"), PutMode::Overwrite)
        .await
        .unwrap();
    s.put(&b, Bytes::from_static(b"two"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(
        &s.get(&b, None).await.unwrap()[..],
        b"two",
        "{loc}: overwrite"
    );
    s.put(
        &scratch(&format!("{run}/empty")),
        Bytes::new(),
        PutMode::CreateOnly,
    )
    .await
    .unwrap();
    assert_eq!(
        s.get(&scratch(&format!("{run}/empty")), None)
            .await
            .unwrap()
            .len(),
        0,
        "{loc}: empty object"
    );

    let listed: Vec<String> = s
        .list(&scratch_prefix())
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.key.as_str().contains(&run))
        .map(|m| m.key.to_string())
        .collect();
    assert_eq!(
        listed,
        vec![a.to_string(), format!("scratch/{run}/empty"), b.to_string()],
        "{loc}: list is recursive and sorted"
    );

    let e = s.get(&a, Some(99_000..200_000)).await.unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::Truncated { .. }
                | StorageError::Remote {
                    status: Some(416),
                    ..
                }
        ),
        "{loc}: range past the end gave {e:?}"
    );

    for k in [&a, &b, &scratch(&format!("{run}/empty"))] {
        s.delete(k).await.unwrap();
        assert!(
            s.head(k).await.unwrap().is_none(),
            "{loc}: deleted object still there"
        );
    }
    s.delete(&a).await.unwrap();
    if s.probe().await.unwrap().conditional_writes {
        compare_and_swap(s, &scratch(&format!("{run}/lease"))).await;
    }
}

/// `get_tagged` + `put_if`, which the leader lease relies on.
async fn compare_and_swap(s: &Storage, k: &crate::repo::layout::ObjectKey) {
    let loc = s.location().to_owned();
    assert!(s.get_tagged(k).await.unwrap().is_none());
    s.put_if(k, Bytes::from_static(b"one"), None).await.unwrap();
    let e = s
        .put_if(k, Bytes::from_static(b"two"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::AlreadyExists { .. }),
        "{loc}: create over an existing object gave {e:?}"
    );
    let (body, tag) = s.get_tagged(k).await.unwrap().unwrap();
    assert_eq!(&body[..], b"one");
    s.put_if(k, Bytes::from_static(b"two"), Some(&tag))
        .await
        .unwrap();
    let e = s
        .put_if(k, Bytes::from_static(b"three"), Some(&tag))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::Changed { .. }),
        "{loc}: a stale tag gave {e:?}"
    );
    let (body, _) = s.get_tagged(k).await.unwrap().unwrap();
    assert_eq!(&body[..], b"two", "{loc}: a failed swap changed the object");
    s.delete(k).await.unwrap();
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_backend_conforms() {
        super::run(&super::Storage::memory()).await;
    }

    #[tokio::test]
    async fn local_backend_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let s = super::Storage::open(
            "t",
            &crate::config::StorageTarget::Local {
                path: dir.path().to_path_buf(),
            },
        )
        .await
        .unwrap();
        super::run(&s).await;
    }
}
