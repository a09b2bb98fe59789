//! The repository format, specified here (docs/ARCHITECTURE.md §3 points to it). Pure encoding and decoding: no I/O besides key files.
//!
//! # Layout (per storage target, under its prefix)
//!
//! ```text
//! dr-repo.json                      plaintext descriptor: format version, repo id, chunker
//!                                   parameters, MAC proving the chunk-id key (meta.rs)
//! packs/<aa>/<pack-id>              sealed chunks + age-wrapped data key (pack.rs)
//! index/<index-id>                  MAC'd JSON: chunk id -> pack, offset, length (index.rs)
//! snapshots/<policy>/<snapshot>     age-encrypted zstd JSON manifest (manifest.rs)
//! snapshots/<policy>/<snapshot>.refs  MAC'd JSON summary: packs, indexes, sizes, facts
//! wal/<policy>/<timeline>/<name>    one sealed WAL segment or history file (pipeline::wal)
//! wal-stream/<policy>/<segment>.<len>.partial  the first <len> bytes of the segment a WAL
//!                                   stream is receiving, sealed the same way (pipeline::wal)
//! gc/<id>.mark, gc/<id>.swept       two-phase prune state (gc.rs)
//! drills/<drill>/<report-id>.json   signed drill reports (drill::report)
//! groups/<group>/<run-id>.json      MAC'd JSON: one group backup run, each member's point
//!                                   (pipeline::group_run)
//! audit/<day>/<event-id>.json        audit events, one object each (audit)
//! .tmp-spool/                       local targets only: packs and manifests being written,
//!                                   linked into place when complete (never listed)
//! ```
//!
//! # Manifests and chunk references (format version 2)
//!
//! An artifact lists its bytes as chunk references in order: `[id, length]` is a whole chunk,
//! `[id, length, start]` the `length` bytes of the chunk's plaintext from `start` (version 2;
//! version 1 manifests, whole chunks only, stay readable). PostgreSQL relation files are
//! chunked in windows of 128 pages (1 MiB) and compared page by page with the last backup of
//! the same file (`pipeline::pages`): an unchanged window keeps its references, the changed
//! pages of a file go into one *delta* chunk per backup, referenced by slices. There is no
//! per-page id anywhere in the repository: a full backup has one chunk and one reference per
//! MiB, an incremental a reference per unchanged window plus about two per changed page.
//!
//! Writers stream: a pack is spilled to its spool file every 1 MiB as it is sealed, and a
//! manifest is written (JSON → zstd → age) as the artifacts come, the fields known only at the
//! end after them (`manifest::ManifestWriter`); neither is held whole in memory.
//!
//! # Invariants
//!
//! * Every object is written once and never modified: ids are content hashes (packs, indexes)
//!   or unique (snapshots), so S3 Object Lock and WORM buckets work.
//! * **Commit rule**: packs → index → refs → manifest. A snapshot exists only once its
//!   manifest exists; an interrupted backup leaves unreferenced packs (garbage for prune),
//!   never a snapshot with missing data.
//! * Chunk ids are keyed BLAKE3 (key derived from the chunk-id key file) of the plaintext, so
//!   object names reveal nothing about content.
//! * Writers hold the chunk-id key and the age *recipients*. They can dedupe (indexes and refs
//!   are plaintext, authenticated by a MAC under a key derived from the chunk-id key) but not
//!   read data: pack data keys and manifests are encrypted to the recipients, and only a host
//!   with the age *identity* can restore.
//! * Integrity is end to end: each blob is AEAD-sealed (with its chunk id as associated data,
//!   or as a group of small chunks, see pack.rs), each restored chunk is re-hashed against its
//!   id, each content-defined artifact records the BLAKE3 of its plaintext (fixed-block
//!   relation files rely on their blocks' ids: hashing them twice cost a fifth of a backup),
//!   and manifests carry the repo id and their own snapshot id (a manifest from another
//!   repository, or replayed under another name, is refused).
//! * Every object type carries a version (`DRPACK\0\x01`, `DRMAC1`, `"version": 1`); readers
//!   refuse versions they do not know rather than guess.

pub mod gc;
pub mod ids;
pub mod index;
pub mod keys;
pub mod layout;
pub mod mac;
pub mod manifest;
pub mod meta;
pub mod pack;

/// Problems with repository objects and keys.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// An object failed a check.
    #[error("{object} is corrupt: {reason}")]
    Corrupt {
        /// The object.
        object: String,
        /// What failed.
        reason: String,
    },
    /// An object of an unknown format version.
    #[error("{object} has format version {found}; this dr reads version {supported}")]
    Version {
        /// The object.
        object: String,
        /// Its version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// Restore needs the age identity and this host has none.
    #[error("no identity: restoring needs the age identity{}; this host only holds the write key (recipients). Copy the identity file here or run the restore where it is", file.as_ref().map(|f| format!(" ({f} does not exist)")).unwrap_or_else(|| " (keys.identity_file is not set)".to_owned()))]
    NoIdentity {
        /// The configured path, if any.
        file: Option<String>,
    },
    /// The identity does not match the recipients the object was encrypted to.
    #[error(
        "{object} was encrypted to other age recipients: the configured identity cannot open it (wrong keys.identity_file?)"
    )]
    WrongIdentity {
        /// The object.
        object: String,
    },
    /// The chunk-id key does not belong to this repository.
    #[error(
        "the chunk-id key does not match the repository at {location} (wrong keys.chunk_id_key_file?)"
    )]
    WrongChunkKey {
        /// The repository.
        location: String,
    },
    /// A key file problem.
    #[error("key file {file}: {reason}")]
    Key {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Encryption failed.
    #[error("encryption failed: {0}")]
    Encrypt(String),
}
