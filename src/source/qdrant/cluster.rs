//! Distributed Qdrant: shard layouts, which peer each shard is snapshotted on, and how a
//! collection is re-created before its shards are uploaded.
//!
//! A collection snapshot holds only the shards of the peer that made it, so in a deployment of
//! several peers dr snapshots **each shard once**, on a peer that holds an `Active` replica of
//! it (`POST /collections/{c}/shards/{id}/snapshots`), rather than one collection snapshot per
//! peer: replicated shards are not stored twice, and a restore does not depend on the new
//! cluster placing shards on the same peers. Restore re-creates the collection from the
//! recorded configuration with the same shard count, re-creates the payload indexes, uploads
//! each shard snapshot to a peer that hosts that shard (`priority=snapshot`, so its other
//! replicas are marked dead and re-synchronised from it), waits for every replica to be
//! active again and checks the exact point count. The same path restores a sharded backup into
//! a single node (all shards local there), which is what drills do.
//!
//! Limits, said out loud: shards are snapshotted one after another, so a collection written to
//! during the backup is consistent per shard, not across shards (Qdrant has no cluster-wide
//! snapshot; qdrant/qdrant#2763). Collections with custom sharding (shard keys) are refused in
//! a distributed deployment: their shard ids depend on the order keys were created.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// One replica of a shard as a peer reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Peer id.
    pub peer: u64,
    /// `Active`, `Dead`, `Partial`, `Initializing`, `Listener`, `Resharding`, …
    pub state: String,
    /// Points in the replica, when the peer reported it about itself.
    pub points: Option<u64>,
}

impl Replica {
    /// Serving reads with all its data (Qdrant's own `is_active`).
    fn active(&self) -> bool {
        matches!(self.state.as_str(), "Active" | "ReshardingScaleDown")
    }
}

/// Shard id → replicas, merged over the answers of several peers.
pub type Layout = BTreeMap<u32, Vec<Replica>>;

/// Parses one peer's `GET /collections/{c}/cluster` result: its own peer id, and the layout
/// as it sees it (its local shards with point counts, the others without).
///
/// # Errors
/// The answer has no `peer_id`.
pub fn parse_layout(v: &Value) -> Result<(u64, Layout), String> {
    let me = v["peer_id"]
        .as_u64()
        .ok_or_else(|| "no peer_id in the collection cluster answer".to_owned())?;
    let mut layout = Layout::new();
    for s in v["local_shards"].as_array().into_iter().flatten() {
        if let Some(id) = s["shard_id"].as_u64() {
            layout.entry(id as u32).or_default().push(Replica {
                peer: me,
                state: s["state"].as_str().unwrap_or("?").to_owned(),
                points: s["points_count"].as_u64(),
            });
        }
    }
    for s in v["remote_shards"].as_array().into_iter().flatten() {
        if let (Some(id), Some(peer)) = (s["shard_id"].as_u64(), s["peer_id"].as_u64()) {
            layout.entry(id as u32).or_default().push(Replica {
                peer,
                state: s["state"].as_str().unwrap_or("?").to_owned(),
                points: None,
            });
        }
    }
    Ok((me, layout))
}

/// Merges peers' views: a replica reported by its own peer (with a point count) wins.
pub fn merge(views: impl IntoIterator<Item = Layout>) -> Layout {
    let mut out = Layout::new();
    for view in views {
        for (shard, replicas) in view {
            let have = out.entry(shard).or_default();
            for r in replicas {
                match have.iter_mut().find(|h| h.peer == r.peer) {
                    Some(h) if h.points.is_none() && r.points.is_some() => *h = r,
                    Some(_) => {}
                    None => have.push(r),
                }
            }
        }
    }
    for replicas in out.values_mut() {
        replicas.sort_by_key(|r| r.peer);
    }
    out
}

/// For each shard, the peer to work on it with: a replica on a peer dr can reach (an active
/// one when `active` is set: snapshots are taken from active replicas only), spreading shards
/// over peers.
///
/// # Errors
/// Names every shard with no such replica.
pub fn choose(
    layout: &Layout,
    reachable: &BTreeSet<u64>,
    active: bool,
) -> Result<BTreeMap<u32, u64>, String> {
    let mut load: BTreeMap<u64, usize> = BTreeMap::new();
    let mut plan = BTreeMap::new();
    let mut missing = Vec::new();
    for (&shard, replicas) in layout {
        let best = replicas
            .iter()
            .filter(|r| (!active || r.active()) && reachable.contains(&r.peer))
            .min_by_key(|r| (load.get(&r.peer).copied().unwrap_or(0), r.peer));
        match best {
            Some(r) => {
                *load.entry(r.peer).or_default() += 1;
                plan.insert(shard, r.peer);
            }
            None => missing.push(format!("shard {shard} ({})", describe(replicas, reachable))),
        }
    }
    if missing.is_empty() {
        Ok(plan)
    } else {
        Err(format!(
            "no {}replica on a peer with a known REST URL for {}",
            if active { "active " } else { "" },
            missing.join("; ")
        ))
    }
}

/// `peer 7 Active (no REST URL), peer 9 Dead`.
fn describe(replicas: &[Replica], reachable: &BTreeSet<u64>) -> String {
    if replicas.is_empty() {
        return "no replicas".to_owned();
    }
    replicas
        .iter()
        .map(|r| {
            let url = if reachable.contains(&r.peer) {
                ""
            } else {
                " (no REST URL)"
            };
            format!("peer {} {}{url}", r.peer, r.state)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Replicas that are not active yet, for a message: `shard 1 on peer 9: Dead`.
pub fn not_active(layout: &Layout) -> Vec<String> {
    layout
        .iter()
        .flat_map(|(shard, rs)| {
            rs.iter()
                .filter(|r| !r.active())
                .map(move |r| format!("shard {shard} on peer {}: {}", r.peer, r.state))
        })
        .collect()
}

/// Whether a recorded collection uses custom sharding (shard keys).
pub fn custom_sharding(info: &Value) -> bool {
    info["config"]["params"]["sharding_method"] == "custom"
}

/// The `PUT /collections/{c}` body that re-creates a collection from its recorded
/// `GET /collections/{c}` result: same vectors, shard count and index settings; the
/// replication factor capped at the number of peers there are.
pub fn create_body(info: &Value, peers: usize) -> Value {
    let config = &info["config"];
    let params = &config["params"];
    let mut body = Map::new();
    // `payload` (storage type) replaces `on_disk_payload` from Qdrant 1.19; both are copied
    // as recorded.
    for k in [
        "vectors",
        "sparse_vectors",
        "shard_number",
        "on_disk_payload",
        "payload",
    ] {
        if !params[k].is_null() {
            body.insert(k.to_owned(), params[k].clone());
        }
    }
    let peers = peers.max(1) as u64;
    let replication = params["replication_factor"]
        .as_u64()
        .unwrap_or(1)
        .min(peers);
    body.insert("replication_factor".to_owned(), json!(replication));
    if let Some(w) = params["write_consistency_factor"].as_u64() {
        body.insert(
            "write_consistency_factor".to_owned(),
            json!(w.min(replication)),
        );
    }
    // The info answer says `optimizer_config`; the create request takes `optimizers_config`.
    for (from, to) in [
        ("hnsw_config", "hnsw_config"),
        ("optimizer_config", "optimizers_config"),
        ("wal_config", "wal_config"),
        ("quantization_config", "quantization_config"),
        ("strict_mode_config", "strict_mode_config"),
        ("metadata", "metadata"),
    ] {
        if let Some(m) = config[from].as_object() {
            let set: Map<String, Value> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            body.insert(to.to_owned(), Value::Object(set));
        }
    }
    Value::Object(body)
}

/// `PUT /collections/{c}/index` bodies for the recorded payload indexes.
pub fn index_bodies(info: &Value) -> Vec<Value> {
    info["payload_schema"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(field, s)| {
            let schema = match &s["params"] {
                Value::Object(p) if !p.is_empty() => Value::Object(p.clone()),
                _ => s["data_type"].clone(),
            };
            (!schema.is_null()).then(|| json!({ "field_name": field, "field_schema": schema }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /collections/docs/cluster` on peer 11 of a three-peer cluster: 3 shards,
    /// replication factor 2 (shape of Qdrant 1.19's answer).
    fn view_11() -> Value {
        json!({
            "peer_id": 11,
            "shard_count": 3,
            "local_shards": [
                {"shard_id": 0, "points_count": 16_650, "state": "Active"},
                {"shard_id": 2, "points_count": 16_700, "state": "Active"}
            ],
            "remote_shards": [
                {"shard_id": 0, "peer_id": 22, "state": "Active"},
                {"shard_id": 1, "peer_id": 22, "state": "Active"},
                {"shard_id": 1, "peer_id": 33, "state": "Dead"},
                {"shard_id": 2, "peer_id": 33, "state": "Active"}
            ],
            "shard_transfers": []
        })
    }

    fn view_22() -> Value {
        json!({
            "peer_id": 22,
            "shard_count": 3,
            "local_shards": [
                {"shard_id": 0, "points_count": 16_650, "state": "Active"},
                {"shard_id": 1, "points_count": 16_650, "state": "Active"}
            ],
            "remote_shards": [
                {"shard_id": 0, "peer_id": 11, "state": "Active"},
                {"shard_id": 1, "peer_id": 33, "state": "Dead"},
                {"shard_id": 2, "peer_id": 11, "state": "Active"},
                {"shard_id": 2, "peer_id": 33, "state": "Active"}
            ],
            "shard_transfers": []
        })
    }

    #[test]
    fn views_merge_into_one_layout_with_counts_from_the_owning_peer() {
        let (me, a) = parse_layout(&view_11()).unwrap();
        assert_eq!(me, 11);
        let (_, b) = parse_layout(&view_22()).unwrap();
        let l = merge([a, b]);
        assert_eq!(l.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
        let s1 = &l[&1];
        assert_eq!(s1.len(), 2);
        assert_eq!(
            s1[0],
            Replica {
                peer: 22,
                state: "Active".into(),
                points: Some(16_650)
            }
        );
        assert_eq!(s1[1].state, "Dead");
        assert_eq!(not_active(&l), vec!["shard 1 on peer 33: Dead"]);
        assert!(parse_layout(&json!({"result": {}})).is_err());
    }

    #[test]
    fn each_shard_goes_to_an_active_reachable_replica_spread_over_peers() {
        let (_, a) = parse_layout(&view_11()).unwrap();
        let (_, b) = parse_layout(&view_22()).unwrap();
        let l = merge([a, b]);
        let all: BTreeSet<u64> = [11, 22, 33].into();
        let plan = choose(&l, &all, true).unwrap();
        // Shard 1's replica on 33 is dead; 0 and 2 spread so that no peer takes all.
        assert_eq!(plan[&1], 22);
        let per_peer: BTreeSet<u64> = plan.values().copied().collect();
        assert!(per_peer.len() >= 2, "{plan:?}");

        // Only peer 33 reachable: shards 0 and 1 have no usable replica, named with why.
        let err = choose(&l, &[33].into(), true).unwrap_err();
        assert!(
            err.contains("shard 0 (peer 11 Active (no REST URL), peer 22 Active (no REST URL))"),
            "{err}"
        );
        assert!(err.contains("shard 1 ("), "{err}");
        assert!(!err.contains("shard 2"), "{err}");
        // A replica being scaled down still serves everything.
        let mut scaling = l.clone();
        scaling.get_mut(&0).unwrap()[0].state = "ReshardingScaleDown".into();
        assert_eq!(
            choose(&scaling, &[11].into(), true)
                .unwrap_err()
                .matches("shard")
                .count(),
            1
        );
        // Restore uploads to any replica: the dead one on 33 will do for shard 1.
        assert_eq!(
            choose(&l, &[33].into(), false)
                .unwrap_err()
                .matches("shard")
                .count(),
            1
        );
    }

    /// `GET /collections/docs` result (Qdrant 1.19), trimmed to the parts that matter.
    fn info() -> Value {
        json!({
            "status": "green",
            "points_count": 50_000,
            "config": {
                "params": {
                    "vectors": {"text": {"size": 64, "distance": "Cosine"}},
                    "shard_number": 3,
                    "replication_factor": 2,
                    "write_consistency_factor": 2,
                    "on_disk_payload": true,
                    "payload": {"memory": "on_disk"}
                },
                "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10_000, "max_indexing_threads": 0, "on_disk": false},
                "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000, "default_segment_number": 0, "max_segment_size": null, "memmap_threshold": null, "indexing_threshold": 10_000, "flush_interval_sec": 5, "max_optimization_threads": null},
                "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
                "quantization_config": null,
                "metadata": {"team": "search"}
            },
            "payload_schema": {
                "group": {"data_type": "keyword", "points": 50_000},
                "text": {"data_type": "text", "params": {"type": "text", "tokenizer": "word", "lowercase": true}, "points": 50_000}
            }
        })
    }

    #[test]
    fn a_collection_is_recreated_from_its_recorded_config() {
        let body = create_body(&info(), 1);
        assert_eq!(body["shard_number"], 3);
        assert_eq!(body["vectors"]["text"]["size"], 64);
        // One peer: one replica, and writes cannot wait for two.
        assert_eq!(body["replication_factor"], 1);
        assert_eq!(body["write_consistency_factor"], 1);
        assert_eq!(body["optimizers_config"]["indexing_threshold"], 10_000);
        assert_eq!(body["payload"], json!({"memory": "on_disk"}));
        assert_eq!(body["metadata"], json!({"team": "search"}));
        assert!(body["optimizers_config"].get("max_segment_size").is_none());
        assert!(body.get("optimizer_config").is_none());
        assert!(body.get("quantization_config").is_none());
        assert_eq!(create_body(&info(), 3)["replication_factor"], 2);
        assert!(!custom_sharding(&info()));

        let idx = index_bodies(&info());
        assert_eq!(idx.len(), 2);
        assert!(idx.contains(&json!({"field_name": "group", "field_schema": "keyword"})));
        assert!(idx.contains(&json!({"field_name": "text", "field_schema": {"type": "text", "tokenizer": "word", "lowercase": true}})));
    }
}
