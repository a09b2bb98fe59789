//! An in-memory store for unit tests and the conformance suite.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use super::{ObjectMeta, PutMode, StorageError};
use crate::repo::layout::{KeyPrefix, ObjectKey};

#[derive(Default)]
pub(super) struct MemoryStorage {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStorage {
    pub(super) fn get(
        &self,
        location: &str,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, StorageError> {
        let map = self.objects.lock().expect("memory store lock");
        let b = map
            .get(key.as_str())
            .ok_or_else(|| StorageError::NotFound {
                key: key.to_string(),
                location: location.to_owned(),
            })?;
        match range {
            None => Ok(b.clone()),
            Some(r) if r.end as usize <= b.len() => Ok(b.slice(r.start as usize..r.end as usize)),
            Some(r) => Err(StorageError::Truncated {
                key: key.to_string(),
                location: location.to_owned(),
                expected: r.end - r.start,
                got: (b.len() as u64).saturating_sub(r.start),
            }),
        }
    }

    pub(super) fn head(&self, key: &ObjectKey) -> Option<ObjectMeta> {
        let map = self.objects.lock().expect("memory store lock");
        map.get(key.as_str()).map(|b| ObjectMeta {
            key: key.clone(),
            size: b.len() as u64,
            modified: None,
            storage_class: None,
        })
    }

    pub(super) fn list(&self, prefix: &KeyPrefix) -> Vec<ObjectMeta> {
        let map = self.objects.lock().expect("memory store lock");
        map.range(prefix.as_str().to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix.as_str()))
            .map(|(k, b)| ObjectMeta {
                key: ObjectKey::from_listed(k.clone()),
                size: b.len() as u64,
                modified: None,
                storage_class: None,
            })
            .collect()
    }

    pub(super) fn put(
        &self,
        location: &str,
        key: &ObjectKey,
        body: Bytes,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let mut map = self.objects.lock().expect("memory store lock");
        if mode == PutMode::CreateOnly && map.contains_key(key.as_str()) {
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
                location: location.to_owned(),
            });
        }
        map.insert(key.to_string(), body);
        Ok(())
    }

    pub(super) fn put_if(
        &self,
        location: &str,
        key: &ObjectKey,
        body: Bytes,
        expected: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut map = self.objects.lock().expect("memory store lock");
        let current = map
            .get(key.as_str())
            .map(|b| blake3::hash(b).to_hex().to_string());
        if current.as_deref() != expected {
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
                location: location.to_owned(),
            });
        }
        map.insert(key.to_string(), body);
        Ok(())
    }

    pub(super) fn delete(&self, key: &ObjectKey) {
        self.objects
            .lock()
            .expect("memory store lock")
            .remove(key.as_str());
    }
}
