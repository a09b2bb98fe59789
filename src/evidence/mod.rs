//! Evidence bundles: a period's drill evidence for an auditor, checkable without dr.
//!
//! `dr evidence export --from --to [--policy] --out DIR` writes DIR and `DIR.tar.gz`:
//!
//! ```text
//! index.html                      the period at a glance, per policy
//! policies/<id>/index.html        pass/fail history, RTO and RPO against their objectives over
//!                                 time (chart), missed drills, every report
//! reports/<drill>/<id>.json       a trusted report: exactly the signed bytes
//! reports/<drill>/<id>.sig        its raw 64-byte Ed25519 signature
//! reports/<drill>/<id>.signed     the stored object (header + JSON) for `dr drill verify-report`
//! reports/<drill>/<id>.html       its page
//! untrusted/<drill>/<id>.signed   reports that are not evidence (bad signature or unknown
//!                                 signer), kept so that nothing in the period is hidden
//! audit/events.jsonl, audit/index.html   the audit events of the period
//! keys/<key>.pem                  the signers' public keys (SubjectPublicKeyInfo PEM)
//! bundle.json                     all of the above as data (docs/json/evidence-bundle.schema.json)
//! VERIFY.md                       the openssl commands that check every signature
//! SHA256SUMS                      of every other file; SHA256SUMS.sig when this host signs
//! ```
//!
//! Only reports validly signed by a trusted key (`keys.trusted_signers` or this host's
//! signing key) are evidence; the gaps ([`missed`]) are computed from the drills' schedules as
//! configured now.

pub mod missed;
mod pages;

pub(crate) use pages::audit_table;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::drill::report::{self, Signed};

/// Schema id of `bundle.json`.
pub const SCHEMA: &str = "dr.evidence/1";

/// What to export.
#[derive(Debug, Clone)]
pub struct Request {
    /// Period start (inclusive).
    pub from: DateTime<Utc>,
    /// Period end (exclusive).
    pub to: DateTime<Utc>,
    /// Only this policy's drills and audit events.
    pub policy: Option<String>,
}

/// What was exported.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The bundle directory.
    pub dir: PathBuf,
    /// `dir` as `.tar.gz`.
    pub archive: PathBuf,
    /// Trusted reports in the period.
    pub reports: usize,
    /// Of them, passed.
    pub passed: usize,
    /// Reports that are not evidence.
    pub untrusted: usize,
    /// Scheduled drill runs that did not happen.
    pub missed_runs: usize,
    /// Audit events.
    pub audit_events: usize,
    /// Files in the bundle.
    pub files: usize,
    /// `SHA256SUMS` is signed by this host's key.
    pub sums_signed: bool,
}

/// Exporting failed.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The request cannot be met (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Reading the reports.
    #[error(transparent)]
    Drill(#[from] Box<crate::drill::DrillError>),
    /// Opening the audit repository.
    #[error(transparent)]
    Ops(#[from] Box<crate::ops::OpsError>),
    /// Reading the audit events.
    #[error("reading the audit log")]
    Audit(#[from] crate::storage::StorageError),
    /// A key.
    #[error(transparent)]
    Key(#[from] report::ReportError),
    /// Writing the bundle.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for EvidenceError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::Usage(_) => crate::error::ErrorKind::Usage,
            _ => crate::error::ErrorKind::Failure,
        }
    }
}

/// A trusted report's files in the bundle.
#[derive(Debug, Clone, Serialize)]
struct Entry {
    id: String,
    drill: String,
    policy: String,
    verdict: report::Verdict,
    started: DateTime<Utc>,
    region: String,
    region_role: Option<String>,
    rto_seconds: Option<f64>,
    rto_objective_seconds: f64,
    rto_met: bool,
    rpo_seconds: Option<f64>,
    rpo_objective_seconds: f64,
    rpo_met: bool,
    reasons: Vec<String>,
    json: String,
    signature: String,
    signed: String,
    html: String,
    signer: String,
    signer_key: String,
}

/// A report that is not evidence.
#[derive(Debug, Clone, Serialize)]
struct Excluded {
    id: String,
    drill: String,
    policy: String,
    claimed_verdict: report::Outcome,
    signer: String,
    signature_valid: bool,
    signed: String,
}

/// A drill in scope.
#[derive(Debug, Clone, Serialize)]
struct DrillInfo {
    name: String,
    policy: String,
    schedule: Option<String>,
    rto_objective_seconds: f64,
    rpo_objective_seconds: f64,
}

/// `bundle.json`.
#[derive(Debug, Clone, Serialize)]
struct Manifest {
    schema: &'static str,
    generated: DateTime<Utc>,
    dr_version: &'static str,
    host: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    policy: Option<String>,
    policies: Vec<String>,
    drills: Vec<DrillInfo>,
    reports: Vec<Entry>,
    untrusted: Vec<Excluded>,
    missed: Vec<missed::Gap>,
    audit_events: usize,
    signers: Vec<String>,
    /// The key `SHA256SUMS.sig` is made with (this host's signing key).
    sums_signer: Option<String>,
}

/// Everything a bundle is written from.
struct Gathered {
    manifest: Manifest,
    /// Trusted reports of the period with their pages, in `manifest.reports` order.
    trusted: Vec<(Signed, String)>,
    /// Untrusted ones with their pages.
    untrusted: Vec<(Signed, String)>,
    audit: Vec<crate::audit::Event>,
    /// The key SHA256SUMS is signed with.
    host_key: Option<ed25519_dalek::SigningKey>,
}

/// `2026-12-01` as the end of a period means the whole of that day: the next midnight.
/// Anything with a time is taken as given.
///
/// # Errors
/// Not a date or time ([`crate::audit::parse_bound`]).
pub fn parse_end(s: &str) -> Result<DateTime<Utc>, String> {
    let t = crate::audit::parse_bound(s)?;
    Ok(
        if chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").is_ok() {
            t + chrono::Duration::days(1)
        } else {
            t
        },
    )
}

/// Writes the bundle for `req` to `out` and `out.tar.gz`.
///
/// # Errors
/// A bad request ([`EvidenceError::Usage`]), unreadable repositories, an unwritable `out`.
pub async fn export(config: &Config, req: &Request, out: &Path) -> Result<Summary, EvidenceError> {
    if req.from >= req.to {
        return Err(EvidenceError::Usage(format!(
            "--from {} is not before --to {}",
            req.from.to_rfc3339(),
            req.to.to_rfc3339()
        )));
    }
    if let Some(p) = &req.policy {
        config
            .policy(p)
            .map_err(|e| EvidenceError::Usage(e.to_string()))?;
    }
    if out.exists() {
        return Err(EvidenceError::Usage(format!(
            "{} exists: give a new directory (an export never overwrites an earlier one)",
            out.display()
        )));
    }
    let g = gather(config, req).await?;
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || write(&g, &out))
        .await
        .map_err(|e| EvidenceError::Usage(format!("export task: {e}")))?
}

async fn gather(config: &Config, req: &Request) -> Result<Gathered, EvidenceError> {
    let in_scope = |policy: &str| req.policy.as_deref().is_none_or(|p| p == policy);
    let all = crate::drill::store::all_reports(config)
        .await
        .map_err(Box::new)?;
    let now = Utc::now();
    let mut drills: Vec<DrillInfo> = Vec::new();
    let mut gaps = Vec::new();
    for d in config
        .drills
        .values()
        .filter(|d| in_scope(d.policy.as_str()))
    {
        drills.push(DrillInfo {
            name: d.name.clone(),
            policy: d.policy.as_str().to_owned(),
            schedule: d.schedule.as_ref().map(|s| s.expr().to_owned()),
            rto_objective_seconds: d.rto.as_secs_f64(),
            rpo_objective_seconds: d.rpo.as_secs_f64(),
        });
        if let Some(s) = &d.schedule {
            let ran: Vec<DateTime<Utc>> = all
                .iter()
                .filter(|r| r.report.drill == d.name)
                .map(|r| r.report.started)
                .collect();
            gaps.extend(missed::gaps(&d.name, s, &ran, req.from, req.to, now));
        }
    }
    let mut trusted = Vec::new();
    let mut untrusted = Vec::new();
    let mut entries = Vec::new();
    let mut excluded = Vec::new();
    let mut signers: Vec<String> = Vec::new();
    for s in all.iter().filter(|s| {
        in_scope(&s.report.policy) && s.report.started >= req.from && s.report.started < req.to
    }) {
        let r = &s.report;
        let page = crate::drill::html::render(s, &crate::drill::store::history(&all, s));
        // Names come from the reports themselves, which whoever can write the bucket may
        // forge: only safe file-name characters reach a path.
        let base = format!("{}/{}", file_name(&r.drill), file_name(&r.id));
        if s.trusted {
            let signer = s.signer.to_ascii_lowercase();
            if !signers.contains(&signer) {
                signers.push(signer.clone());
            }
            entries.push(Entry {
                id: r.id.clone(),
                drill: r.drill.clone(),
                policy: r.policy.clone(),
                verdict: s.verdict(),
                started: r.started,
                region: r.region.clone(),
                region_role: r.region_role.clone(),
                rto_seconds: r.rto.seconds,
                rto_objective_seconds: r.rto.objective_seconds,
                rto_met: r.rto.met,
                rpo_seconds: r.rpo.seconds,
                rpo_objective_seconds: r.rpo.objective_seconds,
                rpo_met: r.rpo.met,
                reasons: r.reasons.clone(),
                json: format!("reports/{base}.json"),
                signature: format!("reports/{base}.sig"),
                signed: format!("reports/{base}.signed"),
                html: format!("reports/{base}.html"),
                signer_key: key_file(&signer),
                signer,
            });
            trusted.push((s.clone(), page));
        } else {
            excluded.push(Excluded {
                id: r.id.clone(),
                drill: r.drill.clone(),
                policy: r.policy.clone(),
                claimed_verdict: r.verdict,
                signer: s.signer.clone(),
                signature_valid: s.signature_valid,
                signed: format!("untrusted/{base}.signed"),
            });
            untrusted.push((s.clone(), page));
        }
    }
    let mut audit = match crate::audit::audit_target(config) {
        Some(t) => {
            let storage = crate::ops::storage(config, t).await.map_err(Box::new)?;
            crate::audit::list(&storage, Some(req.from), Some(req.to)).await?
        }
        None => Vec::new(),
    };
    if let Some(p) = &req.policy {
        let names: Vec<&str> = drills.iter().map(|d| d.name.as_str()).collect();
        audit.retain(|e| concerns(&e.target, p, &names));
    }
    let host_key = match &config.keys.signing_key_file {
        Some(f) => Some(report::load_signing_key(f)?),
        None => None,
    };
    let sums_signer = host_key
        .as_ref()
        .map(|k| hex::encode(k.verifying_key().to_bytes()));
    if let Some(k) = &sums_signer
        && !signers.contains(k)
    {
        signers.push(k.clone());
    }
    let mut policies: Vec<String> = config
        .policies
        .keys()
        .filter(|p| in_scope(p.as_str()))
        .map(|p| p.as_str().to_owned())
        .collect();
    policies.sort();
    Ok(Gathered {
        manifest: Manifest {
            schema: SCHEMA,
            generated: now,
            dr_version: env!("CARGO_PKG_VERSION"),
            host: crate::host::name().unwrap_or_default(),
            from: req.from,
            to: req.to,
            policy: req.policy.clone(),
            policies,
            drills,
            reports: entries,
            untrusted: excluded,
            missed: gaps,
            audit_events: audit.len(),
            signers,
            sums_signer,
        },
        trusted,
        untrusted,
        audit,
        host_key,
    })
}

/// Whether an audit event's target is about `policy` or one of its drills (`app`,
/// `app@SNAPSHOT -> dir`, `app@local: …`, a drill name).
fn concerns(target: &str, policy: &str, drills: &[&str]) -> bool {
    let head = target.split(['@', ' ', ':']).next().unwrap_or(target);
    head == policy || drills.contains(&head)
}

/// `s` as one safe path component: letters, digits, `-`, `_` and `.` kept, anything else
/// (a `/`, a NUL, …) replaced by `_`; `.` and `..` (and nothing) become `_`.
fn file_name(s: &str) -> String {
    let name: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name == "." || name == ".." {
        "_".to_owned()
    } else {
        name
    }
}

/// Where a signer's PEM goes.
fn key_file(signer: &str) -> String {
    let name = file_name(signer);
    format!("keys/{}.pem", &name[..16.min(name.len())])
}

/// Creates a file of the bundle, its directory first.
fn put(root: &Path, rel: &str, bytes: &[u8]) -> Result<(), EvidenceError> {
    let path = root.join(rel);
    let io = |source| EvidenceError::Write {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(io)
}

fn write(g: &Gathered, out: &Path) -> Result<Summary, EvidenceError> {
    let io = |source| EvidenceError::Write {
        path: out.to_path_buf(),
        source,
    };
    std::fs::create_dir(out).map_err(io)?;
    let m = &g.manifest;
    let mut files: Vec<String> = Vec::new();
    let mut add = |rel: &str, bytes: &[u8]| -> Result<(), EvidenceError> {
        put(out, rel, bytes)?;
        files.push(rel.to_owned());
        Ok(())
    };
    for ((s, page), e) in g.trusted.iter().zip(&m.reports) {
        let (json, sig) = s
            .signed_parts()
            .ok_or_else(|| EvidenceError::Usage(format!("report {}: no signature header", e.id)))?;
        add(&e.json, json)?;
        add(&e.signature, &sig)?;
        add(&e.signed, &s.raw)?;
        add(&e.html, page.as_bytes())?;
    }
    for ((s, page), x) in g.untrusted.iter().zip(&m.untrusted) {
        add(&x.signed, &s.raw)?;
        add(&x.signed.replace(".signed", ".html"), page.as_bytes())?;
    }
    for signer in &m.signers {
        add(
            &key_file(signer),
            report::public_key_pem(signer)?.as_bytes(),
        )?;
    }
    let mut jsonl = String::new();
    for e in &g.audit {
        jsonl.push_str(&serde_json::to_string(e).expect("event serializes"));
        jsonl.push('\n');
    }
    add("audit/events.jsonl", jsonl.as_bytes())?;
    add("audit/index.html", pages::audit(m, &g.audit).as_bytes())?;
    for p in &m.policies {
        add(
            &format!("policies/{p}/index.html"),
            pages::policy(m, p).as_bytes(),
        )?;
    }
    add("index.html", pages::index(m).as_bytes())?;
    add(
        "bundle.json",
        &serde_json::to_vec_pretty(m).expect("manifest serializes"),
    )?;
    add("VERIFY.md", verify_md(m).as_bytes())?;
    files.sort();
    let mut sums = String::new();
    for f in &files {
        let bytes = std::fs::read(out.join(f)).map_err(io)?;
        sums.push_str(&format!("{}  {f}\n", hex::encode(Sha256::digest(&bytes))));
    }
    put(out, "SHA256SUMS", sums.as_bytes())?;
    if let Some(k) = &g.host_key {
        use ed25519_dalek::Signer;
        put(out, "SHA256SUMS.sig", &k.sign(sums.as_bytes()).to_bytes())?;
    }
    let archive = tar_gz(out)?;
    Ok(Summary {
        dir: out.to_path_buf(),
        archive,
        reports: m.reports.len(),
        passed: m
            .reports
            .iter()
            .filter(|r| r.verdict == report::Verdict::Pass)
            .count(),
        untrusted: m.untrusted.len(),
        missed_runs: m.missed.iter().map(|g| g.runs).sum(),
        audit_events: m.audit_events,
        files: files.len() + 1 + usize::from(g.host_key.is_some()),
        sums_signed: g.host_key.is_some(),
    })
}

/// `out` packed as `out.tar.gz`, its entries under `out`'s name.
fn tar_gz(out: &Path) -> Result<PathBuf, EvidenceError> {
    let name = out
        .file_name()
        .map_or_else(|| "evidence".into(), |n| n.to_owned());
    let mut archive = out.as_os_str().to_owned();
    archive.push(".tar.gz");
    let archive = PathBuf::from(archive);
    let io = |source| EvidenceError::Write {
        path: archive.clone(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&archive)
        .map_err(io)?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(&name, out).map_err(io)?;
    let f = tar.into_inner().and_then(|gz| gz.finish()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(archive)
}

/// `VERIFY.md`: how to check the bundle with OpenSSL and coreutils alone. Every command is in
/// a `sh` block, run as they are by the tests.
fn verify_md(m: &Manifest) -> String {
    let mut s = format!(
        "# Verifying this evidence bundle\n\n\
         Drill evidence from {} to {} ({}), exported by dr {} on {} from host `{}`.\n\n\
         Each drill report is a JSON document signed with Ed25519. The commands below check every \
         signature with **OpenSSL 3** alone (`openssl pkeyutl -rawin`, Ed25519 over the exact bytes \
         of the `.json` file), and the bundle's file list with `sha256sum`. Run them in this \
         directory. Every `openssl` line prints `Signature Verified Successfully`; a single altered \
         byte makes it print `Signature Verification Failure` and exit 1, which stops the block.\n\n\
         ## 1. The signer keys\n\n\
         `keys/*.pem` are the public keys that signed these reports. A valid signature only \
         matters if the key is yours: compare each key's 32 bytes (the `pub:` lines below) with \
         the keys your organisation trusts (`keys.trusted_signers` in dr.toml, 64 hex digits):\n\n```sh\n",
        m.from.to_rfc3339(),
        m.to.to_rfc3339(),
        m.policy
            .as_deref()
            .map_or("every policy".to_owned(), |p| format!("policy {p}")),
        m.dr_version,
        m.generated.to_rfc3339(),
        m.host,
    );
    for k in &m.signers {
        s.push_str(&format!(
            "openssl pkey -pubin -in {} -noout -text   # {k}\n",
            key_file(k)
        ));
    }
    s.push_str("```\n\n## 2. Every report's signature\n\n");
    if m.reports.is_empty() {
        s.push_str("There is no trusted report in this period.\n\n");
    } else {
        s.push_str(&format!(
            "{} report(s):\n\n```sh\nset -e\n",
            m.reports.len()
        ));
        for e in &m.reports {
            s.push_str(&format!(
                "openssl pkeyutl -verify -pubin -inkey {} -rawin -in {} -sigfile {}\n",
                e.signer_key, e.json, e.signature
            ));
        }
        s.push_str("```\n\n");
    }
    s.push_str(
        "## 3. Nothing added, removed or changed since the export\n\n\
         `SHA256SUMS` lists every other file of the bundle with its SHA-256",
    );
    if let Some(k) = &m.sums_signer {
        s.push_str(&format!(
            "; `SHA256SUMS.sig` is its Ed25519 signature by the exporting host's key \
             (`{}`), so the audit log and the pages are covered too:\n\n```sh\nset -e\n\
             openssl pkeyutl -verify -pubin -inkey {} -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig\n\
             sha256sum --strict -c SHA256SUMS\n```\n\n",
            key_file(k),
            key_file(k),
        ));
    } else {
        s.push_str(
            " (it is not signed: this host has no signing key, so only the reports' own \
             signatures prove anything):\n\n```sh\nsha256sum --strict -c SHA256SUMS\n```\n\n",
        );
    }
    if !m.untrusted.is_empty() {
        s.push_str(&format!(
            "## Not evidence\n\n{} report(s) of the period under `untrusted/` are not validly signed \
             by a trusted key. They are included so that nothing is hidden, and count for nothing.\n",
            m.untrusted.len()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_reports_never_leave_the_bundle() {
        assert_eq!(file_name("pg-main-nightly"), "pg-main-nightly");
        assert_eq!(
            file_name("20261204T190939.909Z-099269dd"),
            "20261204T190939.909Z-099269dd"
        );
        assert_eq!(file_name("../../etc/cron.d/x"), ".._.._etc_cron.d_x");
        assert_eq!(file_name(".."), "_");
        assert_eq!(file_name(""), "_");
        assert!(!file_name("a/b\0c").contains('/'));
    }

    #[test]
    fn a_date_as_the_end_includes_that_day() {
        let end = parse_end("2026-12-01").unwrap();
        assert_eq!(end.to_rfc3339(), "2026-12-02T00:00:00+00:00");
        let end = parse_end("2026-12-01 14:00").unwrap();
        assert_eq!(end.to_rfc3339(), "2026-12-01T14:00:00+00:00");
    }
}
