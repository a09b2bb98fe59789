//! What a PostgreSQL base backup records about itself, typed. The backup writes it (into the
//! manifest's source facts and, all of it being non-secret, the refs); PITR planning,
//! retention, restore and drills read it through [`PgFacts::of`], never by string key. The
//! stored JSON keeps the names and formats it always had.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lsn::{Lsn, Segment};

/// A base backup's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgFacts {
    /// `pg_control_system().system_identifier`: which cluster this is.
    pub system_identifier: String,
    /// `server_version`, e.g. `15.8 (Debian 15.8-0+deb12u1)`.
    pub server_version: String,
    /// `server_version_num`, e.g. 150008.
    pub server_version_num: i32,
    /// The cluster's WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// Where replay starts (`START WAL LOCATION`).
    pub start_lsn: String,
    /// Where the backup is consistent.
    pub stop_lsn: String,
    /// The segment holding `start_lsn`.
    pub start_segment: String,
    /// The segment holding `stop_lsn`.
    pub stop_segment: String,
    /// When the backup started (RFC 3339).
    pub start_time: String,
    /// When it ended (RFC 3339): the earliest point it can recover to.
    pub stop_time: String,
    /// `local` or `stream`.
    pub mode: String,
    /// The server's data directory at backup time.
    pub data_directory: String,
    /// Tablespaces by OID: the path they had on the database host.
    #[serde(default)]
    pub tablespaces: BTreeMap<String, String>,
    /// Databases by OID (`pg_database`) as the backup ended: what `restore --db-include`
    /// chooses from. Kept in the encrypted manifest only, not in the public refs (names can
    /// say whose data a cluster holds). Empty for backups from before it was recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub databases: BTreeMap<String, String>,
}

pub use crate::source::FactsError;

const ENGINE: &str = "PostgreSQL base backup";

impl PgFacts {
    /// The facts of `snapshot` as stored (a refs' `facts` map or a manifest's source facts).
    ///
    /// # Errors
    /// A fact is missing or malformed (not a PostgreSQL snapshot, or one written by another
    /// program): said with the snapshot's name, never guessed.
    pub fn of<'a>(
        snapshot: &str,
        facts: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
    ) -> Result<Self, FactsError> {
        let map: serde_json::Map<String, serde_json::Value> = facts
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let bad = |reason: String| FactsError {
            snapshot: snapshot.to_owned(),
            engine: ENGINE,
            reason,
        };
        let f: Self =
            crate::source::decode_facts(snapshot, ENGINE, serde_json::Value::Object(map))?;
        for (what, lsn) in [("start_lsn", &f.start_lsn), ("stop_lsn", &f.stop_lsn)] {
            Lsn::parse(lsn).map_err(|e| bad(format!("{what}: {e}")))?;
        }
        for (what, seg) in [
            ("start_segment", &f.start_segment),
            ("stop_segment", &f.stop_segment),
        ] {
            Segment::parse(seg, f.wal_segment_size)
                .ok_or_else(|| bad(format!("{what} `{seg}` is not a WAL segment name")))?;
        }
        DateTime::parse_from_rfc3339(&f.stop_time)
            .map_err(|e| bad(format!("stop_time `{}`: {e}", f.stop_time)))?;
        Ok(f)
    }

    /// The major version (15 for 150008).
    pub fn major(&self) -> i32 {
        self.server_version_num / 10_000
    }

    /// Where replay starts.
    pub fn start_lsn(&self) -> Lsn {
        Lsn::parse(&self.start_lsn).expect("checked by PgFacts::of")
    }

    /// Where the backup is consistent.
    pub fn stop_lsn(&self) -> Lsn {
        Lsn::parse(&self.stop_lsn).expect("checked by PgFacts::of")
    }

    /// The first segment recovery needs.
    pub fn start_segment(&self) -> Segment {
        Segment::parse(&self.start_segment, self.wal_segment_size).expect("checked by PgFacts::of")
    }

    /// The segment at which the backup is consistent.
    pub fn stop_segment(&self) -> Segment {
        Segment::parse(&self.stop_segment, self.wal_segment_size).expect("checked by PgFacts::of")
    }

    /// When the backup ended.
    pub fn stop_time(&self) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&self.stop_time)
            .expect("checked by PgFacts::of")
            .with_timezone(&Utc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> serde_json::Value {
        serde_json::json!({
            "system_identifier": "7412345678901234567",
            "server_version": "15.8",
            "server_version_num": 150008,
            "wal_segment_size": 16777216,
            "timeline": 2,
            "start_lsn": "0/3000028",
            "stop_lsn": "0/3000100",
            "start_segment": "000000020000000000000003",
            "stop_segment": "000000020000000000000003",
            "start_time": "2026-12-02T14:27:23.121+00:00",
            "stop_time": "2026-12-02T14:27:24.500+00:00",
            "mode": "local",
            "data_directory": "/var/lib/postgresql/15/main",
            "tablespaces": { "16384": "/srv/ts1" },
        })
    }

    fn of(v: &serde_json::Value) -> Result<PgFacts, FactsError> {
        PgFacts::of("S1", v.as_object().unwrap())
    }

    #[test]
    fn stored_facts_read_typed_and_write_back_the_same_json() {
        let f = of(&stored()).unwrap();
        assert_eq!(f.major(), 15);
        assert_eq!(f.timeline, 2);
        assert_eq!(f.stop_lsn(), Lsn::parse("0/3000100").unwrap());
        assert_eq!(f.start_segment().timeline, 2);
        assert_eq!(f.stop_time().timestamp_millis() % 1000, 500);
        assert_eq!(serde_json::to_value(&f).unwrap(), stored());
    }

    #[test]
    fn a_missing_or_malformed_fact_is_an_error_naming_the_snapshot() {
        let mut v = stored();
        v.as_object_mut().unwrap().remove("server_version_num");
        let e = of(&v).unwrap_err();
        assert_eq!(e.snapshot, "S1");
        assert!(e.reason.contains("server_version_num"), "{e}");
        for (k, bad) in [
            ("stop_lsn", serde_json::json!("zz")),
            ("start_segment", serde_json::json!("../x")),
            ("stop_time", serde_json::json!("yesterday")),
            ("timeline", serde_json::json!(-1)),
        ] {
            let mut v = stored();
            v[k] = bad;
            let e = of(&v).unwrap_err().to_string();
            assert!(e.contains("S1") && e.contains(k), "{k}: {e}");
        }
    }

    #[test]
    fn tablespaces_default_to_none() {
        let mut v = stored();
        v.as_object_mut().unwrap().remove("tablespaces");
        assert!(of(&v).unwrap().tablespaces.is_empty());
    }
}
